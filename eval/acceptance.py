"""Acceptance grid: a run config over forget targets x seeds; every run in results.csv, the distribution in summary.md.

    python eval/acceptance.py --config configs/digits/ddpm_sfron.yaml --targets 0 1 2 3 4 5 6 7 8 9 \
        --seeds 0 1 2 3 4 --output out/acceptance/ddpm [key=value ...]
    python eval/acceptance.py --config configs/digits/sd_sfron.yaml --targets seven:one three:eight \
        --seeds 0 1 --fa-max 0.10 --output out/acceptance/sd

A target is a class id, or FORGET:ANCHOR judge labels for concept configs. Finished runs are read back, so
rerunning the command after an interruption resumes the grid.
"""

import argparse
import sys

from diffunlearn.commands.cli import parse_args
from diffunlearn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits/ddpm_sfron.yaml")
    parser.add_argument("--targets", nargs="+", default=["7", "3", "0"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fa-max", type=float, default=None, help="forget accuracy bar (default 0.05)")
    parser.add_argument("--output", default="out/acceptance")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="run-config overrides for every run")
    args = parse_args(parser, argv)
    from diffunlearn.benchmarks.acceptance import run_grid

    try:
        run_grid(args.config, args.targets, args.seeds, args.output, args.overrides, fa_max=args.fa_max,
                 progress=lambda m: print(m, file=sys.stderr, flush=True))
    except UserError as exc:
        print(f"diffunlearn: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(open(f"{args.output}/summary.md").read())


if __name__ == "__main__":
    main()
