"""Show that Gemma 3's MLX-vs-transformers divergence is mlx-lm's bfloat16 embedding scale.

Runs transformers (reference) and mlx_lm on the float32 SafeTensors / MLX derived from the Gemma 3
270M GGUF, compares logits on the code prompt, then patches mlx-lm's Gemma3Model to scale the
embeddings by the float32 sqrt(hidden_size) and compares again. The figures back the known
divergence ``gemma3-mlx-bf16-embed-scale`` in fixtures/tolerances.toml.

    python tools/probe_gemma_mlx_scale.py
"""

from __future__ import annotations

import inspect
import textwrap

import mlx_lm.models.gemma3_text as gemma3_text

from pytest_minerva.equivalence import compare_logits
from pytest_minerva.equivalence.runner import prompts
from pytest_minerva.options import Settings
from pytest_minerva.session import build_session

SHIPPED = "mx.array(self.args.hidden_size**0.5, mx.bfloat16)"
FLOAT32 = "mx.array(self.args.hidden_size**0.5, mx.float32)"


def use_float32_scale() -> None:
    model = gemma3_text.Gemma3Model
    source = textwrap.dedent(inspect.getsource(model.__call__))
    if SHIPPED not in source:
        raise SystemExit("this mlx-lm does not round the Gemma 3 embedding scale to bfloat16 any more")
    namespace: dict[str, object] = {}
    exec(source.replace(SHIPPED, FLOAT32), vars(gemma3_text), namespace)
    model.__call__ = namespace["__call__"]  # type: ignore[method-assign,assignment]


def main() -> None:
    session = build_session(Settings(models=["gemma3-270m"], threads=1))
    cases = {(c.backend.name, c.artifact.format): c for c in session.cases() if c.backend is not None}
    reference_case = cases[("transformers", "safetensors")]
    reference = session.backend(reference_case)
    prompt = prompts(reference)[2]
    expected = reference.logits(prompt.ids)
    session.release(reference_case)
    candidate = session.backend(cases[("mlx_lm", "mlx")])
    for label in ("mlx-lm as shipped", "mlx-lm with a float32 embedding scale"):
        if label != "mlx-lm as shipped":
            use_float32_scale()
        report = compare_logits(expected, candidate.logits(prompt.ids))
        print(
            f"{label}: max |dlogit| {report.metric_value('max_dlogit'):.3g}, kl_max {report.metric_value('kl_max'):.3g}"
        )
    session.close()


if __name__ == "__main__":
    main()
