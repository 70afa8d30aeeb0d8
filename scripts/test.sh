#!/usr/bin/env bash
# Install yolo-supervisor with its test dependencies into .venv and run the whole suite.
# GPU tests skip themselves where NVML finds no device.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -ra "$@"
