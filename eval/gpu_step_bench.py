"""GPU benchmark at real model sizes (random weights from the published configs): SFR-on and fine-tuning step
time and memory, the largest batch per trainable subset, torch.compile, compute utilisation, sampling throughput,
and the library's own mask pass / cache / iteration / evaluation sampling. Prints markdown tables naming the device.

Usage: python eval/gpu_step_bench.py [--models dit sd sdxl sd3] [--sections steps fit ...] [--budget-s 480]
           [--iters 3] [--json out/gpu_bench.json]
       OMP_NUM_THREADS=2 python eval/gpu_step_bench.py --tiny --device cpu   # small configs, runs on a CPU
"""

import argparse
import sys
from pathlib import Path

from diffunlearn.errors import UserError

FAMILIES = ("dit", "sd", "sdxl", "sd3")


def main(argv=None) -> int:
    from diffunlearn.benchmarks.gpu.bench import SECTIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; later rows are skipped")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="precisions of the step table")
    parser.add_argument("--batch", nargs="+", default=[], metavar="FAMILY=N",
                        help="training batch of the step table per family, e.g. dit=64 (defaults: dit 16, else 2)")
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"],
                        help="gradient checkpointing of the step table (off also runs with cached latents)")
    parser.add_argument("--library-models", nargs="+", default=["dit", "sd"], choices=["dit", "sd"],
                        help="families of the library section (with --models)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per row (the median is reported)")
    parser.add_argument("--tiny", action="store_true", help="small configs of the same model classes (CPU test)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", default=None, help="write the result here as it grows")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.budget_s <= 0:
        print(f"error: --iters must be >= 1 and --budget-s > 0, got {args.iters} and {args.budget_s}", file=sys.stderr)
        return 2
    batches = {}
    for item in args.batch:
        family, _, n = item.partition("=")
        if family not in FAMILIES or not n.isdigit() or int(n) < 1:
            print(f"error: --batch {item!r} is not FAMILY=N with FAMILY in {', '.join(FAMILIES)} and N >= 1",
                  file=sys.stderr)
            return 2
        batches[family] = int(n)
    import torch

    from diffunlearn.benchmarks.gpu.bench import run
    from diffunlearn.benchmarks.gpu.report import markdown

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("error: full-size models are a GPU benchmark; on a CPU pass --tiny", file=sys.stderr)
        return 2
    try:
        result = run(args.models, args.sections, tiny=args.tiny, device=device, budget_s=args.budget_s,
                     json_path=args.json, iters=args.iters,
                     precisions=args.precisions, batches=batches,
                     checkpointing=tuple(c == "on" for c in args.checkpointing),
                     library_models=tuple(args.library_models))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
