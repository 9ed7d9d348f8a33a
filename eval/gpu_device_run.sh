#!/usr/bin/env bash
# The GPU benchmark as run on a machine without network (the device tool's H100): install the pure-Python wheels
# carried in .whl (diffusers, omegaconf, torch-fidelity, importlib_metadata; see docs/gpu.md), print the stack, run
# eval/gpu_step_bench.py. Results land in $OUT (default out/gpu): gpu_bench.json, gpu_bench.md, log.txt.
set -o pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import sys, torch, diffusers, transformers, accelerate, peft; print(sys.version.split()[0], torch.__version__, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, \
'peft', peft.__version__)"
python3 eval/gpu_step_bench.py --budget-s "${BUDGET_S:-420}" --json "$OUT/gpu_bench.json" \
  --markdown "$OUT/gpu_bench.md" "$@" 2>&1 | grep --line-buffered -v "should be kept in float32" | tee "$OUT/log.txt"
