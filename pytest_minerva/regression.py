"""``minerva compare BASE HEAD``: did HEAD get slower than BASE, beyond the noise of this machine?

BASE and HEAD are two git revisions of the repository holding the code under test
(``--repo``, default the current directory), two Python interpreters or virtual
environments, or, with ``--results``, two results files that ``minerva bench --json``
already wrote.

Builds (git revisions, interpreters) are measured interleaved. Each round runs the
benchmark command once for BASE and once for HEAD, back to back, in a fresh process
each (a lucky memory layout of one long-lived process cannot bias a whole side).
Rounds come in ABBA blocks: a block is BASE,HEAD then HEAD,BASE, or the mirror image,
drawn from ``--seed``, so slow drift of the machine and any advantage of running
second cancel out. A git revision runs from its own ``git worktree`` (in a temporary
directory, removed afterwards) with the worktree (``--src`` inside it) first on
``PYTHONPATH``, under the interpreter running ``minerva``. The default
command is ``minerva bench --json`` for the chosen model, backend and scenarios; a
round's figure is the median of that invocation's timed runs.

Statistics, per benchmark (backend x scenario) and figure (``--figure``):

ratio
    HEAD / BASE. Paired (builds): the median (or ``--statistic geomean``, the geometric
    mean) of the per-round ratios, computed on their logarithms. Unpaired (results
    files): the ratio of the two sides' medians (or geometric means).
confidence interval
    percentile bootstrap of that ratio, ``--resamples`` resamples seeded with ``--seed``;
    rounds are resampled as pairs, results files' runs independently per side.
p-value
    two-sided Wilcoxon signed-rank test of the per-round log ratios (paired), or the
    Mann-Whitney U test of the two sides' runs (unpaired): exact when there are no ties,
    else the normal approximation with tie and continuity corrections.
verdict
    with ``t`` = ``--threshold`` and the interval turned into a slowdown factor (HEAD/BASE
    for times, BASE/HEAD for rates): ``slower`` when its low end is above ``1 + t`` and
    p < 1 - ``--confidence``; ``faster`` when its high end is below ``1 / (1 + t)`` and
    p is as small; ``no change`` when it lies within ``[1 / (1 + t), 1 + t]``; else
    ``inconclusive`` (more rounds would tell).

Exit status: 0 when nothing is confirmed slower (``status: "ok"``), 1 when at least one
comparison is ``slower`` (``status: "regression"``), 2 when the comparison could not be
made: bad arguments, a build that does not run, a file that is not a results document
(``status: "error"``, with the reason). A confirmed regression wins over an error elsewhere.
The ``--json`` document is described by :func:`compare_document`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TextIO

from pytest_minerva.errors import MinervaError

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_ERROR = 2

COMPARE_SCHEMA_VERSION = 1

#: Figures a comparison can judge, and whether a higher value is worse (a time) or better (a rate).
HIGHER_IS_WORSE: dict[str, bool] = {
    "ttft_ms": True,
    "tpt_ms": True,
    "total_ms": True,
    "throughput_tps": False,
    "prefill_tps": False,
    "decode_tps": False,
}
#: The rates are exact reciprocals of these times per run, so judging them too would only repeat the verdicts.
DEFAULT_FIGURES = ("ttft_ms", "tpt_ms", "total_ms")
STATISTICS = ("median", "geomean")
VERDICTS = ("slower", "faster", "no change", "inconclusive")
#: Largest sample for the exact null distributions; beyond it the normal approximation is close.
EXACT_LIMIT = 50

#: benchmark name -> figure -> value, as measured in one invocation of one build.
Figures = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Criteria:
    """How a comparison decides: the threshold on the slowdown factor, the confidence, the bootstrap."""

    threshold: float = 0.02
    confidence: float = 0.95
    statistic: str = "median"
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise MinervaError(f"threshold must be a number of 0 or more, got {self.threshold!r}")
        if not 0 < self.confidence < 1:
            raise MinervaError(f"confidence must be between 0 and 1, got {self.confidence!r}")
        if self.statistic not in STATISTICS:
            raise MinervaError(f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.resamples < 100:
            raise MinervaError(f"resamples must be at least 100, got {self.resamples}")

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "statistic": self.statistic,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks of ``values`` (ties get their average rank), and the size of each tied group."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@cache
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """How many of the 2**n sign patterns of ranks 1..n give each positive-rank sum W+ = 0..n(n+1)/2."""
    counts = [1]
    for k in range(1, n + 1):
        grown = [*counts, *([0] * k)]
        for total, count in enumerate(counts):
            grown[total + k] += count
        counts = grown
    return tuple(counts)


@cache
def _rank_sum_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m+n, m) orderings of two samples give each U = 0..m*n (Gaussian binomial coefficients)."""
    poly = [1]
    for i in range(1, m + 1):
        # [n+i choose i]_q = [n+i-1 choose i-1]_q * (1 - q^(n+i)) / (1 - q^i), a polynomial at every step.
        grown = [*poly, *([0] * (n + i))]
        for k, c in enumerate(poly):
            grown[k + n + i] -= c
        for k in range(i, len(grown)):
            grown[k] += grown[k - i]
        poly = grown[: i * n + 1]
    return tuple(poly)


def _two_sided_exact(counts: Sequence[int], observed: float) -> float:
    total = sum(counts)
    w = round(observed)
    low = sum(counts[: w + 1]) / total
    high = sum(counts[w:]) / total
    return min(1.0, 2 * min(low, high))


