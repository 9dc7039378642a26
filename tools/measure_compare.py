"""Measure how well ``minerva compare`` tells a slowdown from noise on this machine.

Three measurements, each printed as markdown (docs/compare.md quotes them):

``synthetic``
    The false-positive rate (A against A) and the detection rate of a known 5% and 10%
    slowdown. The workload is a single-threaded numpy matmul loop whose iteration count
    is scaled by exactly 1.05 or 1.10. Each trial interleaves BASE and HEAD for up to
    ``--rounds`` rounds with :func:`pytest_minerva.compare.interleave`, and the first
    6, 10, ... rounds are judged by :func:`pytest_minerva.compare.compare_paired`: the
    same scheduler and statistics as ``minerva compare``. Trials of the three conditions
    are themselves interleaved so a change in machine load hits all three alike.
``real``
    ``minerva compare HEAD HEAD`` through git worktrees on a real model (default
    smollm2-135m, llama_cpp, 1 thread, the short scenario): the method end to end on
    inference, its verdicts and its time cost, plus the spread of the per-round ratios.
``real-slowdown``
    The same on a temporary clone of the repository with one extra commit that busy-waits
    ``--delay-ms`` after each generated token in the llama.cpp adapter: a real slowdown of
    the benchmarked path (TpT grows by the delay, TTFT does not change).

Usage::

    python tools/measure_compare.py synthetic --trials 200 --rounds 20
    python tools/measure_compare.py real --rounds 20
    python tools/measure_compare.py real-slowdown --delay-ms 1.2 --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minerva.compare import DEFAULT_FIGURES, Criteria, Round, compare_paired, interleave
from pytest_minerva.compare.sequential import choose_all_clocks, first_look, judge_look, look_alpha, look_points, spread

if TYPE_CHECKING:
    import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = (1.00, 1.05, 1.10)
MATRIX = 96


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate ``hits / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def matmul_loop(a: np.ndarray, b: np.ndarray, iterations: int) -> float:
    """Milliseconds to multiply two matrices ``iterations`` times."""
    started = time.perf_counter()
    for _ in range(iterations):
        a @ b
    return (time.perf_counter() - started) * 1e3


def calibrate(a: np.ndarray, b: np.ndarray, work_ms: float) -> int:
    """An iteration count, a multiple of 20 so that x1.05 and x1.10 are whole, lasting about ``work_ms``."""
    matmul_loop(a, b, 200)
    per_iteration = statistics.median(matmul_loop(a, b, 100) / 100 for _ in range(9))
    return max(20, round(work_ms / per_iteration / 20) * 20)


#: Median absolute deviation of log ratios, scaled to a normal standard deviation (a CV in %/100).
robust_spread = spread


REDUCERS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run every trial of every condition and keep each run's time: ``trials[t][condition][round][side]``."""
    # One BLAS thread, set before numpy loads: the workload must not change speed with how many cores are free.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((MATRIX, MATRIX)), rng.standard_normal((MATRIX, MATRIX))
    iterations = calibrate(a, b, args.work_ms)
    order = random.Random(args.seed)
    trials = []
    started = time.perf_counter()
    for trial in range(args.trials):
        conditions = list(CONDITIONS)
        order.shuffle(conditions)
        measured: dict[str, list[dict[str, Any]]] = {}
        for condition in conditions:
            counts = {"base": iterations, "head": round(iterations * condition)}
            runs: dict[tuple[str, int], list[float]] = {}

            def measure(side: str, index: int, counts: dict[str, int] = counts, runs: dict = runs) -> dict:
                times = [matmul_loop(a, b, counts[side]) for _ in range(args.runs)]
                runs[side, index] = times
                return {"synthetic": {"total_ms": statistics.median(times)}}

            rounds = interleave(measure, args.rounds, seed=args.seed * 100_003 + trial)
            measured[str(condition)] = [
                {"order": list(r.order), "base": runs["base", r.index], "head": runs["head", r.index]} for r in rounds
            ]
        trials.append(measured)
        if args.progress:
            print(f"trial {trial + 1}/{args.trials} {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return {
        "matrix": MATRIX,
        "iterations": iterations,
        "work_ms": args.work_ms,
        "runs": args.runs,
        "rounds": args.rounds,
        "seed": args.seed,
        "seconds": time.perf_counter() - started,
        "load_average": list(os.getloadavg()),
        "trials": trials,
    }


