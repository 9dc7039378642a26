"""The gate on a busy runner: CPU-time figures, clocks chosen by their noise, sequential looks, warm workers.

The statistics are checked on synthetic rounds (known truth, seeded); the CPU-time figures on
engines that compute or wait; the warm workers end to end on the tiny llama.cpp model, through
two interpreters and through git revisions (a side without the worker, a worker that dies).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_minerva.backends.base import GenerationRequest, TokenEvent
from pytest_minerva.compare import Criteria, Round, sequential
from pytest_minerva.compare.sequential import (
    choose_clocks,
    first_look,
    judge_look,
    look_alpha,
    look_points,
)
from pytest_minerva.compare.warm import pinned_cpus
from pytest_minerva.errors import MinervaError
from pytest_minerva.timing import clock
from pytest_minerva.timing.runs import timed_run
from tests.command_line import run_cli

REPO = Path(__file__).resolve().parents[1]
NAME = "m::short"


def _rounds(n: int, *, ratio: float, wall_noise: float, cpu_noise: float, seed: int, cpu_share: float = 1.0):
    """``n`` rounds of one benchmark: HEAD's times ``ratio`` x BASE's, wall and CPU each with its own noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base, head = {}, {}
        for figure, size in (("ttft_ms", 100.0), ("tpt_ms", 10.0), ("total_ms", 250.0)):
            cpu_base = size * cpu_share * math.exp(rng.gauss(0, cpu_noise))
            cpu_head = size * cpu_share * ratio * math.exp(rng.gauss(0, cpu_noise))
            base[figure] = cpu_base / cpu_share * math.exp(abs(rng.gauss(0, wall_noise)))
            head[figure] = cpu_head / cpu_share * math.exp(abs(rng.gauss(0, wall_noise)))
            base[clock.CPU_FIGURES[figure]] = cpu_base
            head[clock.CPU_FIGURES[figure]] = cpu_head
        out.append(Round(i + 1, ("base", "head") if i % 2 == 0 else ("head", "base"), {NAME: base}, {NAME: head}, 1.0))
    return out


def _sequential(rounds, clock_choice="auto", figures=("ttft_ms", "tpt_ms", "total_ms")):
    """Replay the sequential design of ``minerva compare`` over ``rounds``: the last look and its round count."""
    criteria = Criteria()
    points = look_points(len(rounds), first=first_look(criteria.confidence))
    clocks, look = {}, None
    for looks, n in enumerate(points, start=1):
        done = rounds[:n]
        if not clocks:
            clocks = {NAME: choose_clocks(done, NAME, figures, clock_choice)}
        look = judge_look(done, criteria, figures, clocks, index=looks, alpha=look_alpha(criteria.alpha, looks))
        if look.decided:
            break
    return look


# --- the design ---------------------------------------------------------------------------------


def test_looks_grow_and_their_error_rates_sum_below_alpha() -> None:
    assert look_points(400) == [8, 12, 18, 28, 42, 64, 96, 144, 216, 324, 400]
    assert look_points(10, sequential=False) == [10]
    assert look_points(6) == [6]
    assert sum(look_alpha(0.05, j) for j in range(1, 12)) < 0.05
    assert sum(look_alpha(0.05, j) for j in range(1, 60)) <= 0.05
    assert look_alpha(0.05, 3, sequential=False) == 0.05
    # The first look must be able to reach its own level: at 0.99, alpha/2 = 0.005 needs 9 rounds (2/2^9 < 0.005).
    assert first_look(0.95) == 8 and first_look(0.99) == 10


def test_a_clear_slowdown_stops_at_the_first_look() -> None:
    look = _sequential(_rounds(200, ratio=1.05, wall_noise=0.01, cpu_noise=0.01, seed=1))
    assert look.index == 1 and look.rounds == 8
    assert {c.verdict for c in look.comparisons} == {"slower"}


def test_a_head_that_changes_nothing_stops_as_no_change() -> None:
    look = _sequential(_rounds(400, ratio=1.0, wall_noise=0.01, cpu_noise=0.01, seed=2))
    assert {c.verdict for c in look.comparisons} == {"no change"}
    assert look.rounds < 100


