"""What the asv suite runs and how: models, backends, scenarios, loading, and the timed runs.

Only append to this module. asv compares results across commits, so a builder that
changes what it does silently changes the meaning of every result recorded before.

Every figure comes from :mod:`pytest_minerva.timing.harness` running a real model: a
warm-up run, then ``MINERVA_ASV_RUNS`` timed greedy generations per scenario with EOS
ignored, so each run generates the scenario's exact token count. The per-run figures
(the harness's ``RunRecord.figures()``) are kept as asv samples, which is what lets
``asv compare`` / ``asv continuous`` apply their Mann-Whitney test instead of the bare
ratio threshold.

Environment variables, read when asv imports the suite:

``MINERVA_ASV_MODELS``
    comma-separated catalog names (default ``smollm2-135m``, the embedded model).
``MINERVA_ASV_BACKENDS``
    comma-separated backend names (default: every registered backend but the opt-in
    ones, the built-ins and those installed packages register through the
    ``pytest_minerva`` entry point); a backend whose library is not installed is skipped.
``MINERVA_ASV_SCENARIOS``
    comma-separated scenario names (default ``short,medium,code,long``).
``MINERVA_ASV_RUNS``
    timed runs per scenario in one measurement (default 8). asv's test needs 7 samples
    a side to reach its p < 0.002; with ``-a rounds=N`` asv pools N measurements, each
    in a fresh process, which ``tools/asv_gate.sh`` uses to spread samples over time.
``MINERVA_ASV_DEVICE``
    device every backend runs on (default ``cpu``).
``MINERVA_THREADS``
    CPU threads per backend (default 1: steadier timings on a shared two-core runner).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minerva import options

if TYPE_CHECKING:
    from pytest_minerva.backends.base import Backend
    from pytest_minerva.timing.harness import LoadedBackend
    from pytest_minerva.timing.scenarios import Prompt, Scenario

DEFAULT_MODELS = ("smollm2-135m",)
DEFAULT_SCENARIOS = ("short", "medium", "code", "long")
# asv runs this suite from the checkout against every commit it measures, older ones too, so
# what it uses of pytest_minerva must exist there: the option table is newer than the suite.
DEFAULT_RUNS = options.default_for("runs", "asv") if hasattr(options, "default_for") else 8
WARMUP = 1
#: The per-run figures the suite tracks, named as in ``RunRecord.figures()``. The CPU-time ones
#: exist from the revision that records them; on older revisions they are skips.
FIGURES = ("ttft_ms", "tpt_ms", "prefill_tps", "decode_tps", "ttft_cpu_ms", "tpt_cpu_ms")


def env_names(variable: str, default: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list from the environment, or ``default`` when unset or empty."""
    names = tuple(part.strip() for part in os.environ.get(variable, "").split(",") if part.strip())
    return names or tuple(default)


