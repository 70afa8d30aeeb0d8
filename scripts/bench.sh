#!/usr/bin/env bash
# Run every benchmark and write docs/benchmarks.md: yolo-supervisor against a shell retry loop and
# supervisord in six failure scenarios and the long-epoch family, then the daemon's micro-figures.
# CPU only, nothing downloaded except supervisord itself (pip, into its own venv under ~/.cache: its
# package is also named `supervisor`). About 26 minutes on 2 cores for the six short scenarios, about
# 15 more for the long-epoch family (estimated). Extra arguments go to scripts/bench_recovery.py,
# e.g. --scenarios short or --scenarios long_epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
fi
exec .venv/bin/python scripts/bench_recovery.py "$@"