def test_peeking_keeps_the_error_rate_at_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst case for a false 'slower': a true slowdown exactly at the 2% threshold, looked at up to 11 times.

    Spending alpha / 2^j per look keeps 'slower' at or below 5% (the union bound); judging every
    look at the full 5% instead (naive peeking) calls it far more often.
    """
    monkeypatch.setattr(sequential, "MAX_RESAMPLES", 4000)  # the tails matter less than the test's p here
    trials, spent, naive = 60, 0, 0
    criteria = Criteria(resamples=1000)
    for seed in range(trials):
        rounds = _rounds(64, ratio=1.02, wall_noise=0.03, cpu_noise=0.03, seed=100 + seed)
        figures = ("tpt_ms",)
        clocks = {NAME: choose_clocks(rounds[:8], NAME, figures, "wall")}
        spent_slower = naive_slower = False
        for j, n in enumerate(look_points(64), start=1):
            at_spent = judge_look(rounds[:n], criteria, figures, clocks, index=j, alpha=look_alpha(0.05, j))
            at_naive = judge_look(rounds[:n], criteria, figures, clocks, index=j, alpha=0.05)
            spent_slower |= at_spent.comparisons[0].verdict == "slower"
            naive_slower |= at_naive.comparisons[0].verdict == "slower"
        spent += spent_slower
        naive += naive_slower
    assert spent <= 0.05 * trials
    assert naive > spent


def test_time_slicing_noise_moves_the_verdict_to_cpu_time() -> None:
    rounds = _rounds(8, ratio=1.0, wall_noise=0.15, cpu_noise=0.01, seed=3)
    choices = choose_clocks(rounds, NAME, ["tpt_ms", "ttft_ms", "decode_tps"], "auto")
    assert choices["tpt_ms"].judged_on == "tpt_cpu_ms" and choices["ttft_ms"].judged_on == "ttft_cpu_ms"
    assert "judged on CPU time (tpt_cpu_ms)" in choices["tpt_ms"].reason and "time-slicing" in choices["tpt_ms"].reason
    assert choices["decode_tps"].judged_on == "decode_tps"  # a rate has no CPU twin
    look = judge_look(rounds, Criteria(), ["tpt_ms"], {NAME: choices}, index=1, alpha=0.025)
    (judged,) = look.comparisons
    (other,) = look.also
    assert (judged.figure, judged.clock, judged.measured) == ("tpt_ms", "cpu", "tpt_cpu_ms")
    assert (other.figure, other.clock, other.measured) == ("tpt_ms", "wall", "tpt_ms")


def test_a_time_sliced_engine_is_judged_on_cpu_time_by_its_runqueue_wait() -> None:
    """Under load the engine gets 40% of a core: CPU time is 40% of wall, the rest is waiting for the CPU."""
    rounds = _rounds(8, ratio=1.0, wall_noise=0.15, cpu_noise=0.01, seed=7, cpu_share=0.4)
    for r in rounds:
        for side in (r.base[NAME], r.head[NAME]):
            side["runqueue_wait_ms"] = side["total_ms"] - side["total_cpu_ms"]
    choice = choose_clocks(rounds, NAME, ["tpt_ms"], "auto")["tpt_ms"]
    assert choice.judged_on == "tpt_cpu_ms"
    assert choice.runnable_share == pytest.approx(1.0) and choice.cpu_share == pytest.approx(0.4, rel=0.3)
    for r in rounds:  # the same engine waiting on something else (a GPU) is not on the run queue
        r.base[NAME]["runqueue_wait_ms"] = 0.0
    assert choose_clocks(rounds, NAME, ["tpt_ms"], "auto")["tpt_ms"].judged_on == "tpt_ms"


def test_a_quiet_machine_or_an_engine_that_waits_is_judged_on_wall_time() -> None:
    quiet = _rounds(8, ratio=1.0, wall_noise=0.01, cpu_noise=0.01, seed=4)
    assert choose_clocks(quiet, NAME, ["tpt_ms"], "auto")["tpt_ms"].judged_on == "tpt_ms"
    waiting = _rounds(8, ratio=1.0, wall_noise=0.15, cpu_noise=0.01, seed=5, cpu_share=0.1)
    choice = choose_clocks(waiting, NAME, ["tpt_ms"], "auto")["tpt_ms"]
    assert choice.judged_on == "tpt_ms" and choice.cpu_share == pytest.approx(0.1, rel=0.3)
    assert choose_clocks(waiting, NAME, ["tpt_ms"], "cpu")["tpt_ms"].judged_on == "tpt_cpu_ms"
    assert choose_clocks(quiet, NAME, ["tpt_ms"], "wall")["tpt_ms"].judged_on == "tpt_ms"


def test_a_side_without_cpu_figures_is_judged_on_wall_time() -> None:
    rounds = _rounds(8, ratio=1.0, wall_noise=0.15, cpu_noise=0.01, seed=6)
    for r in rounds:
        del r.base[NAME]["tpt_cpu_ms"]
    choice = choose_clocks(rounds, NAME, ["tpt_ms"], "cpu")["tpt_ms"]
    assert choice.judged_on == "tpt_ms" and "no CPU-time figure on both sides" in choice.reason


def test_workers_are_pinned_to_the_last_cpus_when_threads_leave_room() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert pinned_cpus("none", 1) is None
    assert pinned_cpus("auto", None) is None
    assert pinned_cpus("auto", len(allowed)) is None
    if len(allowed) > 1:
        assert pinned_cpus("auto", 1) == allowed[-1:]
    assert pinned_cpus(str(allowed[0]), 1) == [allowed[0]]
    with pytest.raises(MinervaError, match="is not one this process may use"):
        pinned_cpus("99999", 1)


# --- CPU-time figures ---------------------------------------------------------------------------


class _Engine:
    """A streaming backend that computes (spins) or waits (sleeps) for each token."""

    device = "cpu"

    def __init__(self, name: str, work: str, seconds: float = 0.004) -> None:
        self.name, self.work, self.seconds = name, work, seconds

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        for i in range(request.max_tokens):
            if self.work == "compute":
                until = time.thread_time() + self.seconds
                while time.thread_time() < until:
                    pass
            else:
                time.sleep(self.seconds)
            yield TokenEvent(i, 1, "x", time.perf_counter(), "length" if i == request.max_tokens - 1 else None)


def test_an_engine_that_computes_has_cpu_figures_like_its_wall_figures() -> None:
    record = timed_run(_Engine("spin", "compute"), [1, 2, 3], 8)
    figures = record.figures()
    assert record.has_cpu and record.problem() is None
    assert figures["tpt_cpu_ms"] == pytest.approx(4.0, rel=0.3)
    assert figures["tpt_cpu_ms"] <= figures["tpt_ms"] * 1.05
    assert record.provenance()["tpt_cpu_ms"] == clock.HARNESS_CPU_CLOCK
    assert record.as_dict()["thread_cpu_ms"] == pytest.approx(figures["total_cpu_ms"], rel=0.3)


def test_an_engine_that_waits_has_cpu_figures_far_below_its_wall_figures() -> None:
    figures = timed_run(_Engine("sleeper", "wait", 0.01), [1, 2, 3], 6).figures()
    assert figures["tpt_ms"] >= 9.0
    assert figures["tpt_cpu_ms"] < figures["tpt_ms"] / 5


def test_a_buffered_stream_records_no_cpu_figures() -> None:
    class Buffered(_Engine):
        def stream_buffering(self) -> str:
            return "holds the whole response"

    record = timed_run(Buffered("buffered", "compute", 0.001), [1, 2], 4)
    assert not record.has_cpu
    assert "tpt_cpu_ms" not in record.figures()
    assert "tpt_cpu_ms" not in record.provenance()


# --- warm workers, end to end -------------------------------------------------------------------


def _compare(tmp_path: Path, *argv: str) -> tuple[int, str, dict]:
    out = tmp_path / "compare.json"
    ran = run_cli("compare", *argv, "--json", str(out))
    return ran.code, ran.out + ran.err, json.loads(out.read_text())


def test_two_interpreters_are_compared_with_warm_restarted_workers(tiny_gguf: Path, tmp_path: Path) -> None:
    code, text, document = _compare(
        tmp_path,
        sys.executable,
        sys.executable,
        "--model",
        str(tiny_gguf),
        "--backend",
        "llama_cpp",
        "--threads",
        "1",
        "--runs",
        "1",
        "--rounds",
        "8",
        "--restart-every",
        "4",
        "--threshold",
        "0.5",
    )
    assert code == 0, text
    settings = document["settings"]
    assert settings["method"] == "warm" and settings["sequential"] is True
    assert settings["rounds"] == 8 and settings["worker_starts"] == 2  # rounds 1-4, then 5-8 in new processes
    assert [look["rounds"] for look in settings["looks"]] == [8]
    assert {c["figure"] for c in document["comparisons"]} == {"ttft_ms", "tpt_ms", "total_ms"}
    assert {c["clock"] for c in document["comparisons"]} <= {"wall", "cpu"}
    assert len(document["also_measured"]) == 3 and all(c["verdict"] for c in document["also_measured"])
    rounds = document["rounds"]
    name = next(iter(rounds[0]["base"]))
    recorded = set(rounds[0]["base"][name])
    assert {"ttft_ms", "tpt_ms", "total_ms", "ttft_cpu_ms", "tpt_cpu_ms", "total_cpu_ms"} <= recorded
    if clock.scheduler_times() is not None:
        assert "runqueue_wait_ms" in recorded
    assert all(r["seconds"] > 0 for r in rounds)
    assert "not judged" in text and "judged on" in text


def test_a_budget_too_short_for_any_look_is_one_line_and_exit_2(tiny_gguf: Path, tmp_path: Path) -> None:
    code, _, document = _compare(
        tmp_path, sys.executable, sys.executable, "--model", str(tiny_gguf), "--backend", "llama_cpp",
        "--threads", "1", "--runs", "1", "--budget", "0.001",
    )  # fmt: skip
    assert code == 2
    assert document["status"] == "error"
    assert "the budget of 0.001 s ran out after 1 rounds" in document["reason"]


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of HEAD with two more commits: HEAD~1 drops the warm worker; HEAD makes the engine die."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of pytest-minerva")
    clone = tmp_path_factory.mktemp("revisions") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "tag", "with-worker"], check=True)
    subprocess.run([*git, "rm", "--quiet", "pytest_minerva/compare/worker.py"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "no warm worker"], check=True)
    subprocess.run([*git, "tag", "without-worker"], check=True)
    subprocess.run([*git, "checkout", "--quiet", "with-worker"], check=True)
    adapter = clone / "pytest_minerva" / "backends" / "llama_cpp.py"
    adapter.write_text(
        adapter.read_text()
        + "\n\nimport os as _os\n_stream = LlamaCppBackend.stream\n_calls = []\n\n\n"
        + "def _dies(self, request):\n    _calls.append(1)\n    if len(_calls) > 3:\n        _os._exit(7)\n"
        + "    yield from _stream(self, request)\n\n\nLlamaCppBackend.stream = _dies\n"
    )
    subprocess.run([*git, "commit", "--quiet", "-am", "the engine dies at its fourth generation"], check=True)
    subprocess.run([*git, "tag", "dies"], check=True)
    return clone


def _git_compare(clone: Path, tiny_gguf: Path, tmp_path: Path, base: str, head: str, *extra: str):
    return _compare(
        tmp_path, base, head, "--repo", str(clone), "--model", str(tiny_gguf), "--backend", "llama_cpp",
        "--threads", "1", "--runs", "1", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_a_revision_without_the_worker_is_measured_by_invocation(
    revisions: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    code, text, document = _git_compare(
        revisions, tiny_gguf, tmp_path, "with-worker", "without-worker", "--rounds", "6", "--threshold", "0.5"
    )
    assert code == 0, text
    assert document["settings"]["method"] == "invocations"
    assert any("has no warm benchmark worker" in note and "HEAD (without-worker)" in note for note in document["notes"])
    assert len(document["rounds"]) == 6


@pytest.mark.slow
def test_a_worker_that_dies_mid_round_is_one_line_naming_its_side(
    revisions: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    code, text, document = _git_compare(revisions, tiny_gguf, tmp_path, "with-worker", "dies", "--warmup", "1")
    assert code == 2, text
    (error,) = document["errors"]
    assert error.startswith("round ") and "HEAD (dies): its benchmark worker exited with status 7" in error
    assert "\n" not in error
    listed = subprocess.run(["git", "-C", str(revisions), "worktree", "list"], capture_output=True, text=True)
    assert len(listed.stdout.strip().splitlines()) == 1
