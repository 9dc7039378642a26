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

from pytest_minerva.compare import Criteria, compare_paired, interleave

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


def robust_spread(log_ratios: Sequence[float]) -> float:
    """Median absolute deviation of log ratios, scaled to a normal standard deviation (a CV in %/100)."""
    centre = statistics.median(log_ratios)
    return 1.4826 * statistics.median(abs(x - centre) for x in log_ratios)


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

def _busy_wait_after_each_token(stream):
    def slowed(self, request):
        for event in stream(self, request):
            until = time.perf_counter() + {delay_s!r}
            while time.perf_counter() < until:
                pass
            yield event

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
    args = parser.parse_args(argv)
    if args.what == "synthetic":
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