def env_positive_int(variable: str, default: int, high: int) -> int:
    """An integer in 1..``high`` from the environment, or ``default``; a bad value names the variable."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ValueError(f"{variable}={raw!r}: expected an integer from 1 to {high}")
    return int(raw)


def build_session(settings: options.Settings) -> Any:
    """``pytest_minerva.session.build_session``, with the hook relay of installed entry points.
    A commit from before it (asv measures older commits with this suite) built sessions with
    a classmethod, which is what it gets there."""
    from pytest_minerva import session

    build = getattr(session, "build_session", None)
    if build is None:
        return getattr(session.MinervaSession, "create")(settings)  # noqa: B009
    return build(settings)


def registered_backends() -> tuple[str, ...]:
    """Every backend the session's registry holds but the opt-in ones: the built-ins and those
    an installed package registers through the ``pytest_minerva`` entry point."""
    return tuple(spec.name for spec in build_session(options.Settings(models=[])).backends)


MODELS = env_names("MINERVA_ASV_MODELS", DEFAULT_MODELS)
BACKENDS = env_names("MINERVA_ASV_BACKENDS", registered_backends())
SCENARIOS = env_names("MINERVA_ASV_SCENARIOS", DEFAULT_SCENARIOS)
RUNS = env_positive_int("MINERVA_ASV_RUNS", DEFAULT_RUNS, 10_000)
# The same bound as --threads: more threads than that only crash or stall an engine (llama.cpp segfaults at 100000).
THREADS = env_positive_int(
    "MINERVA_THREADS",
    1,
    4 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4 * (os.cpu_count() or 1),
)
DEVICE = os.environ.get("MINERVA_ASV_DEVICE", "").strip() or "cpu"


class Unavailable(NotImplementedError):
    """This model x backend cannot run here (library, device or file absent); asv records a skip."""


def open_backend(model: str, backend: str) -> LoadedBackend:
    """Load ``model``'s primary artifact for ``backend`` on :data:`DEVICE` with :data:`THREADS` threads.

    The artifact is the first format in ``backend``'s list that the model has (GGUF for
    llama.cpp, SafeTensors for transformers, MLX for mlx-lm). Raises :class:`Unavailable`
    when the backend's library, the device or the model file is absent here.
    """
    from pytest_minerva.errors import ArtifactMissing, BackendUnavailable
    from pytest_minerva.matrix import Case
    from pytest_minerva.timing import harness, scenarios

    settings = options.Settings(models=[model], backends=[backend], devices=[DEVICE], threads=THREADS)
    session = build_session(settings)
    spec, model_spec = session.backends[0], session.models[0]
    artifact = next((a for a in (model_spec.primary(fmt) for fmt in spec.formats) if a is not None), None)
    if artifact is None:
        raise Unavailable(f"{model} has no {' or '.join(spec.formats)} artifact in the catalog for {backend}")
    case = Case(model_spec, artifact, spec, DEVICE)
    reason = session.check_runnable(case)
    if reason:
        raise Unavailable(reason)
    n_ctx = harness.needed_context([scenarios.get(name) for name in SCENARIOS], model_spec.context_length)
    try:
        return harness.load_backend(session, case, n_ctx)
    except (ArtifactMissing, BackendUnavailable) as exc:
        raise Unavailable(str(exc)) from None


def run_figures(backend: Backend, scenario: str, runs: int) -> dict[str, list[float]]:
    """Warm up, then time ``runs`` generations of ``scenario``: each figure's value in every run."""
    from pytest_minerva.timing import harness, scenarios

    result = harness.run_scenario(backend, scenarios.get(scenario), runs=runs, warmup=WARMUP)
    if result.error:
        raise RuntimeError(f"{backend.name} {scenario}: {result.error}")
    per_run = [run.figures() for run in result.runs]
    return {figure: [f[figure] for f in per_run] for figure in FIGURES if all(figure in f for f in per_run)}


def measure(model: str, backend: str, scenarios: Sequence[str], runs: int) -> dict[str, dict[str, list[float]]]:
    """Load ``backend`` once and time every scenario; ``{scenario: {figure: samples}}``."""
    loaded = open_backend(model, backend)
    try:
        return {scenario: run_figures(loaded.backend, scenario, runs) for scenario in scenarios}
    finally:
        loaded.backend.close()


