"""Pure statistics, the bottom layer: no engines, no files, no command line.

- :mod:`~pytest_minerva.stats.summary`: median, IQR, stddev and percentiles of timing samples.
- :mod:`~pytest_minerva.stats.rank`: Wilcoxon's signed-rank and the Mann-Whitney U tests, exact
  or normal, and the fewest samples with which they can reach a level.
- :mod:`~pytest_minerva.stats.bootstrap`: percentile-bootstrap intervals of a ratio from log
  samples, paired or unpaired.
"""
