#!/usr/bin/env bash
# Install yolo-supervisor into .venv and run the embedded demo: a real YOLO training on CPU,
# on a generated dataset, SIGKILLed after its second epoch save and resumed automatically to
# completion. The exact versions come from constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e .
exec .venv/bin/yolo-supervisord --demo "$@"
