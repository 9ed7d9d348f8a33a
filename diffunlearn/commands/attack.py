"""`diffunlearn attack [CONFIG] --model DIR --output OUT [--attacks a,b] [--rt DIR] [key=value ...]`: the robustness
suite (`robustness/suite.py`) against an unlearned model, its base beside it. A run folder brings its own config
(target, judge, protocol, base); CONFIG, when given, must name the same target."""

from __future__ import annotations

import argparse


def add_attack_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `attack` subcommand to an `add_subparsers()` object; its handler is `args.handler`."""
    parser = subparsers.add_parser("attack", help="attack an unlearned model: relearning, completion, inversion")
    parser.add_argument("config", nargs="?", default=None,
                        help="the run config that unlearned --model (forget target, judge, protocol); optional for a "
                             "run folder, which brings its own")
    parser.add_argument("--model", required=True, help="the unlearned model: a run folder or a diffusers folder")
    parser.add_argument("--output", required=True, help="output folder (robustness.json, robustness.md, gallery/)")
    parser.add_argument("--attacks", default=None,
                        help="comma-separated attack names (default: every attack that applies to the family)")
    parser.add_argument("--rt", default=None,
                        help="a model retrained without the target, attacked beside the unlearned one (what 'never "
                             "learnt it' scores); 'auto': the embedded base's recipe without the forget classes, "
                             "trained once and cached")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished suite in --output")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="run-config overrides, and attack settings as attack.NAME.key=value")
    parser.set_defaults(handler=run_attack_command)
    return parser


def run_attack_command(args) -> dict:
    from ..robustness.suite import run_suite, summary_table

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()] if args.attacks else None
    report = run_suite(args.config, args.model, args.output, attacks, args.overrides, overwrite=args.overwrite,
                       rt_path=args.rt)
    print(summary_table(report))
    print(f"-> {args.output}/robustness.json")
    return report
