"""``minerva compare BASE HEAD``: did HEAD get slower than BASE, beyond the noise of this machine?

BASE and HEAD are two git revisions of the repository holding the code under test
(``--repo``, default the current directory), two Python interpreters or virtual
environments, or, with ``--results``, two results files that ``minerva bench --json``
already wrote.

Builds (git revisions, interpreters) are measured interleaved. By default each side keeps
its model loaded in a warm worker (:mod:`~pytest_minerva.compare.warm`, running the side's
own :mod:`~pytest_minerva.compare.worker`), restarted every few rounds so that no side
keeps one memory layout; both sides' workers are pinned to the same CPUs. With
``--method invocations`` (and for a side that predates the worker) each round runs the
benchmark command once for BASE and once for HEAD, in a fresh process each. Rounds go on
until a look decides or ``--budget`` runs out (:mod:`~pytest_minerva.compare.sequential`:
looks at 8, 12, 18, ... rounds, the error rate spent across them), and each time is judged
on wall or CPU time, whichever the time-slicing of a busy machine inflates less.
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

Modules, top to bottom: :mod:`~pytest_minerva.compare.run` (results files, or two builds
interleaved), :mod:`~pytest_minerva.compare.builds` (git worktrees, interpreters, one
benchmark invocation), :mod:`~pytest_minerva.compare.warm` and
:mod:`~pytest_minerva.compare.worker` (warm workers, each side's and the driver's end),
:mod:`~pytest_minerva.compare.sequential` (looks, error spending, the clock of each figure),
:mod:`~pytest_minerva.compare.schedule` (ABBA rounds),
:mod:`~pytest_minerva.compare.samples` (figures from a results document),
:mod:`~pytest_minerva.compare.verdict` (criteria, comparisons, verdicts, exit status) and
:mod:`~pytest_minerva.compare.render` (the JSON document and the markdown table); the
statistics are in :mod:`pytest_minerva.stats`. The command line is
:mod:`pytest_minerva.commands.compare`; the pull-request gate is
:mod:`~pytest_minerva.compare.gate`.
"""

from __future__ import annotations

from pytest_minerva.compare.builds import Build, build_kind, interpreter_of, worktrees
from pytest_minerva.compare.render import COMPARE_SCHEMA_VERSION, compare_document, markdown
from pytest_minerva.compare.run import bench_command, compare_builds, compare_results_files
from pytest_minerva.compare.samples import round_figures, run_samples
from pytest_minerva.compare.schedule import Figures, Round, abba_orders, interleave, iter_rounds
from pytest_minerva.compare.verdict import (
    DEFAULT_FIGURES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REGRESSION,
    HIGHER_IS_WORSE,
    VERDICTS,
    Comparison,
    Criteria,
    compare_paired,
    compare_rounds,
    compare_unpaired,
    judge,
    outcome,
)
from pytest_minerva.stats.bootstrap import STATISTICS

__all__ = [
    "COMPARE_SCHEMA_VERSION",
    "DEFAULT_FIGURES",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "HIGHER_IS_WORSE",
    "STATISTICS",
    "VERDICTS",
    "Build",
    "Comparison",
    "Criteria",
    "Figures",
    "Round",
    "abba_orders",
    "bench_command",
    "build_kind",
    "compare_builds",
    "compare_document",
    "compare_paired",
    "compare_results_files",
    "compare_rounds",
    "compare_unpaired",
    "interleave",
    "interpreter_of",
    "iter_rounds",
    "judge",
    "markdown",
    "outcome",
    "round_figures",
    "run_samples",
    "worktrees",
]
