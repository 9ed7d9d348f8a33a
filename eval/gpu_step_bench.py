"""Step time and peak GPU memory of one SFR-on iteration for a DiT-XL/2-sized and an SD-1.x-sized model.

Usage: python eval/gpu_step_bench.py [--models dit sd] [--precisions fp32 bf16] [--gradient-checkpointing both]
           [--dit-batch 16] [--sd-batch 2] [--warmup 2] [--iters 5] [--json out/step_bench.json]
       OMP_NUM_THREADS=1 python eval/gpu_step_bench.py --tiny      # small configs, runs on a CPU
Random weights at real size (DiT-XL/2 256 px, SD-1.x UNet 512 px); prints a markdown table naming the device.
"""

import argparse
import json
import sys
from pathlib import Path

from diffunlearn.errors import UserError

CKPT = {"off": (False,), "on": (True,), "both": (False, True)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dit", "sd"], choices=["dit", "sd"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--gradient-checkpointing", default="off", choices=sorted(CKPT))
    parser.add_argument("--dit-batch", type=int, default=16, help="DiT batch per step (default 16)")
    parser.add_argument("--sd-batch", type=int, default=2, help="SD batch per step (default 2, the reference)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (the median is reported)")
    parser.add_argument("--tiny", action="store_true", help="small configs of the same model classes (CPU test)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if min(args.dit_batch, args.sd_batch, args.iters) < 1 or args.warmup < 0:
        print("error: --dit-batch, --sd-batch and --iters must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    from diffunlearn.benchmarks.step_time import markdown_table, run_benchmark

    try:
        rows = run_benchmark(args.models, args.precisions, CKPT[args.gradient_checkpointing], tiny=args.tiny,
                             batch_sizes={"dit": args.dit_batch, "sd": args.sd_batch}, warmup=args.warmup,
                             iters=args.iters, device=args.device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
