#!/usr/bin/env bash
# The asv regression gate: exit 1 when HEAD is slower than BASE in TTFT, TpT (wall or CPU time) or peak memory,
# or when a backend pair's numerics (KL, top-1 disagreement, max |dlogit|; benchmarks/bench_numerics.py) got worse.
#
#   tools/asv_gate.sh [BASE [HEAD]]        (default: main HEAD)
#
# asv builds each commit into a virtualenv under .asv/env (the first run creates it,
# reusing pip's cached llama-cpp-python wheel), then runs the two commits in
# interleaved rounds (BASE HEAD HEAD BASE BASE HEAD ...), each a fresh process that
# loads the model and times a few runs, so load drift on a shared runner hits both
# alike. A benchmark is flagged only when asv's Mann-Whitney test on the per-run
# samples finds the commits differ (p < 0.002) and the medians differ by more than the
# factor. Only lower-is-better results gate: asv would call a faster tokens/s "worse".
# The numerics benchmarks are deterministic, so a second `asv continuous` measures them in one
# round per commit and judges them at their own factor; a figure that was exactly 0 is flagged on
# any change (asv's ratio rule).
#
# Environment: MINERVA_ASV_ROUNDS (rounds per commit, default 6), MINERVA_ASV_RUNS
# (timed runs per round, default 2), MINERVA_ASV_FACTOR (default 1.1), MINERVA_ASV_NUMERICS_FACTOR
# (default 1.05; MINERVA_ASV_NUMERICS=0 leaves the numerics out),
# MINERVA_ASV_BACKENDS (default llama_cpp, the one engine asv.conf.json installs),
# MINERVA_ASV_MODELS / _SCENARIOS (benchmarks/common.py), ASV (default asv).
#
# Exit status: 0 no regression; 1 a regression, or a benchmark that passes on BASE and
# fails on HEAD; 2 bad arguments; 3 asv itself failed, or a benchmark failed on both
# commits or on BASE only (asv exits 1 or 0 for those, which would read as a verdict).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3

if [ $# -gt 2 ]; then
  echo "usage: tools/asv_gate.sh [BASE [HEAD]]" >&2
  exit 2
fi
base="${1:-main}"
head="${2:-HEAD}"
asv="${ASV:-asv}"
export MINERVA_ASV_RUNS="${MINERVA_ASV_RUNS:-2}"
export MINERVA_ASV_BACKENDS="${MINERVA_ASV_BACKENDS:-llama_cpp}"

# asv asks interactively about a machine it has not seen; take the detected values.
if [ ! -f "$HOME/.asv-machine.json" ]; then
  $asv machine --yes >/dev/null || exit 3
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
$asv continuous --interleave-rounds --attribute "rounds=${MINERVA_ASV_ROUNDS:-6}" \
  --factor "${MINERVA_ASV_FACTOR:-1.1}" --bench 'track_(ttft|tpot)(_cpu)?_ms|peakmem_' --show-stderr \
  "$base" "$head" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

verdict() {  # $1: asv's exit status, $2: its log, $3: what was compared
  if [ "$1" -eq 1 ] && grep -q "PERFORMANCE DECREASED" "$2"; then
    return 1
  fi
  if [ "$1" -ne 0 ] || ! grep -q "BENCHMARKS NOT SIGNIFICANTLY CHANGED\|PERFORMANCE INCREASED" "$2"; then
    echo "asv_gate: asv continuous ($3) failed (exit $1) before it could compare $base and $head" >&2
    return 3
  fi
  if grep -Eq "failed\)?\s*$" "$2"; then
    echo "asv_gate: some $3 benchmarks failed without HEAD newly failing them (see above); nothing to compare there" >&2
    return 3
  fi
  return 0
}
verdict "$status" "$log" "timing"
timing=$?
numerics=0
if [ "${MINERVA_ASV_NUMERICS:-1}" != "0" ]; then
  $asv continuous --attribute rounds=1 --factor "${MINERVA_ASV_NUMERICS_FACTOR:-1.05}" \
    --bench '^bench_numerics\.' --show-stderr "$base" "$head" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  verdict "$status" "$log" "numerics"
  numerics=$?
fi
# A regression in either wins over an error in the other: it is a finding either way.
if [ "$timing" -eq 1 ] || [ "$numerics" -eq 1 ]; then
  exit 1
fi
if [ "$timing" -ne 0 ] || [ "$numerics" -ne 0 ]; then
  exit 3
fi
exit 0