def evaluate(raw: dict[str, Any], checkpoints: Sequence[int], threshold: float) -> list[dict[str, Any]]:
    """Verdicts of every trial for each condition, round count, ratio statistic and per-round reducer."""
    rows = []
    for condition in CONDITIONS:
        for n in checkpoints:
            for statistic in ("median", "geomean"):
                for reducer in REDUCERS:
                    found = []
                    for trial, measured in enumerate(raw["trials"]):
                        rounds = measured[str(condition)][:n]
                        base = [REDUCERS[reducer](r["base"]) for r in rounds]
                        head = [REDUCERS[reducer](r["head"]) for r in rounds]
                        criteria = Criteria(threshold=threshold, statistic=statistic, seed=trial)
                        found.append(compare_paired(base, head, criteria=criteria, benchmark="synthetic").verdict)
                    slower = found.count("slower")
                    low, high = wilson(slower, len(found))
                    rows.append(
                        {
                            "slowdown": condition,
                            "rounds": n,
                            "statistic": statistic,
                            "round_figure": reducer,
                            "trials": len(found),
                            "slower": slower,
                            "faster": found.count("faster"),
                            "no change": found.count("no change"),
                            "inconclusive": found.count("inconclusive"),
                            "slower_rate": slower / len(found),
                            "slower_rate_ci95": [low, high],
                        }
                    )
    return rows


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    """The workload's realised ratios and noise, and what a trial costs."""
    ratios, spread, run_ms, trial_s = {}, [], [], []
    for condition in CONDITIONS:
        estimates = []
        for measured in raw["trials"]:
            rounds = measured[str(condition)]
            logs = [math.log(statistics.median(r["head"]) / statistics.median(r["base"])) for r in rounds]
            estimates.append(math.exp(statistics.median(logs)))
            if condition == 1.0:
                spread.append(robust_spread(logs))
                run_ms += [t for r in rounds for t in r["base"]]
                trial_s.append(sum(t for r in rounds for t in (*r["base"], *r["head"])) / 1e3)
        ratios[str(condition)] = statistics.median(estimates)
    return {
        "median_estimated_ratio": ratios,
        "aa_round_spread": statistics.median(spread),
        "median_run_ms": statistics.median(run_ms),
        "run_ms_p10_p90": [float(x) for x in statistics.quantiles(run_ms, n=10)[::8]],
        "aa_trial_seconds": statistics.median(trial_s),
    }


