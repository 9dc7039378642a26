"""``minerva calibrate`` writes bounds from real measurements, and known divergences survive rewrites."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from pytest_minerva.commands import make_parser
from pytest_minerva.equivalence import load_known_divergences, load_profiles
from pytest_minerva.equivalence.profiles import ProfileError
from pytest_minerva.equivalence.tolerances import default_tolerances_path

pytest.importorskip("llama_cpp")


@pytest.fixture
def tolerances(tmp_path: Path) -> Path:
    copy = tmp_path / "tolerances.toml"
    shutil.copyfile(default_tolerances_path(), copy)
    return copy


def test_calibrate_records_measurements_and_derives_bounds(tolerances: Path) -> None:
    from pytest_minerva.commands.calibrate import cmd_calibrate

    before = load_profiles(tolerances)["f32-vs-f16"]
    args = make_parser().parse_args(
        [
            "calibrate",
            "--model",
            "tiny-random-llama",
            "--profile",
            "f32-vs-f16",
            "--threads",
            "1",
            "--tolerances",
            str(tolerances),
        ]
    )
    out = io.StringIO()
    assert cmd_calibrate(args, out) == 0
    after = load_profiles(tolerances)["f32-vs-f16"]
    fresh = [m for m in after.measurements if m.model == "tiny-random-llama"]
    assert len(fresh) == 3, "one measurement per prompt of the set"
    assert all(m.candidate.startswith("llama_cpp on tiny-random-llama gguf-f16") for m in fresh)
    assert {m.date for m in fresh}.isdisjoint({m.date for m in before.measurements if m.model == "tiny-random-llama"})
    # Models not measured in this run keep their measurements (and still count towards the bounds).
    others = [m for m in before.measurements if m.model != "tiny-random-llama"]
    assert others, "the committed profile also holds another model's measurements"
    assert [m for m in after.measurements if m.model != "tiny-random-llama"] == others
    worst_kl = max(m.values["kl_mean"] for m in after.measurements)
    assert after.bounds["kl_mean"] == pytest.approx(worst_kl * after.rule.factor)
    assert worst_kl > 0, "F16 weights cannot reproduce F32 logits exactly"
    assert "| f32-vs-f16 |" in out.getvalue()
    # The other profiles and the known divergences are kept as they were.
    kept, original = load_profiles(tolerances)["same-weights-q4_1"], load_profiles()["same-weights-q4_1"]
    assert (kept.bounds, kept.measurements) == (original.bounds, original.measurements)
    assert load_known_divergences(tolerances) == load_known_divergences()
    assert before.metrics == after.metrics


def test_known_divergence_must_name_a_profile_and_figures(tmp_path: Path) -> None:
    bad = tmp_path / "tolerances.toml"
    text = default_tolerances_path().read_text(encoding="utf-8")
    bad.write_text(text.replace('profile = "f32-vs-f32"', 'profile = "no-such-profile"'), encoding="utf-8")
    with pytest.raises(ProfileError, match="unknown profile 'no-such-profile'"):
        load_known_divergences(bad)
    bad.write_text(text + '\n[known_divergences.x]\nmodel = "m"\n', encoding="utf-8")
    with pytest.raises(ProfileError, match=r"known_divergences\.x: missing key"):
        load_known_divergences(bad)


def test_profiles_of_the_models_shipped_here_are_calibrated() -> None:
    """SmolLM2, Gemma 3 and tiny-random pairs need these; TinyLlama's (bf16 vs Q4_K_M) waits for its files."""
    profiles = load_profiles()
    needed = ["f32-vs-f32", "same-weights-q4_1", "same-weights-q4_k_m", "f32-vs-f16", "f32-vs-q8_0", "f32-vs-q4_0"]
    for name in [*needed, "f32-vs-q4_1"]:
        assert profiles[name].bounds, f"profile {name} has no bounds"
        assert profiles[name].measurements
