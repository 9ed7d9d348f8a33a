#!/usr/bin/env bash
# The GPU benchmark as run on a machine without network (the device tool's H100): install the pure-Python wheels
# carried in .whl (diffusers, omegaconf, torch-fidelity, importlib_metadata; see docs/gpu.md), print the stack, run
# eval/gpu_step_bench.py. Results land in $OUT (default out/gpu): gpu_bench.json, gpu_bench.md, log.txt.
#   PLAN=cache-compile-ntk: the one prepared command of issue 35 (<= 9 min): bf16 steps of every family with and
#     without cached latents (checkpointing off), the library's own path for SD v1.4 (cached latents off / on),
#     DiT compile against eager, then Fast-NTK prompt+head on a ViT-B/16-sized model at N = $NTK_N (5000) within
#     $NTK_S s.
#     TINY=1 rehearses it on the CPU (small configs, N = 20).
set -o pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "no nvidia-smi"
$PY -c "import sys, torch, diffusers, transformers, accelerate, peft; print(sys.version.split()[0], torch.__version__, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, \
'peft', peft.__version__)"
bench() {
  $PY eval/gpu_step_bench.py --budget-s "$1" --json "$OUT/gpu_bench.json" --markdown "$OUT/gpu_bench.md" "${@:2}" 2>&1 \
    | grep --line-buffered -v "should be kept in float32" | tee "$OUT/log.txt"
}
if [ "${PLAN:-}" = "cache-compile-ntk" ]; then
  tiny=(); ntk=(--device cuda --chunk-size 16 --vit-samples "${NTK_N:-5000}")
  if [ -n "${TINY:-}" ]; then tiny=(--tiny --device cpu); ntk=(--device cpu --vit-samples 20); fi
  bench "${BUDGET_S:-330}" --sections steps compile library --precisions bf16 --checkpointing off \
    --library-models sd "${tiny[@]}" "$@" || exit 1
  timeout "${NTK_S:-150}" $PY eval/fast_ntk_speed.py --skip-head "${ntk[@]}" 2>&1 | tee "$OUT/fast_ntk.txt"
  exit
fi
bench "${BUDGET_S:-420}" "$@"
