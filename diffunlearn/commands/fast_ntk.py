"""`diffunlearn fast-ntk`: the subcommand's arguments (`add_fast_ntk_parser`); the run itself is
`runs/fast_ntk.py: fast_ntk_run` (the scrubbed classifier and `fast_ntk.json`, written as a run folder)."""

from __future__ import annotations

import argparse


def add_fast_ntk_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `fast-ntk` subcommand to an `add_subparsers()` object; its handler is `args.handler`."""
    parser = subparsers.add_parser("fast-ntk", help="Fast-NTK unlearning of a digits classifier (seconds, CPU)")
    parser.add_argument("--model", default="embedded:digits/classifier",
                        help="DigitsClassifier folder or embedded:digits/classifier (default)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--forget-classes", type=int, nargs="+", metavar="C", help="forget these classes")
    target.add_argument("--forget-fraction", type=float, help="forget a random share of the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random forget split")
    parser.add_argument("--subset", default="head", help="'head', 'bn', a parameter-name pattern, or joined by '+'")
    parser.add_argument("--loss", default="ce", help="ce or mse")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="lambda = N * weight decay")
    parser.add_argument("--init", default="zeros",
                        help="linearisation point of the subset: zeros (default; forgets) or current (the trained "
                             "weights, the reference code's approximation)")
    parser.add_argument("--output", required=True, help="folder for the unlearned classifier and fast_ntk.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.set_defaults(handler=run_fast_ntk_command)
    return parser


def run_fast_ntk_command(args) -> dict:
    """`diffunlearn fast-ntk`: the parsed arguments handed to `runs.fast_ntk.fast_ntk_run`."""
    from ..runs.fast_ntk import fast_ntk_run

    return fast_ntk_run(args.output, args.model, args.forget_classes, args.forget_fraction, args.seed, args.subset,
                        args.loss, args.weight_decay, args.init, args.overwrite)