def _two_sided_normal(statistic: float, mean: float, variance: float) -> float:
    if variance <= 0:
        return 1.0
    deviation = statistic - mean
    z = (deviation - math.copysign(0.5, deviation) if deviation else 0.0) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test that ``differences`` are centred on zero.

    Zero differences are dropped first. The null distribution is exact when at most
    :data:`EXACT_LIMIT` differences remain and their absolute values have no ties, else the
    normal approximation with tie and continuity corrections. This agrees with
    ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=True)``.
    """
    d = [float(x) for x in differences if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks, ties = _ranks([abs(x) for x in d])
    w_plus = math.fsum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    if not ties and n <= EXACT_LIMIT:
        return _two_sided_exact(_signed_rank_counts(n), w_plus)
    variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    return _two_sided_normal(w_plus, n * (n + 1) / 4, variance)


def mann_whitney_u(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``base`` and ``head`` come from one distribution.

    Exact when both samples have at most :data:`EXACT_LIMIT` values and none are tied, else
    the normal approximation with tie and continuity corrections. This agrees with
    ``scipy.stats.mannwhitneyu(head, base, use_continuity=True)``.
    """
    m, n = len(base), len(head)
    if m == 0 or n == 0:
        raise MinervaError(f"Mann-Whitney test needs samples on both sides, got {m} and {n} values")
    ranks, ties = _ranks([*map(float, base), *map(float, head)])
    u_head = math.fsum(ranks[m:]) - n * (n + 1) / 2
    if not ties and max(m, n) <= EXACT_LIMIT:
        return _two_sided_exact(_rank_sum_counts(min(m, n), max(m, n)), u_head)
    total = m + n
    variance = m * n / 12 * ((total + 1) - sum(t**3 - t for t in ties) / (total * (total - 1)))
    return _two_sided_normal(u_head, m * n / 2, variance)


def min_paired_rounds(confidence: float) -> int:
    """The fewest rounds with which the two-sided signed-rank test can reach p < 1 - ``confidence``.

    With fewer, even a slowdown seen in every round cannot be confirmed (at 95%, 5 rounds give p >= 0.0625).
    """
    alpha = 1 - confidence
    n = 1
    while 2 / 2**n >= alpha:
        n += 1
    return n


def unpaired_can_conclude(m: int, n: int, confidence: float) -> bool:
    """Whether the two-sided Mann-Whitney test on ``m`` and ``n`` runs can reach p < 1 - ``confidence`` at all."""
    return m > 0 and n > 0 and 2 / math.comb(m + n, m) < 1 - confidence