def measure_all(marker_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Every model x backend x scenario of the suite, measured once: what ``setup_cache`` returns.

    ``outcomes`` maps ``(model, backend, scenario)`` to ``{"figures": {figure: samples}}``,
    ``{"skip": reason}`` or ``{"error": message}``; a backend that fails does not lose
    the others' results. When no backend can run at all it raises, so a run that
    measured nothing fails instead of passing as a table of skips. ``marker_dir``
    (default: the working directory, which is asv's per-run cache directory) records
    which samples a benchmark has already reported.
    """
    outcomes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for model in MODELS:
        for backend in BACKENDS:
            try:
                measured = measure(model, backend, SCENARIOS, RUNS)
            except Unavailable as exc:
                outcomes.update({(model, backend, s): {"skip": str(exc)} for s in SCENARIOS})
                continue
            except Exception as exc:  # one engine's crash must not lose the other engines' results
                message = f"{type(exc).__name__}: {exc}"
                outcomes.update({(model, backend, s): {"error": message} for s in SCENARIOS})
                continue
            outcomes.update({(model, backend, s): {"figures": figures} for s, figures in measured.items()})
    if all("skip" in outcome for outcome in outcomes.values()):
        reasons = sorted({outcome["skip"] for outcome in outcomes.values()})
        raise RuntimeError(f"no backend can run {', '.join(MODELS)} here: {'; '.join(reasons)}")
    return {"outcomes": outcomes, "marker_dir": str(Path(marker_dir or Path.cwd()).resolve()), "runs": RUNS}


class Measured:
    """One model x backend x scenario's samples from a ``setup_cache`` measurement.

    asv shares one ``setup_cache`` between rounds when it does not interleave them
    (``asv run -a rounds=2 --no-interleave-rounds``, or an existing environment). Handing
    the same samples out twice would double them and overstate significance, so a
    figure's cached samples are reported once; a later round measures afresh.
    """

    def __init__(self, measurement: dict[str, Any], model: str, backend: str, scenario: str) -> None:
        self.key = (model, backend, scenario)
        outcome = measurement["outcomes"].get(self.key)
        if outcome is None:
            raise RuntimeError(f"{model} {backend} {scenario}: not in this setup_cache measurement")
        if "skip" in outcome:
            raise Unavailable(outcome["skip"])
        if "error" in outcome:
            raise RuntimeError(outcome["error"])
        self.figures: dict[str, list[float]] = outcome["figures"]
        self.marker_dir = Path(measurement["marker_dir"])
        self.runs = int(measurement["runs"])

    def samples(self, figure: str) -> dict[str, Any]:
        """``figure``'s per-run values in the form asv's runner records as samples."""
        if figure not in self.figures:
            raise Unavailable(f"{figure} is not recorded by this revision's harness (or by this backend)")
        marker = self.marker_dir / f"reported-{figure}-{'-'.join(self.key)}"
        try:
            marker.touch(exist_ok=False)
            values = self.figures[figure]
        except FileExistsError:
            model, backend, scenario = self.key
            values = measure(model, backend, [scenario], self.runs)[scenario][figure]
        return {"samples": values, "number": 1}


class LoadedScenario:
    """A loaded backend and one scenario's prompt, ready to generate (for ``peakmem_*``)."""

    def __init__(self, loaded: LoadedBackend, scenario: Scenario, prompt: Prompt) -> None:
        self.loaded = loaded
        self.scenario = scenario
        self.prompt = prompt

    @classmethod
    def open(cls, model: str, backend: str, scenario: str) -> LoadedScenario:
        """Load ``backend`` (see :func:`open_backend`) and build the scenario's prompt with its tokenizer."""
        from pytest_minerva.timing import scenarios

        loaded = open_backend(model, backend)
        chosen = scenarios.get(scenario)
        try:
            return cls(loaded, chosen, scenarios.build_prompt(loaded.backend, chosen))
        except Exception:
            loaded.backend.close()
            raise

    def generate(self) -> int:
        """Generate the scenario's tokens once; the generated count (a short run raises)."""
        from pytest_minerva.timing import harness

        record = harness.timed_run(self.loaded.backend, self.prompt.ids, self.scenario.generate_tokens)
        problem = record.problem()
        if problem:
            raise RuntimeError(f"{self.loaded.backend.name} {self.scenario.name}: {problem}")
        return record.generated_tokens

    def close(self) -> None:
        self.loaded.backend.close()


# --- Numerics: the equivalence figures of each backend pair, tracked beside speed -------------

#: What ``bench_numerics`` tracks per pair: the equivalence suite's figures (see
#: :func:`pytest_minerva.equivalence.runner.measure_numerics`), each lower-is-better as asv
#: assumes. ``top1_disagreement`` is ``1 - top1_agreement``: the share of positions whose most
#: likely next token differs, so that a drop in agreement reads as "worse" in ``asv compare``.
NUMERICS_FIGURES = ("kl_mean", "kl_max", "top1_disagreement", "max_dlogit")
#: The pair kinds the numerics history covers: the equivalence suite's own.
NUMERICS_PAIR_KINDS = ("cross-backend", "quantization")


def pair_label(pair: Any) -> str:
    """A pair's asv parameter: both sides' format and backend, e.g.
    ``safetensors-transformers vs gguf-llama_cpp`` (the model and device are parameters of their own)."""
    ref, cand = pair.reference, pair.candidate
    return f"{ref.format_id}-{ref.backend.name} vs {cand.format_id}-{cand.backend.name}"


def chosen_pairs(session: Any) -> list[Any]:
    """The equivalence suite's pairs of ``session``'s models on :data:`DEVICE` whose candidate is one
    of :data:`BACKENDS`; the reference side is whichever registered backend the suite makes it."""
    return [
        pair
        for pair in session.pairs(list(NUMERICS_PAIR_KINDS))
        if pair.candidate.device == DEVICE and pair.candidate.backend.name in BACKENDS
    ]


def numerics_pairs(model: str) -> list[Any]:
    """:func:`chosen_pairs` of ``model`` (nothing is loaded)."""
    return chosen_pairs(build_session(options.Settings(models=[model], devices=[DEVICE])))


def numerics_pair_labels() -> tuple[str, ...]:
    """Every pair label of :data:`MODELS`, in the suite's order, for the benchmark's parameters."""
    labels: dict[str, None] = {}
    for model in MODELS:
        try:
            for pair in numerics_pairs(model):
                labels.setdefault(pair_label(pair), None)
        except Exception:  # an unknown model here is reported by the timed suite's setup
            continue
    return tuple(labels)


def measure_pair_numerics(session: Any, pair: Any) -> dict[str, float]:
    """Load both sides of ``pair`` (the session keeps the reference loaded for the next pair) and
    return the tracked figures. Raises :class:`Unavailable` where a side cannot run here."""
    from pytest_minerva.equivalence import runner
    from pytest_minerva.errors import ArtifactMissing, BackendUnavailable

    # What runner.measure_pair does, spelled out here: asv measures older commits with this suite,
    # and measure_numerics is the oldest revision's entry point.
    measure = getattr(runner, "measure_numerics", None)
    if measure is None:
        raise Unavailable("this revision has no numerics measurement (equivalence.runner.measure_numerics)")
    reason = session.check_runnable(pair.reference) or session.check_runnable(pair.candidate)
    if reason:
        raise Unavailable(reason)
    try:
        reference = session.backend(pair.reference)
        candidate = session.backend(pair.candidate)
    except (ArtifactMissing, BackendUnavailable) as exc:
        raise Unavailable(str(exc)) from None
    figures = measure(reference, candidate).figures()
    return {
        "kl_mean": figures["kl_mean"],
        "kl_max": figures["kl_max"],
        "top1_disagreement": 1.0 - figures["top1_agreement"],
        "max_dlogit": figures["max_dlogit"],
    }


def measure_numerics_all() -> dict[str, Any]:
    """Every pair of every model of the suite, measured once: what ``Numerics.setup_cache`` returns.

    ``outcomes`` maps ``(model, pair label)`` to ``{"figures": {figure: value}}``, ``{"skip": reason}``
    or ``{"error": message}``; one pair's failure does not lose the others. The figures are
    deterministic for a given engine build and thread count, so one measurement is the value.
    """
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    for model in MODELS:
        settings = options.Settings(models=[model], devices=[DEVICE], threads=THREADS)
        try:
            session = build_session(settings)
            pairs = chosen_pairs(session)
        except Exception as exc:
            outcomes[(model, "*")] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        try:
            for pair in pairs:
                key = (model, pair_label(pair))
                try:
                    outcomes[key] = {"figures": measure_pair_numerics(session, pair)}
                except Unavailable as exc:
                    outcomes[key] = {"skip": str(exc)}
                except Exception as exc:  # one engine's failure must not lose the other pairs
                    outcomes[key] = {"error": f"{pair.id}: {type(exc).__name__}: {exc}"}
        finally:
            session.close()
    return {"outcomes": outcomes}


def numerics_figures(measurement: dict[str, Any], model: str, pair: str) -> dict[str, float]:
    """One pair's figures from a :func:`measure_numerics_all` measurement; a skip or an error as asv expects."""
    outcomes = measurement["outcomes"]
    outcome = outcomes.get((model, pair)) or outcomes.get((model, "*"))
    if outcome is None:
        raise Unavailable(f"{model} has no pair {pair} on {DEVICE} with backends {', '.join(BACKENDS)}")
    if "skip" in outcome:
        raise Unavailable(outcome["skip"])
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    figures: dict[str, float] = outcome["figures"]
    return figures
