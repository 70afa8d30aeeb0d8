#!/usr/bin/env bash
# Runs the GPU-marked tests on a machine with an NVIDIA GPU and prints the results.
# On the lent device machine, wheels missing there travel in .whl/ (see docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
out=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
python3 -c "import torch, ultralytics; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ultralytics', ultralytics.__version__)"
PYTHONUNBUFFERED=1 python3 -m pytest tests/gpu -m gpu -v -rA -s -p no:cacheprovider --timeout 400 2>&1 | tee "$out/gpu-tests.log"
exit "${PIPESTATUS[0]}"