def _check_samples(values: Sequence[float], what: str) -> list[float]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MinervaError(f"{what}: expected numbers, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise MinervaError(f"{what}: every value must be a positive, finite number, got {value!r}")
        out.append(float(value))
    if len(out) < 2:
        raise MinervaError(f"{what}: needs at least 2 values, got {len(out)}")
    return out


def _statistic(name: str) -> Callable[..., Any]:
    import numpy as np

    return np.median if name == "median" else np.mean


def bootstrap_interval_paired(log_ratios: Sequence[float], criteria: Criteria) -> tuple[float, float]:
    """Percentile-bootstrap interval of the ratio from per-round log ratios, resampling rounds."""
    import numpy as np

    logs = np.asarray(log_ratios, dtype=float)
    rng = np.random.default_rng(criteria.seed)
    picks = rng.integers(0, len(logs), size=(criteria.resamples, len(logs)))
    boot = _statistic(criteria.statistic)(logs[picks], axis=1)
    low, high = np.quantile(boot, [criteria.alpha / 2, 1 - criteria.alpha / 2])
    return math.exp(low), math.exp(high)


def bootstrap_interval_unpaired(
    base_logs: Sequence[float], head_logs: Sequence[float], criteria: Criteria
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the ratio of the two sides' statistics, resampling each side."""
    import numpy as np

    base, head = np.asarray(base_logs, dtype=float), np.asarray(head_logs, dtype=float)
    rng = np.random.default_rng(criteria.seed)
    statistic = _statistic(criteria.statistic)
    base_boot = statistic(base[rng.integers(0, len(base), size=(criteria.resamples, len(base)))], axis=1)
    head_boot = statistic(head[rng.integers(0, len(head), size=(criteria.resamples, len(head)))], axis=1)
    low, high = np.quantile(head_boot - base_boot, [criteria.alpha / 2, 1 - criteria.alpha / 2])
    return math.exp(low), math.exp(high)


def judge(ci_low: float, ci_high: float, p_value: float, *, higher_is_worse: bool, criteria: Criteria) -> str:
    """The verdict for a HEAD/BASE interval: slower, faster, no change or inconclusive (see the module doc)."""
    slow_low, slow_high = (ci_low, ci_high) if higher_is_worse else (1 / ci_high, 1 / ci_low)
    band = 1 + criteria.threshold
    significant = p_value < criteria.alpha
    if slow_low > band and significant:
        return "slower"
    if slow_high < 1 / band and significant:
        return "faster"
    if slow_low >= 1 / band and slow_high <= band:
        return "no change"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """One benchmark's figure, BASE against HEAD: the ratio, its interval, the test and the verdict."""

    benchmark: str
    figure: str
    higher_is_worse: bool
    paired: bool
    n_base: int
    n_head: int
    base_median: float
    head_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str

    @property
    def test(self) -> str:
        return "wilcoxon-signed-rank" if self.paired else "mann-whitney-u"

    @property
    def slowdown(self) -> float:
        """How much slower HEAD is, as a factor (above 1: slower), whichever way the figure points."""
        return self.ratio if self.higher_is_worse else 1 / self.ratio

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "figure": self.figure,
            "direction": "lower is better" if self.higher_is_worse else "higher is better",
            "paired": self.paired,
            "test": self.test,
            "n_base": self.n_base,
            "n_head": self.n_head,
            "base_median": self.base_median,
            "head_median": self.head_median,
            "ratio": self.ratio,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "slowdown": self.slowdown,
            "verdict": self.verdict,
        }


def _median(values: Sequence[float]) -> float:
    from pytest_minerva.timing.stats import Stats

    return Stats(values).median


def _direction(figure: str, higher_is_worse: bool | None) -> bool:
    if higher_is_worse is not None:
        return higher_is_worse
    if figure not in HIGHER_IS_WORSE:
        raise MinervaError(f"unknown figure {figure!r}; choose from {', '.join(HIGHER_IS_WORSE)}")
    return HIGHER_IS_WORSE[figure]


def compare_paired(
    base: Sequence[float],
    head: Sequence[float],
    *,
    criteria: Criteria,
    benchmark: str = "",
    figure: str = "total_ms",
    higher_is_worse: bool | None = None,
) -> Comparison:
    """Judge interleaved rounds: ``base[i]`` and ``head[i]`` were measured back to back in round ``i``.

    ``higher_is_worse`` defaults to the figure's direction in :data:`HIGHER_IS_WORSE`.
    """
    what = f"{benchmark} {figure}".strip()
    base_values = _check_samples(base, f"{what}: BASE")
    head_values = _check_samples(head, f"{what}: HEAD")
    if len(base_values) != len(head_values):
        raise MinervaError(
            f"{what}: a paired comparison needs one HEAD value per BASE value, got {len(base_values)} and "
            f"{len(head_values)}"
        )
    logs = [math.log(h) - math.log(b) for b, h in zip(base_values, head_values, strict=True)]
    import numpy as np

    estimate = math.exp(float(_statistic(criteria.statistic)(np.asarray(logs))))
    low, high = bootstrap_interval_paired(logs, criteria)
    p_value = wilcoxon_signed_rank(logs)
    worse = _direction(figure, higher_is_worse)
    return Comparison(
        benchmark=benchmark,
        figure=figure,
        higher_is_worse=worse,
        paired=True,
        n_base=len(base_values),
        n_head=len(head_values),
        base_median=_median(base_values),
        head_median=_median(head_values),
        ratio=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        verdict=judge(low, high, p_value, higher_is_worse=worse, criteria=criteria),
    )


def compare_unpaired(
    base: Sequence[float],
    head: Sequence[float],
    *,
    criteria: Criteria,
    benchmark: str = "",
    figure: str = "total_ms",
    higher_is_worse: bool | None = None,
) -> Comparison:
    """Judge two independent sets of runs (results measured apart, not interleaved)."""
    what = f"{benchmark} {figure}".strip()
    base_values = _check_samples(base, f"{what}: BASE")
    head_values = _check_samples(head, f"{what}: HEAD")
    import numpy as np

    statistic = _statistic(criteria.statistic)
    base_logs, head_logs = np.log(base_values), np.log(head_values)
    estimate = math.exp(float(statistic(head_logs)) - float(statistic(base_logs)))
    low, high = bootstrap_interval_unpaired(base_logs.tolist(), head_logs.tolist(), criteria)
    p_value = mann_whitney_u(base_values, head_values)
    worse = _direction(figure, higher_is_worse)
    return Comparison(
        benchmark=benchmark,
        figure=figure,
        higher_is_worse=worse,
        paired=False,
        n_base=len(base_values),
        n_head=len(head_values),
        base_median=_median(base_values),
        head_median=_median(head_values),
        ratio=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        verdict=judge(low, high, p_value, higher_is_worse=worse, criteria=criteria),
    )


def abba_orders(rounds: int, seed: int) -> list[tuple[str, str]]:
    """Which build runs first in each round: blocks of two rounds, (A, B) then (B, A), A drawn per block."""
    rng = random.Random(seed)
    orders: list[tuple[str, str]] = []
    while len(orders) < rounds:
        first: tuple[str, str] = ("base", "head") if rng.random() < 0.5 else ("head", "base")
        orders += [first, (first[1], first[0])]
    return orders[:rounds]


@dataclass
class Round:
    """One round: each build measured once, back to back, in ``order``."""

    index: int
    order: tuple[str, str]
    base: Figures
    head: Figures
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.index, "order": list(self.order), "base": self.base, "head": self.head}


def iter_rounds(
    measure: Callable[[str, int], Figures],
    rounds: int,
    seed: int = 0,
    on_run: Callable[[str, int], None] | None = None,
) -> Iterator[Round]:
    """Run ``measure("base", i)`` and ``measure("head", i)`` for rounds ``i = 1..rounds`` in ABBA order.

    Each round is yielded as soon as both sides are measured; ``on_run(side, i)`` is called
    after each measurement (a progress bar).
    """
    for index, order in enumerate(abba_orders(rounds, seed), start=1):
        started = time.perf_counter()
        measured: dict[str, Figures] = {}
        for side in order:
            measured[side] = measure(side, index)
            if on_run is not None:
                on_run(side, index)
        yield Round(index, order, measured["base"], measured["head"], time.perf_counter() - started)


def interleave(
    measure: Callable[[str, int], Figures],
    rounds: int,
    seed: int = 0,
    on_run: Callable[[str, int], None] | None = None,
) -> list[Round]:
    """All rounds of :func:`iter_rounds`."""
    return list(iter_rounds(measure, rounds, seed, on_run))