def synthetic_markdown(raw: dict[str, Any], rows: list[dict[str, Any]], threshold: float) -> str:
    info = summary(raw)
    low, high = info["run_ms_p10_p90"]
    lines = [
        f"Synthetic workload: {raw['iterations']} multiplications of {raw['matrix']}x{raw['matrix']} float64 "
        f"matrices; BASE runs took {info['median_run_ms']:.1f} ms (median; p10–p90 {low:.1f}–{high:.1f} ms). "
        f"Each round runs each side {raw['runs']} times back to back; {len(raw['trials'])} trials per condition, "
        f"up to {raw['rounds']} rounds each; threshold {threshold * 100:g}%, 95% confidence. "
        f"Collection took {raw['seconds'] / 60:.1f} min; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in raw['load_average'])}.",
        "",
        "Median estimated HEAD/BASE ratio over trials ("
        + f"{raw['rounds']} rounds): "
        + ", ".join(f"x{float(c):.2f} -> {r:.4f}" for c, r in info["median_estimated_ratio"].items())
        + f". Spread of the A/A per-round log ratios (scaled MAD, median over trials): "
        f"{info['aa_round_spread'] * 100:.2f}%. One A/A trial of {raw['rounds']} rounds: "
        f"{info['aa_trial_seconds']:.1f} s of measuring.",
        "",
        "| True slowdown | Rounds | Ratio statistic | Round figure | 'slower' [95% CI] | faster | no change "
        "| inconclusive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["slower_rate_ci95"]
        lines.append(
            f"| {(row['slowdown'] - 1) * 100:.0f}% | {row['rounds']} | {row['statistic']} | {row['round_figure']} "
            f"| {row['slower']}/{row['trials']} = {row['slower_rate'] * 100:.1f}% [{low * 100:.1f}–{high * 100:.1f}] "
            f"| {row['faster']} | {row['no change']} | {row['inconclusive']} |"
        )
    return "\n".join(lines) + "\n"


def run_compare(repo: Path, base: str, head: str, args: argparse.Namespace, json_path: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "pytest_minerva.commands",
        "compare",
        base,
        head,
        "--repo",
        str(repo),
        "--model",
        args.model,
        "--backend",
        args.backend,
        "--scenario",
        args.scenario,
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
        "--runs",
        str(args.runs),
        "--json",
        str(json_path),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    document = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if not document:
        raise SystemExit(f"minerva compare wrote no JSON (exit {done.returncode}): {done.stderr.strip()}")
    return {"exit_code": done.returncode, "wall_s": wall, "stdout": done.stdout, "document": document}


def real_markdown(run: dict[str, Any], title: str) -> str:
    document = run["document"]
    lines = [f"### {title}", "", f"Exit status {run['exit_code']}; wall time {run['wall_s']:.1f} s.", ""]
    rounds = document["rounds"]
    per_round = run["wall_s"] / max(1, len(rounds))
    lines.append(f"{len(rounds)} rounds: {per_round:.1f} s per round (two fresh `minerva bench` processes).")
    for figure in document["settings"].get("figures", []):
        logs = [math.log(r["head"][name][figure] / r["base"][name][figure]) for r in rounds for name in r["base"]]
        if len(logs) > 1:
            lines.append(
                f"- {figure}: spread of the per-round log ratios (scaled MAD) {robust_spread(logs) * 100:.1f}%"
            )
    lines += ["", "```", run["stdout"].strip(), "```"]
    return "\n".join(lines) + "\n"


def real(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        run = run_compare(REPO, "HEAD", "HEAD", args, Path(scratch) / "aa.json")
    if args.json:
        Path(args.json).write_text(json.dumps(run["document"], indent=2))
    return real_markdown(run, f"A/A: HEAD against HEAD, {args.rounds} rounds")


SLOWDOWN_PATCH = """

import dataclasses as _dataclasses


def _busy_wait_after_each_token(stream):
    # The wait is part of producing the token: the event is stamped after it, so the adapter's
    # timestamps still agree with the harness's receipts (a wait after the stamp is a lie it catches).
    def slowed(self, request):
        for index, event in enumerate(stream(self, request)):
            if not index:  # the first token (TTFT) is left alone
                yield event
                continue
            until = time.perf_counter() + {delay_s!r}
            while time.perf_counter() < until:
                pass
            yield _dataclasses.replace(event, time_s=time.perf_counter())

    return slowed


LlamaCppBackend.stream = _busy_wait_after_each_token(LlamaCppBackend.stream)
"""


def make_slow_clone(target: Path, delay_ms: float) -> None:
    """Clone this repository's HEAD into ``target`` and commit a per-token busy-wait in the llama.cpp adapter."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    adapter = target / "pytest_minerva" / "backends" / "llama_cpp.py"
    adapter.write_text(adapter.read_text() + SLOWDOWN_PATCH.format(delay_s=delay_ms / 1e3))
    git = ["git", "-C", str(target), "-c", "user.name=measure", "-c", "user.email=measure@localhost"]
    subprocess.run([*git, "commit", "--quiet", "-am", f"busy-wait {delay_ms} ms per token"], check=True)


def real_slowdown(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(scratch) / "repo"
        make_slow_clone(clone, args.delay_ms)
        run = run_compare(clone, "HEAD~1", "HEAD", args, Path(scratch) / "slow.json")
    if args.json:
        Path(args.json).write_text(json.dumps(run["document"], indent=2))
    return real_markdown(run, f"Real slowdown: {args.delay_ms} ms busy-wait per generated token, {args.rounds} rounds")


# ---------------------------------------------------------------------------------------------
# gate: the new method (warm workers, CPU time where it helps, sequential looks) against the old
# (a fresh 'minerva bench' per side per round, wall time, 10 fixed rounds) on the real model.

EXTRA_WORK_PATCH = """

# measure_compare.py gate: real extra work, a fixed fraction of each decode step's CPU time, done before
# the token is stamped (so its timestamp still agrees with the harness's receipt).
import dataclasses as _dataclasses
import time as _time


def _extra_work_in_each_decode(stream):
    def slowed(self, request):
        clock = _time.thread_time
        last = clock()
        for event in stream(self, request):
            until = clock() + {fraction!r} * (clock() - last)
            while clock() < until:
                pass
            last = clock()
            yield _dataclasses.replace(event, time_s=_time.perf_counter())

    return slowed


LlamaCppBackend.stream = _extra_work_in_each_decode(LlamaCppBackend.stream)
"""


def make_gate_clone(target: Path, fractions: Sequence[float]) -> dict[str, str]:
    """Clone HEAD into ``target``; one commit per fraction on top, each adding that much work per decode.

    Returns condition -> commit: ``base`` (HEAD itself) and one per fraction (``"0.05"``).
    """
    git = ["git", "-C", str(target), "-c", "user.name=measure", "-c", "user.email=measure@localhost"]
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(target)], check=True)
    adapter = target / "pytest_minerva" / "backends" / "llama_cpp.py"
    original = adapter.read_text()
    base = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    commits = {"base": base}
    for fraction in fractions:
        subprocess.run([*git, "checkout", "--quiet", "--detach", base], check=True)
        adapter.write_text(original + EXTRA_WORK_PATCH.format(fraction=fraction))
        subprocess.run([*git, "commit", "--quiet", "-am", f"{fraction:.0%} extra work per decode"], check=True)
        commits[f"{fraction:g}"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    subprocess.run([*git, "checkout", "--quiet", "--detach", base], check=True)
    return commits


LOAD_LOOP = {
    "cpu": "while True: pass",
    "memory": (
        "import numpy as np\na = np.ones(64 << 17)\nb = np.empty_like(a)\nwhile True: np.copyto(b, a); np.copyto(a, b)"
    ),
}


class LoadGenerator:
    """``n`` busy processes (a pure-Python loop, or numpy copies of 64 MiB arrays), started and stopped here."""

    def __init__(self, n: int, kind: str = "cpu") -> None:
        self.n, self.kind = n, kind
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> LoadGenerator:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", LOAD_LOOP[self.kind]], env=env))
        if self.n:
            deadline = time.monotonic() + 150
            while os.getloadavg()[0] < min(self.n, 4) and time.monotonic() < deadline:
                time.sleep(2)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def gate_compare(
    clone: Path, base: str, head: str, args: argparse.Namespace, json_path: Path, *extra: str
) -> dict[str, Any]:
    """One 'minerva compare' of two commits of the clone (every round kept in its JSON)."""
    command = [
        sys.executable, "-m", "pytest_minerva.commands", "compare", base, head, "--repo", str(clone),
        "--model", args.model, "--backend", args.backend, "--scenario", args.scenario,
        "--threads", str(args.threads), "--json", str(json_path), "--budget", "86400", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=clone, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if not json_path.is_file():
        raise SystemExit(f"minerva compare wrote no JSON (exit {done.returncode}): {done.stderr.strip()}")
    document = json.loads(json_path.read_text())
    if document["status"] == "error":
        raise SystemExit(f"minerva compare failed: {document['reason']}")
    return {"wall_s": wall, "load_average": list(os.getloadavg()), "document": document}


def collect_gate(args: argparse.Namespace) -> dict[str, Any]:
    """Pools of rounds, per method and condition, measured under one load (conditions interleaved in blocks)."""
    fractions = [float(f) for f in args.fractions.split(",")]
    started = time.perf_counter()
    pools: dict[str, dict[str, list[dict[str, Any]]]] = {"new": {}, "old": {}}
    with tempfile.TemporaryDirectory(prefix="measure-gate-") as scratch:
        clone = Path(scratch) / "clone"
        commits = make_gate_clone(clone, fractions)
        conditions = ["0", *[f"{f:g}" for f in fractions]]
        with LoadGenerator(args.load, args.load_kind) as load:
            load_at_start = list(os.getloadavg())
            for block in range(args.blocks):
                for condition in conditions:
                    head = commits["base"] if condition == "0" else commits[condition]
                    for method in args.methods.split(","):
                        rounds = args.new_rounds if method == "new" else args.old_rounds
                        extra = (
                            ["--no-sequential", "--rounds", str(rounds), "--runs", "1", "--seed", str(block)]
                            if method == "new"
                            else ["--method", "invocations", "--no-sequential", "--rounds", str(rounds),
                                  "--runs", "3", "--clock", "wall", "--seed", str(block)]
                        )  # fmt: skip
                        run = gate_compare(clone, commits["base"], head, args, Path(scratch) / "c.json", *extra)
                        pools[method].setdefault(condition, []).append(run)
                        if args.json:  # what was measured so far survives a later failure
                            Path(args.json + ".partial").write_text(json.dumps({"pools": pools}))
                        if args.progress:
                            print(
                                f"block {block + 1} {condition} {method}: {run['wall_s']:.0f} s, load "
                                f"{run['load_average'][0]:.1f}, total {time.perf_counter() - started:.0f} s",
                                file=sys.stderr,
                            )
            loads = [run["load_average"][0] for m in pools.values() for c in m.values() for run in c]
            n_load = load.n
    return {
        "load": n_load,
        "load_kind": args.load_kind,
        "load_average_at_start": load_at_start,
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "fractions": fractions,
        "seconds": time.perf_counter() - started,
        "cpu": _cpu_name(),
        "pools": pools,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def _rounds_of(run: dict[str, Any]) -> list[Round]:
    return [
        Round(r["round"], tuple(r["order"]), r["base"], r["head"], float(r["seconds"]))
        for r in run["document"]["rounds"]
    ]


def _overheads(runs: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(fixed seconds per compare outside rounds and worker starts, seconds per worker (re)start of both sides)."""
    fixed, per_start = [], []
    for run in runs:
        settings = run["document"]["settings"]
        rounds = sum(r["seconds"] for r in run["document"]["rounds"])
        starts, start_s = settings.get("worker_starts") or 0, settings.get("worker_start_s") or 0.0
        # Round seconds include the (re)starts that happened inside measure(); take them out once.
        fixed.append(run["wall_s"] - rounds)
        if starts:
            per_start.append(start_s / starts)
    return statistics.median(fixed), statistics.median(per_start) if per_start else 0.0


def new_trial(
    pool: Sequence[Sequence[Round]], rng: random.Random, budget: float, fixed_s: float, criteria: Criteria
) -> dict[str, Any]:
    """Replay the sequential method on rounds drawn from the pool: the looks, the stop, the verdict, the time.

    Rounds are drawn without replacement from the pooled runs, keeping ABBA pairs (rounds 2k-1, 2k)
    together so that every drawn block still cancels drift. The trial's time is the drawn rounds'
    own seconds (which include the worker restarts that fell in them) plus the compare's fixed cost.
    """
    blocks = [run[i : i + 2] for run in pool for i in range(0, len(run) - 1, 2)]
    rng.shuffle(blocks)
    drawn = [r for block in blocks for r in block]
    figures = list(DEFAULT_FIGURES)
    points = look_points(len(drawn), first=first_look(criteria.confidence))
    done: list[Round] = []
    clocks: dict[str, Any] = {}
    elapsed = fixed_s
    look = None
    looks = 0
    stop = "pool"
    for r in drawn:
        done.append(r)
        elapsed += r.seconds
        per_round = (elapsed - fixed_s) / len(done)
        out_of_time = elapsed + per_round > budget
        if len(done) in points or out_of_time:
            if not clocks:
                clocks = choose_all_clocks(done, figures, "auto")
            looks += 1
            look = judge_look(done, criteria, figures, clocks, index=looks, alpha=look_alpha(criteria.alpha, looks))
            if look.decided:
                stop = "decided"
                break
        if out_of_time:
            stop = "budget"
            break
    assert look is not None
    verdicts = [c.verdict for c in look.comparisons]
    on_cpu = sorted({c.figure for c in look.comparisons if c.clock == "cpu"})
    return {"slower": "slower" in verdicts, "rounds": len(done), "seconds": elapsed, "stop": stop, "cpu": on_cpu}


def old_trial(pool: Sequence[Sequence[Round]], rng: random.Random, rounds: int, fixed_s: float) -> dict[str, Any]:
    """The old method on ``rounds`` rounds drawn from the pool: wall-clock figures, one look at 95%."""
    blocks = [run[i : i + 2] for run in pool for i in range(0, len(run) - 1, 2)]
    drawn = [r for block in rng.sample(blocks, min(rounds // 2, len(blocks))) for r in block]
    criteria = Criteria()
    verdicts = [
        compare_paired(
            [r.base[name][f] for r in drawn], [r.head[name][f] for r in drawn], criteria=criteria, figure=f
        ).verdict
        for name in sorted(set.intersection(*(set(r.base) & set(r.head) for r in drawn)))
        for f in DEFAULT_FIGURES
    ]
    return {"slower": "slower" in verdicts, "rounds": rounds, "seconds": fixed_s + sum(r.seconds for r in drawn)}


def evaluate_gate(raw: dict[str, Any], trials_new: int, trials_old: int, budget: float, seed: int) -> list[dict]:
    rows = []
    rng = random.Random(seed)
    criteria = Criteria()
    for condition in raw["pools"]["new"]:
        new_runs = raw["pools"]["new"][condition]
        old_runs = raw["pools"].get("old", {}).get(condition, [])
        new_fixed, _ = _overheads(new_runs)
        new_pool = [_rounds_of(run) for run in new_runs]
        old_pool = [_rounds_of(run) for run in old_runs]
        new = [new_trial(new_pool, rng, budget, new_fixed, criteria) for _ in range(trials_new)]
        old = [old_trial(old_pool, rng, 10, _overheads(old_runs)[0]) for _ in range(trials_old)] if old_runs else []
        spreads = {}
        for key, pool in (("new", new_pool), ("old", old_pool)):
            everything = [r for run in pool for r in run]
            if not everything:
                continue
            name = next(iter(everything[0].base))
            for figure in ("tpt_ms", "tpt_cpu_ms", "ttft_ms", "ttft_cpu_ms"):
                logs = [math.log(r.head[name][figure] / r.base[name][figure]) for r in everything
                        if figure in r.base[name] and figure in r.head[name]]  # fmt: skip
                if len(logs) > 2:
                    spreads[f"{key} {figure}"] = robust_spread(logs)
        rows.append(
            {
                "condition": condition,
                "new": new,
                "old": old,
                "pool_rounds": {"new": sum(map(len, new_pool)), "old": sum(map(len, old_pool))},
                "spreads": spreads,
            }
        )
    return rows


def _rate(trials: Sequence[dict[str, Any]]) -> str:
    hits = sum(t["slower"] for t in trials)
    low, high = wilson(hits, len(trials))
    return f"{hits}/{len(trials)} = {hits / len(trials) * 100:.1f}% [{low * 100:.1f}–{high * 100:.1f}]"


def gate_markdown(raw: dict[str, Any], rows: list[dict[str, Any]], budget: float) -> str:
    load = raw["load_average_1min"]
    lines = [
        f"Load: {raw['load']} {raw['load_kind']} load processes; 1-minute load average {load['min']:.1f}–"
        f"{load['max']:.1f} (median {load['median']:.1f}) over {raw['seconds'] / 60:.1f} min of measuring; "
        f"CPU: {raw['cpu']}.",
        "",
        "| true slowdown | method | `slower` verdicts [95% Wilson] | rounds (median, max) | wall s per trial "
        "(median, max) | judged on CPU time | stopped: decided / budget / pool |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pct = "0% (A/A: false alarms)" if row["condition"] == "0" else f"{float(row['condition']) * 100:g}%"
        for method in ("old", "new"):
            trials = row[method]
            if not trials:
                continue
            rounds = [t["rounds"] for t in trials]
            secs = [t["seconds"] for t in trials]
            cpu = sum(bool(t.get("cpu")) for t in trials) if method == "new" else 0
            stops = (
                " / ".join(str(sum(t.get("stop") == s for t in trials)) for s in ("decided", "budget", "pool"))
                if method == "new"
                else "fixed 10 rounds"
            )
            label = (
                "old: fresh processes, wall, 10 rounds" if method == "old" else f"new: warm, sequential, {budget:g} s"
            )
            lines.append(
                f"| {pct} | {label} | {_rate(trials)} | {statistics.median(rounds):.0f}, {max(rounds)} "
                f"| {statistics.median(secs):.0f}, {max(secs):.0f} | {cpu}/{len(trials)} | {stops} |"
            )
    lines += ["", "Per-round spread of the log ratios (scaled MAD), from the pools:", ""]
    for row in rows:
        spreads = ", ".join(f"{k} {v * 100:.2f}%" for k, v in row["spreads"].items())
        lines.append(f"- {row['condition']}: {spreads} (pool: {row['pool_rounds']['new']} new rounds, "
                     f"{row['pool_rounds']['old']} old)")  # fmt: skip
    return "\n".join(lines)


def gate(args: argparse.Namespace) -> str:
    if args.load_json:
        raw = json.loads(Path(args.load_json).read_text())
    else:
        raw = collect_gate(args)
        if args.json:
            Path(args.json).write_text(json.dumps(raw))
    rows = evaluate_gate(raw, args.trials_new, args.trials_old, args.budget, args.seed)
    return gate_markdown(raw, rows, args.budget)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    synth = sub.add_parser("synthetic", help="false-positive and detection rates on a calibrated matmul loop")
    synth.add_argument("--trials", type=int, default=200, help="trials per condition (default: 200)")
    synth.add_argument("--rounds", type=int, default=20, help="rounds per trial (default: 20)")
    synth.add_argument(
        "--checkpoints",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[6, 10, 20],
        help="judge the first N rounds for each N (default: 6,10,20)",
    )
    synth.add_argument("--work-ms", type=float, default=20.0, help="BASE run length in ms (default: 20)")
    synth.add_argument("--runs", type=int, default=3, help="runs per side per round, as compare's --runs (default: 3)")
    synth.add_argument("--threshold", type=float, default=0.02, help="verdict threshold (default: 0.02)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--progress", action="store_true", help="one line per trial on stderr")
    synth.add_argument("--json", help="also write every measured time here")
    synth.add_argument("--load", help="judge the times in this --json file instead of measuring")
    for name in ("real", "real-slowdown"):
        real_parser = sub.add_parser(name)
        real_parser.add_argument("--model", default="smollm2-135m")
        real_parser.add_argument("--backend", default="llama_cpp")
        real_parser.add_argument("--scenario", default="short")
        real_parser.add_argument("--threads", type=int, default=1)
        real_parser.add_argument("--rounds", type=int, default=10)
        real_parser.add_argument("--runs", type=int, default=3)
        real_parser.add_argument("--json", help="also write the comparison document here")
        if name == "real-slowdown":
            real_parser.add_argument("--delay-ms", type=float, default=1.2, help="busy-wait per token (default: 1.2)")
    gate_parser = sub.add_parser("gate", help="old against new method on the real model, quiet or under load")
    gate_parser.add_argument("--model", default="smollm2-135m")
    gate_parser.add_argument("--backend", default="llama_cpp")
    gate_parser.add_argument("--scenario", default="short")
    gate_parser.add_argument("--threads", type=int, default=1)
    gate_parser.add_argument("--load", type=int, default=0, help="background load processes (default: 0, quiet)")
    gate_parser.add_argument("--load-kind", choices=sorted(LOAD_LOOP), default="cpu")
    gate_parser.add_argument("--fractions", default="0.05,0.10", help="extra work per decode (default: 0.05,0.10)")
    gate_parser.add_argument("--methods", default="new,old", help="which methods to measure (default: new,old)")
    gate_parser.add_argument("--blocks", type=int, default=2, help="compares per method and condition (default: 2)")
    gate_parser.add_argument("--new-rounds", type=int, default=48, help="rounds per new-method compare (default: 48)")
    gate_parser.add_argument("--old-rounds", type=int, default=12, help="rounds per old-method compare (default: 12)")
    gate_parser.add_argument(
        "--trials-new", type=int, default=100, help="new-method trials per condition (default: 100)"
    )
    gate_parser.add_argument("--trials-old", type=int, default=30, help="old-method trials per condition (default: 30)")
    gate_parser.add_argument("--budget", type=float, default=600.0, help="the new method's --budget (default: 600)")
    gate_parser.add_argument("--seed", type=int, default=0)
    gate_parser.add_argument("--progress", action="store_true")
    gate_parser.add_argument("--json", help="also write every pooled compare here")
    gate_parser.add_argument("--load-json", help="judge the pools in this --json file instead of measuring")
    args = parser.parse_args(argv)
    if args.what == "gate":
        print(gate(args))
    elif args.what == "synthetic":
        if args.load:
            raw = json.loads(Path(args.load).read_text())
        else:
            raw = collect(args)
            if args.json:
                Path(args.json).write_text(json.dumps(raw))
        checkpoints = [n for n in args.checkpoints if n <= raw["rounds"]]
        print(synthetic_markdown(raw, evaluate(raw, checkpoints, args.threshold), args.threshold))
    elif args.what == "real":
        print(real(args))
    else:
        if shutil.which("git") is None:
            raise SystemExit("git is needed for real-slowdown")
        print(real_slowdown(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
