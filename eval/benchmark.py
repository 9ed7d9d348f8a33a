"""Generation unlearning benchmark: every applicable method on one base model and one forget target, side by side.

Usage: OMP_NUM_THREADS=2 python eval/benchmark.py [--config configs/digits/benchmark_ddpm.yaml]
           [--output out/benchmark] [--rt-steps N] [--methods ga rt ...] [--set KEY=VALUE]...
           [key=value ...]
Positional key=value: overrides of the run config, for every row (`forget.classes=[3] seed=1`; `method.*` keys go to
the SFR-on row only). --set (repeatable): benchmark-setting overrides (`--set eval_every=50 --set max_steps=1000`).
Writes OUTPUT/table.md, results.csv, benchmark.json (rows, histories, the evaluation protocol, settings) and
fa_fid_vs_time.png; prints the table and SFR-on's time per step over a plain fine-tuning step.
"""

import argparse
import sys

from diffunlearn.commands.cli import parse_args
from diffunlearn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits/benchmark_ddpm.yaml")
    parser.add_argument("--output", default="out/benchmark")
    parser.add_argument("--rt-steps", type=int, default=None, help="shorten RT (recorded in the output)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a benchmark-setting override (repeat the flag for several)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these baselines (and rt); SFR-on always")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every row")
    args = parse_args(parser, argv)
    import torch

    from diffunlearn.benchmarks.generation import run_benchmark
    from diffunlearn.benchmarks.generation_report import report_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.rt_steps is not None and args.rt_steps <= 0:
            raise UserError(f"--rt-steps must be > 0, got {args.rt_steps}")
        result = run_benchmark(args.config, args.output, args.overrides, args.set, rt_steps=args.rt_steps,
                               only=args.methods,
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    except UserError as exc:
        print(f"diffunlearn: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(report_markdown(result))
    print(f"written: {args.output}/table.md, results.csv, benchmark.json, fa_fid_vs_time.png")


if __name__ == "__main__":
    main()