def compare_rounds(
    rounds: Sequence[Round], criteria: Criteria, figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[list[Comparison], list[str]]:
    """Paired comparisons of every benchmark measured on both sides in every round, and what was left out."""
    if not rounds:
        raise MinervaError("no rounds to compare")
    names = sorted(set.intersection(*(set(r.base) & set(r.head) for r in rounds)))
    seen = {name for r in rounds for name in (*r.base, *r.head)}
    left_out = [f"{name}: not measured on both sides in every round" for name in sorted(seen - set(names))]
    comparisons = []
    for name in names:
        for figure in figures:
            if all(figure in r.base[name] and figure in r.head[name] for r in rounds):
                comparisons.append(
                    compare_paired(
                        [r.base[name][figure] for r in rounds],
                        [r.head[name][figure] for r in rounds],
                        criteria=criteria,
                        benchmark=name,
                        figure=figure,
                    )
                )
    return comparisons, left_out


def _bench_name(bench: Mapping[str, Any]) -> str:
    return str(bench.get("name") or f"{bench['case_id']}::{bench['scenario']}")


def _backend_problems(document: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Backends with no benchmark entries: those that failed (errors) and those that cannot run here (notes)."""
    benchmarked = {bench["case_id"] for bench in document["benchmarks"]}
    errors: list[str] = []
    notes: list[str] = []
    for backend in document["backends"]:
        if backend["status"] != "ok" and backend["case_id"] not in benchmarked:
            line = f"{backend['case_id']}: {backend['status']}: {backend['reason']}"
            (errors if backend["status"] in ("error", "crashed") else notes).append(line)
    return errors, notes


def round_figures(
    document: Mapping[str, Any], figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[Figures, list[str], list[str]]:
    """From one ``minerva bench`` results document: each benchmark's figures, the failures, and notes.

    A benchmark's figure is the median of its timed runs. Failed benchmarks and backends
    come back as ``"name: problem"`` lines; backends that cannot run here as notes.
    """
    measured: Figures = {}
    failed, notes = _backend_problems(document)
    for bench in document["benchmarks"]:
        if bench["error"] is not None:
            failed.append(f"{_bench_name(bench)}: {bench['error']}")
            continue
        measured[_bench_name(bench)] = {f: _median([run[f] for run in bench["runs"]]) for f in figures}
    return measured, failed, notes


def run_samples(
    document: Mapping[str, Any], figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[dict[str, dict[str, list[float]]], list[str], list[str]]:
    """From one results document: every timed run's value of each figure per benchmark, failures and notes."""
    samples: dict[str, dict[str, list[float]]] = {}
    failed, notes = _backend_problems(document)
    for bench in document["benchmarks"]:
        if bench["error"] is not None:
            failed.append(f"{_bench_name(bench)}: {bench['error']}")
            continue
        samples[_bench_name(bench)] = {f: [float(run[f]) for run in bench["runs"]] for f in figures}
    return samples, failed, notes


@dataclass
class Build:
    """One side of a comparison: how to run its benchmark command and where its code comes from."""

    role: str
    spec: str
    kind: str
    python: str = sys.executable
    cwd: str = "."
    pythonpath: str | None = None
    commit: str | None = None
    python_version: str | None = None
    package_path: str | None = None

    @property
    def label(self) -> str:
        return "BASE" if self.role == "base" else "HEAD"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath is not None:
            rest = env.get("PYTHONPATH")
            env["PYTHONPATH"] = self.pythonpath + (os.pathsep + rest if rest else "")
        return env

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "commit": self.commit,
            "python": self.python,
            "python_version": self.python_version,
            "pytest_minerva_from": self.package_path,
        }


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise MinervaError(f"{repo}: cannot run git: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise MinervaError(f"{repo}: git {args[0]} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout.strip()


def git_toplevel(repo: str | Path) -> Path:
    """The top of the git checkout holding ``repo``; a one-line error when it is none."""
    path = Path(repo).expanduser()
    if not path.is_dir():
        raise MinervaError(f"{path}: --repo is not a directory")
    try:
        return Path(_git(path, "rev-parse", "--show-toplevel"))
    except MinervaError:
        raise MinervaError(f"{path}: not inside a git repository (give --repo, or compare interpreters)") from None


def resolve_commit(repo: Path, revision: str, label: str) -> str:
    """The full commit id of ``revision`` in ``repo``."""
    if revision.startswith("-"):
        raise MinervaError(f"{label} {revision!r} is not a git revision")
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except MinervaError:
        raise MinervaError(f"{repo}: {label} {revision!r} is not a commit in this repository") from None


def interpreter_of(spec: str, label: str) -> str:
    """The Python executable a spec names: the file itself, or a virtual environment's ``bin/python``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                return str(candidate.absolute())
        raise MinervaError(f"{path}: {label} is a directory but not a virtual environment (no bin/python)")
    if path.is_file() and os.access(path, os.X_OK):
        return str(path.absolute())
    raise MinervaError(f"{path}: {label} is not an executable Python interpreter")


def build_kind(spec: str) -> str:
    """``python`` for an existing path (interpreter or venv), else ``git`` (a revision)."""
    return "python" if Path(spec).expanduser().exists() else "git"


@contextlib.contextmanager
def worktrees(repo: Path, commits: Mapping[str, str]) -> Iterator[dict[str, Path]]:
    """Check out each ``role -> commit`` into a temporary ``git worktree``; all are removed on exit."""
    scratch = Path(tempfile.mkdtemp(prefix="minerva-compare-"))
    made: dict[str, Path] = {}
    try:
        for role, commit in commits.items():
            path = scratch / f"{role}-{commit[:12]}"
            _git(repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
            made[role] = path
        yield made
    finally:
        for path in made.values():
            with contextlib.suppress(MinervaError):
                _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(MinervaError):
            _git(repo, "worktree", "prune")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def probe_build(build: Build, timeout: float) -> None:
    """Record the build's Python version and where it imports ``pytest_minerva`` from; raise if it cannot."""
    code = "import sys, pytest_minerva; print(sys.version.split()[0]); print(pytest_minerva.__file__)"
    try:
        done = subprocess.run(
            [build.python, "-c", code],
            cwd=build.cwd,
            env=build.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MinervaError(f"{build.label} ({build.spec}): cannot start {build.python}: {exc}") from None
    if done.returncode != 0:
        raise MinervaError(
            f"{build.label} ({build.spec}): {build.python} cannot import pytest_minerva: {_last_line(done.stderr)}"
        )
    build.python_version, build.package_path = done.stdout.split()[:2]


def run_benchmark(build: Build, command: Sequence[str], json_path: Path, timeout: float) -> dict[str, Any]:
    """Run the benchmark command once for ``build`` and return the results document it wrote."""
    from pytest_minerva.storage import results

    argv = [part.replace("{python}", build.python).replace("{json}", str(json_path)) for part in command]
    json_path.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            argv, cwd=build.cwd, env=build.environ(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise MinervaError(f"{build.label} ({build.spec}): the benchmark command ran over {timeout:g} s") from None
    except OSError as exc:
        raise MinervaError(f"{build.label} ({build.spec}): cannot run {argv[0]}: {exc.strerror or exc}") from None
    if not json_path.is_file():
        raise MinervaError(
            f"{build.label} ({build.spec}): the benchmark command exited with {done.returncode} and wrote no "
            f"results: {_last_line(done.stderr or done.stdout)}"
        )
    try:
        return results.load(json_path)
    except MinervaError as exc:
        raise MinervaError(f"{build.label} ({build.spec}): {exc}") from None
    finally:
        json_path.unlink(missing_ok=True)


def bench_command(args: argparse.Namespace) -> list[str]:
    """The benchmark command for one round: ``--command`` split into words, or ``minerva bench`` from the options."""
    if args.command:
        words = shlex.split(args.command)
        if not any("{json}" in word for word in words):
            raise MinervaError("--command must contain {json}, where the command writes its results document")
        return words
    if not args.model:
        raise MinervaError("compare needs --model (or --command, or --results)")
    words = ["{python}", "-m", "pytest_minerva.cli", "bench", "--model", args.model]
    for backend in args.backend or []:
        words += ["--backend", backend]
    for scenario in args.scenario or ["short"]:
        words += ["--scenario", scenario]
    words += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--no-kv-probe", "--json", "{json}"]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    for option in ("cache_dir", "model_dir"):
        value = getattr(args, option, None)
        if value:
            words += [f"--{option.replace('_', '-')}", str(Path(value).absolute())]
    return words


def _verdict_counts(comparisons: Sequence[Comparison]) -> dict[str, int]:
    return {v: sum(c.verdict == v for c in comparisons) for v in VERDICTS}


def _change(c: Comparison) -> str:
    return f"{(c.slowdown - 1) * 100:+.1f}%"


def outcome(comparisons: Sequence[Comparison], errors: Sequence[str]) -> tuple[str, str, int]:
    """``(status, reason, exit code)``: regression wins over error, error over ok."""
    slower = [c for c in comparisons if c.verdict == "slower"]
    if slower:
        listed = "; ".join(f"{c.benchmark} {c.figure} {_change(c)}" for c in slower[:3])
        more = f" and {len(slower) - 3} more" if len(slower) > 3 else ""
        return "regression", f"HEAD is slower: {listed}{more}", EXIT_REGRESSION
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return "error", f"{errors[0]}{more}", EXIT_ERROR
    if not comparisons:
        return "error", "no benchmark was measured on both sides", EXIT_ERROR
    counts = ", ".join(f"{n} {v}" for v, n in _verdict_counts(comparisons).items() if n)
    return "ok", f"no confirmed regression in {len(comparisons)} comparisons ({counts})", EXIT_OK


def compare_document(
    *,
    mode: str,
    criteria: Criteria,
    comparisons: Sequence[Comparison] = (),
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    rounds: Sequence[Round] = (),
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    """The ``--json`` document of a comparison::

        {
          "schema": "pytest-minerva-compare", "schema_version": 1,
          "status": "ok" | "regression" | "error",   # what the exit code says
          "reason": "...",                            # one line: the regression, the error, or the counts
          "exit_code": 0 | 1 | 2,
          "mode": "git" | "python" | "results",
          "datetime": "...", "machine_info": {...}, "elapsed_s": 63.2,
          "base": {"spec", "kind", "commit", "python", "python_version", "pytest_minerva_from"},
          "head": {...},
          "criteria": {"threshold", "confidence", "statistic", "resamples", "seed"},
          "settings": {"rounds", "order", "figures", "command", ...},
          "comparisons": [{"benchmark", "figure", "direction", "paired", "test", "n_base", "n_head",
                           "base_median", "head_median", "ratio", "ci_low", "ci_high",
                           "p_value", "slowdown", "verdict"}],
          "counts": {"slower": 0, "faster": 0, "no change": 2, "inconclusive": 1},
          "errors": ["..."],                          # what could not be measured or read
          "notes": ["..."],                           # benchmarks only one side has, and similar
          "rounds": [{"round", "order", "base": {benchmark: {figure: value}}, "head": {...}}]
        }

    ``ratio``, ``ci_low`` and ``ci_high`` are HEAD/BASE; ``slowdown`` is the ratio turned so
    that above 1 means HEAD is worse, whichever way the figure points.
    """
    from pytest_minerva.storage.results import machine_info, utc_now

    status, reason, code = outcome(comparisons, errors)
    return {
        "schema": "pytest-minerva-compare",
        "schema_version": COMPARE_SCHEMA_VERSION,
        "status": status,
        "reason": reason,
        "exit_code": code,
        "mode": mode,
        "datetime": utc_now(),
        "machine_info": machine_info(),
        "elapsed_s": elapsed_s,
        "base": dict(base or {}),
        "head": dict(head or {}),
        "criteria": criteria.as_dict(),
        "settings": dict(settings or {}),
        "comparisons": [c.as_dict() for c in comparisons],
        "counts": _verdict_counts(comparisons),
        "errors": list(errors),
        "notes": list(notes),
        "rounds": [r.as_dict() for r in rounds],
    }


def _side(document: Mapping[str, Any], role: str) -> str:
    side = document.get(role) or {}
    commit = side.get("commit")
    return f"{side.get('spec', '?')}" + (f" ({commit[:12]})" if commit else "")


def markdown(document: Mapping[str, Any]) -> str:
    """The comparison as markdown: a header, the method in one paragraph, one row per benchmark figure."""
    from pytest_minerva.timing.report import number

    criteria = document["criteria"]
    settings = document.get("settings") or {}
    confidence = round(criteria["confidence"] * 100, 2)
    lines = [
        f"## minerva compare: BASE {_side(document, 'base')} vs HEAD {_side(document, 'head')}",
        "",
        f"Status: **{document['status']}**: {document['reason']}",
        "",
    ]
    statistic = "median" if criteria["statistic"] == "median" else "geometric mean"
    threshold = f"{criteria['threshold'] * 100:g}%"
    alpha = f"{1 - criteria['confidence']:.2g}"
    if document["mode"] == "results":
        method = (
            f"Runs from two results files (not interleaved): ratio = HEAD/BASE of the {statistic}s; "
            f"{confidence:g}% bootstrap interval ({criteria['resamples']} resamples, seed {criteria['seed']}); "
            "p from the Mann-Whitney U test."
        )
    else:
        method = (
            f"{settings.get('rounds')} rounds, each running BASE and HEAD once back to back in ABBA blocks "
            f"(seed {criteria['seed']}); ratio = {statistic} of the per-round HEAD/BASE ratios; "
            f"{confidence:g}% bootstrap interval ({criteria['resamples']} resamples); p from Wilcoxon's "
            "signed-rank test on the log ratios."
        )
    lines.append(
        f"{method} Verdict: slower/faster when the interval lies beyond {threshold} and p < {alpha}; "
        f"no change when it lies within {threshold}; otherwise inconclusive."
    )
    elapsed = document.get("elapsed_s")
    load = (document.get("machine_info") or {}).get("load_average")
    footer = []
    if elapsed is not None:
        footer.append(f"took {elapsed:.1f} s")
    if load:
        footer.append(f"load average {', '.join(f'{x:.2f}' for x in load)} at the end")
    if footer:
        lines += ["", "Compare " + "; ".join(footer) + "."]
    if document["comparisons"]:
        lines += [
            "",
            f"| Benchmark | Figure | BASE median | HEAD median | HEAD/BASE | {confidence:g}% CI | p | Verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in document["comparisons"]:
            verdict = f"**{c['verdict']}**" if c["verdict"] == "slower" else c["verdict"]
            lines.append(
                f"| {c['benchmark']} | {c['figure']} | {number(c['base_median'])} | {number(c['head_median'])} "
                f"| {c['ratio']:.3f} | {c['ci_low']:.3f}–{c['ci_high']:.3f} | {c['p_value']:.3g} | {verdict} |"
            )
    for title, items in (("Errors", document["errors"]), ("Notes", document["notes"])):
        if items:
            lines += ["", f"{title}:", *[f"- {item}" for item in items]]
    return "\n".join(lines) + "\n"


def _results_side(path: str, document: Mapping[str, Any]) -> dict[str, Any]:
    commit = document.get("commit_info") or {}
    machine = document.get("machine_info") or {}
    return {
        "spec": path,
        "kind": "results",
        "commit": commit.get("id"),
        "python_version": machine.get("python_version"),
        "datetime": document.get("datetime"),
    }


def compare_results_files(
    base_path: str, head_path: str, criteria: Criteria, figures: Sequence[str] = DEFAULT_FIGURES
) -> dict[str, Any]:
    """The comparison document of two ``minerva bench --json`` files, compared unpaired."""
    from pytest_minerva.storage import results

    started = time.perf_counter()
    base_document, head_document = results.load(base_path), results.load(head_path)
    base_samples, base_failed, base_notes = run_samples(base_document, figures)
    head_samples, head_failed, head_notes = run_samples(head_document, figures)
    errors = [f"{base_path}: {f}" for f in base_failed] + [f"{head_path}: {f}" for f in head_failed]
    notes = [f"{base_path}: {n}" for n in base_notes] + [f"{head_path}: {n}" for n in head_notes]
    notes += [f"{name}: only in {base_path}" for name in sorted(set(base_samples) - set(head_samples))]
    notes += [f"{name}: only in {head_path}" for name in sorted(set(head_samples) - set(base_samples))]
    comparisons = []
    for name in sorted(set(base_samples) & set(head_samples)):
        m, n = len(base_samples[name][figures[0]]), len(head_samples[name][figures[0]])
        if not unpaired_can_conclude(m, n, criteria.confidence):
            errors.append(
                f"{name}: {m} runs in {base_path} and {n} in {head_path} are too few for a test at "
                f"{criteria.confidence:g} confidence (4 runs on each side is the least at 0.95)"
            )
            continue
        for figure in figures:
            comparisons.append(
                compare_unpaired(
                    base_samples[name][figure],
                    head_samples[name][figure],
                    criteria=criteria,
                    benchmark=name,
                    figure=figure,
                )
            )
    base_node = (base_document.get("machine_info") or {}).get("node")
    head_node = (head_document.get("machine_info") or {}).get("node")
    if base_node != head_node:
        notes.append(f"measured on different machines ({base_node} and {head_node}): the ratio includes the machine")
    return compare_document(
        mode="results",
        criteria=criteria,
        comparisons=comparisons,
        errors=errors,
        notes=notes,
        base=_results_side(base_path, base_document),
        head=_results_side(head_path, head_document),
        settings={"figures": list(figures)},
        elapsed_s=time.perf_counter() - started,
    )


def _builds(args: argparse.Namespace) -> tuple[str, Build, Build, Path | None]:
    kinds = {build_kind(args.base), build_kind(args.head)}
    if len(kinds) > 1:
        raise MinervaError(
            f"BASE {args.base!r} and HEAD {args.head!r} are not the same kind: give two git revisions "
            "or two interpreters / virtual environments"
        )
    kind = kinds.pop()
    if kind == "python":
        cwd = str(Path.cwd())
        base = Build("base", args.base, kind, interpreter_of(args.base, "BASE"), cwd)
        head = Build("head", args.head, kind, interpreter_of(args.head, "HEAD"), cwd)
        return kind, base, head, None
    repo = git_toplevel(args.repo)
    base = Build("base", args.base, kind, commit=resolve_commit(repo, args.base, "BASE"))
    head = Build("head", args.head, kind, commit=resolve_commit(repo, args.head, "HEAD"))
    return kind, base, head, repo


def compare_builds(args: argparse.Namespace, criteria: Criteria, figures: Sequence[str], out: TextIO) -> dict[str, Any]:
    """Measure two builds interleaved and return the comparison document (raises on setup errors)."""
    command = bench_command(args)
    minimum = min_paired_rounds(criteria.confidence)
    if args.rounds < minimum:
        raise MinervaError(
            f"--rounds {args.rounds} cannot confirm anything at {criteria.confidence:g} confidence: "
            f"the signed-rank test needs at least {minimum} rounds"
        )
    kind, base, head, repo = _builds(args)
    started = time.perf_counter()
    errors: list[str] = []
    done: list[Round] = []
    with contextlib.ExitStack() as stack:
        if repo is not None:
            assert base.commit is not None and head.commit is not None
            trees = stack.enter_context(worktrees(repo, {"base": base.commit, "head": head.commit}))
            for build in (base, head):
                tree = trees[build.role]
                build.cwd = str(tree)
                build.pythonpath = str((tree / args.src).absolute())
        for build in (base, head):
            if not args.command:
                probe_build(build, args.timeout)
            _check_provenance(build, args.src)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minerva-compare-runs-")))
        builds = {"base": base, "head": head}
        failures: dict[str, list[str]] = {}
        skipped: dict[str, None] = {}

        def measure(side: str, index: int) -> Figures:
            document = run_benchmark(builds[side], command, scratch / f"{side}-{index}.json", args.timeout)
            figures_now, failed, notes = round_figures(document, figures)
            for line in failed:
                failures.setdefault(f"{builds[side].label}: {line}", []).append(str(index))
            skipped.update(dict.fromkeys(f"{builds[side].label}: {line}" for line in notes))
            return figures_now

        progress = _progress(args.rounds * 2, out)
        try:
            for measured in iter_rounds(
                measure,
                args.rounds,
                criteria.seed,
                on_run=lambda side, i: progress.update(1) if progress is not None else None,
            ):
                done.append(measured)
        except MinervaError as exc:
            errors.append(f"round {len(done) + 1}: {exc}")
        finally:
            if progress is not None:
                progress.close()
        errors += [f"{line} (rounds {', '.join(rounds)})" for line, rounds in failures.items()]
    comparisons, notes = compare_rounds(done, criteria, figures) if len(done) == args.rounds else ([], [])
    notes = [*skipped, *notes]
    settings = {
        "rounds": args.rounds,
        "order": "ABBA blocks",
        "figures": list(figures),
        "command": command,
        "repo": str(repo) if repo is not None else None,
        "src": args.src if repo is not None else None,
        "timeout_s": args.timeout,
    }
    return compare_document(
        mode=kind,
        criteria=criteria,
        comparisons=comparisons,
        errors=errors,
        notes=notes,
        base=base.as_dict(),
        head=head.as_dict(),
        settings=settings,
        rounds=done,
        elapsed_s=time.perf_counter() - started,
    )


def _check_provenance(build: Build, src: str) -> None:
    """A git build whose worktree holds pytest_minerva must import it from there, or the round measures other code."""
    if build.pythonpath is None or build.package_path is None:
        return
    own = Path(build.pythonpath, "pytest_minerva", "__init__.py")
    if own.is_file() and Path(build.package_path).resolve() != own.resolve():
        raise MinervaError(
            f"{build.label} ({build.spec}): pytest_minerva imports from {build.package_path}, not from the "
            f"worktree's {own}; is --src {src!r} right?"
        )


def _progress(total: int, out: TextIO) -> Any:
    if not out.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, leave=False, desc="compare")


def _fraction(value: str) -> float:
    try:
        number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (math.isfinite(number) and 0 <= number < 1):
        raise argparse.ArgumentTypeError(f"{value!r} must be a fraction from 0 to below 1, e.g. 0.02 or 2%")
    return number


def _confidence(value: str) -> float:
    number = _fraction(value)
    if not 0.5 <= number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 0.5 and below 1, e.g. 0.95")
    return number


def _figure(value: str) -> str:
    if value not in HIGHER_IS_WORSE:
        raise argparse.ArgumentTypeError(f"unknown figure {value!r}; choose from {', '.join(HIGHER_IS_WORSE)}")
    return value


def _seconds(value: str) -> float:
    from pytest_minerva.options import positive_float

    return positive_float(value)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compare`` on the ``minerva`` command line."""
    from pytest_minerva.cli import _add_common
    from pytest_minerva.options import backend_name, model_name, positive_int
    from pytest_minerva.timing.cli import non_negative_int, scenario_name

    parser = subparsers.add_parser(
        "compare",
        help="is HEAD slower than BASE? interleaved runs, a paired test and a confidence interval",
        description=(
            "Compare two git revisions, two interpreters / virtual environments, or (--results) two results "
            "files. Exit status: 0 no confirmed regression, 1 a confirmed regression, 2 the comparison "
            "could not be made."
        ),
    )
    parser.add_argument("base", metavar="BASE", help="git revision, interpreter or venv (results file with --results)")
    parser.add_argument("head", metavar="HEAD", help="as BASE: the build under suspicion")
    parser.add_argument(
        "--results",
        action="store_true",
        help="BASE and HEAD are 'minerva bench --json' files, compared unpaired (default: run both builds)",
    )
    parser.add_argument(
        "--repo",
        default=".",
        metavar="DIR",
        help="git repository holding the code under test (default: the current directory)",
    )
    parser.add_argument(
        "--src",
        default=".",
        metavar="DIR",
        help="directory inside the repository that goes first on PYTHONPATH (default: its top, '.')",
    )
    parser.add_argument("--model", type=model_name, metavar="NAME", help="model for 'minerva bench' (required)")
    parser.add_argument(
        "--backend",
        action="append",
        type=backend_name,
        metavar="NAME",
        help="backend for 'minerva bench'; repeatable (default: every registered one)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        type=scenario_name,
        metavar="NAME",
        help="scenario for 'minerva bench'; repeatable (default: short)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads per backend (default: minerva bench's, the number of physical cores)",
    )
    parser.add_argument(
        "--runs", type=positive_int, default=3, metavar="N", help="timed runs per build per round (default: 3)"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=1, metavar="N", help="warm-up runs per invocation (default: 1)"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=10,
        metavar="N",
        help="interleaved rounds, each running both builds once (default: 10; at least 6 at 0.95 confidence)",
    )
    parser.add_argument(
        "--command",
        metavar="CMD",
        help="benchmark command instead of 'minerva bench'; {python} is the build's interpreter and the "
        "command must write a results document to {json} (default: minerva bench with the options above)",
    )
    parser.add_argument(
        "--figure",
        action="append",
        type=_figure,
        metavar="NAME",
        help=f"figure to judge; repeatable (default: {', '.join(DEFAULT_FIGURES)})",
    )
    parser.add_argument(
        "--threshold",
        type=_fraction,
        default=0.02,
        metavar="FRACTION",
        help="smallest slowdown that counts, e.g. 0.02 or 2%% (default: 0.02)",
    )
    parser.add_argument(
        "--confidence",
        type=_confidence,
        default=0.95,
        metavar="LEVEL",
        help="confidence of the interval; the test's level is 1 - LEVEL (default: 0.95)",
    )
    parser.add_argument(
        "--statistic",
        choices=STATISTICS,
        default="median",
        help="ratio statistic: median or geometric mean of the per-round ratios (default: median)",
    )
    parser.add_argument(
        "--resamples", type=positive_int, default=10_000, metavar="N", help="bootstrap resamples (default: 10000)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="N", help="seed of the run order and bootstrap (default: 0)"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="limit for one benchmark invocation (default: 900)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the comparison document here (written on errors too)")
    _add_common(parser)
    parser.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``minerva compare``; print the table, write ``--json``; return 0, 1 or 2 (see the module doc)."""
    out = out if out is not None else sys.stdout
    started = time.perf_counter()
    figures = tuple(dict.fromkeys(args.figure or DEFAULT_FIGURES))
    mode = "results" if args.results else build_kind(args.base)
    try:
        criteria = Criteria(args.threshold, args.confidence, args.statistic, args.resamples, args.seed)
    except MinervaError as exc:
        print(f"minerva compare: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.results:
            document = compare_results_files(args.base, args.head, criteria, figures)
        else:
            document = compare_builds(args, criteria, figures, out)
    except MinervaError as exc:
        document = compare_document(
            mode=mode,
            criteria=criteria,
            errors=[str(exc)],
            base={"spec": args.base},
            head={"spec": args.head},
            elapsed_s=time.perf_counter() - started,
        )
    out.write(markdown(document))
    if args.json:
        from pytest_minerva.storage.atomic import atomic_write_json

        try:
            path = atomic_write_json(args.json, document)
        except OSError as exc:
            print(f"minerva compare: {args.json}: cannot write the comparison: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        out.write(f"\nwrote {path}\n")
    if document["status"] == "error":
        print(f"minerva compare: {document['reason']}", file=sys.stderr)
    return int(document["exit_code"])


__all__ = [
    "DEFAULT_FIGURES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "HIGHER_IS_WORSE",
    "Build",
    "Comparison",
    "Criteria",
    "Round",
    "abba_orders",
    "add_commands",
    "cmd_compare",
    "compare_builds",
    "compare_document",
    "compare_paired",
    "compare_results_files",
    "compare_rounds",
    "compare_unpaired",
    "interleave",
    "iter_rounds",
    "judge",
    "mann_whitney_u",
    "markdown",
    "min_paired_rounds",
    "round_figures",
    "run_samples",
    "unpaired_can_conclude",
    "wilcoxon_signed_rank",
    "worktrees",
]
