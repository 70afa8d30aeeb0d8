#!/usr/bin/env bash
# Mutation testing of the rule modules (policy, placement, contract, edit classes, durations, the
# results.csv trim, the checkpoint verifier, the mid-epoch position arithmetic, the slot limits) with
# mutmut, against the unit tests only, niced. See scripts/mutation.py and docs/mutation.md.
#   scripts/mutation.sh [--quick] [--survivors] [GROUP...]
# Uses .venv (scripts/test.sh makes it; mutmut is in the test extra), else the python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
exec "$py" scripts/mutation.py "$@"
