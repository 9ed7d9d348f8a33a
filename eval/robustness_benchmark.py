"""Robustness side by side: every method of a benchmark config unlearns the same target, then the attack suite runs
on each result, the base and RT; one table (FA, FID ratio, unlearning wall time, ASR per attack).

Usage: OMP_NUM_THREADS=2 python eval/robustness_benchmark.py [--config configs/digits/benchmark_ddpm.yaml]
           [--output out/robustness_ddpm] [--rt out/rt_ddpm_7] [--attacks completion,relearning]
           [key=value ...] [attack.NAME.key=value ...]
Positional key=value: run-config overrides for every row; attack.NAME.key=value: attack settings.
Writes OUTPUT/robustness_table.md and robustness_benchmark.json; OUTPUT/runs/ and attacks/ hold every row (a rerun
resumes).
"""

import argparse
import sys

from diffunlearn.commands.cli import call, parse_args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits/benchmark_ddpm.yaml")
    parser.add_argument("--output", default="out/robustness_ddpm")
    parser.add_argument("--rt", default=None, help="a model retrained without the target (a row of its own); 'auto': "
                        "the embedded base's recipe without the forget classes, trained once and cached")
    parser.add_argument("--attacks", default=None, help="comma-separated attack names (default: all that apply)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_args(parser, argv)
    from diffunlearn.benchmarks.robustness_benchmark import run_robustness_benchmark, table

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    result = call(run_robustness_benchmark, args.config, args.output, attacks, args.rt,
                  [o for o in args.overrides if not o.startswith("attack.")],
                  [o for o in args.overrides if o.startswith("attack.")],
                  progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(result))
    print(f"written: {args.output}/robustness_table.md, robustness_benchmark.json")


if __name__ == "__main__":
    main()
