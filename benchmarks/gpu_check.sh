#!/usr/bin/env bash
# One run on a GPU machine: the CUDA tests, then the overhead benchmark on the GPU.
#
#   bash benchmarks/gpu_check.sh [BUDGET_S]      # output also saved under $OUT (default /tmp/gradema-gpu)
#
# The GPU machine has torch but not wandb: wheels for Python 3.12 in .whl/ (if present) are
# installed to /tmp/site first. Both steps are bounded so the whole run stays under ~7 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gradema-gpu}
mkdir -p "$OUT"
BUDGET=${1:-150}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
{
  nvidia-smi -L
  python3 -c "import torch, wandb; print('torch', torch.__version__, '| wandb', wandb.__version__, '|', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_sync.py tests/test_bad_gradients.py -k "cuda or sync" 2>&1 | tee "$OUT/tests.txt"
timeout 330 python3 -m benchmarks.overhead --device cuda --budget "$BUDGET" --no-memory 2>&1 | tee "$OUT/overhead.txt"
