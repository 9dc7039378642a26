#!/usr/bin/env bash
# The README's test command: lint, type-check, then every test (plugin tests and pytest_minerva/suites).
#   tools/test.sh [VENV] [extra pytest args...]
set -uo pipefail
venv="${1:-.venv}"
shift || true
cd "$(dirname "$0")/.."
bin="$venv/bin"

"$bin/ruff" check pytest_minerva tests benchmarks tools examples || exit 1
"$bin/mypy" || exit 1

"$bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  # pytest's "no tests collected": an empty run proves nothing, so it fails loudly.
  echo "test: pytest collected no tests (exit 5); check the -m / -k selection and --model" >&2
  exit 1
fi
exit "$status"
