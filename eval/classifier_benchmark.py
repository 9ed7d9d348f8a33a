"""Classification unlearning benchmark: RT, FT, GA, RL, SFR-on, Fast-NTK (head), Fast-NTK (BN + head), side by side.

Usage: OMP_NUM_THREADS=1 python eval/classifier_benchmark.py [--config configs/digits/classifier_benchmark.yaml]
           [--output out/classifier_benchmark] [--scenario class random] [key=value ...]
Writes OUTPUT/table.md (tables + the acceptance checks, measured) and OUTPUT/results.csv; prints the table.
"""

import argparse
import sys

from diffunlearn.commands.cli import parse_args
from diffunlearn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits/classifier_benchmark.yaml")
    parser.add_argument("--output", default="out/classifier_benchmark")
    parser.add_argument("--scenario", nargs="+", default=None, help="run only these scenarios of the config")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the config")
    args = parse_args(parser, argv)
    import torch

    from diffunlearn.benchmarks.classifier import scenario_tables
    from diffunlearn.benchmarks.classifier_prompts import run_classifier_benchmark

    torch.set_num_threads(args.threads)
    try:
        rows, checks = run_classifier_benchmark(args.config, args.output, args.overrides, args.scenario,
                                                progress=lambda m: print(m, file=sys.stderr, flush=True))
    except UserError as exc:
        print(f"diffunlearn: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(scenario_tables(rows))
    for claim, ok in checks:
        print(f"{'holds' if ok else 'DOES NOT HOLD'}: {claim}")
    print(f"written: {args.output}/table.md, {args.output}/results.csv")


if __name__ == "__main__":
    main()
