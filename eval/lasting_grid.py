"""Lasting-forgetting grid: configs x class targets x seeds, each unlearned model attacked beside RT (--rt auto).

    python eval/lasting_grid.py --configs configs/digits/ddpm_sfron.yaml configs/digits/ddpm_lasting.yaml \
        --targets 7 1 2 5 8 --seeds 30 31 --output out/lasting/ddpm [key=value ...]

Finished runs and suites are read back, so rerunning the command resumes the grid.
"""

import argparse
import sys

from diffunlearn.commands.cli import call, parse_args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/digits/ddpm_sfron.yaml",
                                                          "configs/digits/ddpm_lasting.yaml"])
    parser.add_argument("--targets", nargs="+", default=["7"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--slack", type=float, default=0.10, help="relearning FA allowed above RT's at each point")
    parser.add_argument("--output", default="out/lasting")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="run-config overrides and attack.NAME.key=value settings for every run")
    args = parse_args(parser, argv)
    from diffunlearn.benchmarks.lasting_grid import run_lasting_grid

    call(run_lasting_grid, args.configs, args.targets, args.seeds, args.output, slack=args.slack,
         overrides=args.overrides, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(open(f"{args.output}/summary.md").read())


if __name__ == "__main__":
    main()
