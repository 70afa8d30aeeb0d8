#!/usr/bin/env bash
# Install yolo-supervisor with its test dependencies into .venv and run the whole suite.
# The exact versions come from constraints.txt (the package itself declares ranges).
# GPU tests skip themselves where NVML finds no device; the install test (tests/install/)
# needs root and skips elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
exec .venv/bin/python -m pytest -ra "$@"
