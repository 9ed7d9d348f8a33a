"""`diffunlearn fast-ntk`: Fast-NTK unlearning of the digits classifier from the command line.

`add_fast_ntk_parser(subparsers)` adds the subcommand; `run_fast_ntk_command(args)` runs it: the unlearned
classifier is saved with `save_pretrained` into a hidden sibling folder, with `fast_ntk.json` (options, solver
info, timing, FA / RA / TA / MIA before and after), and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from ..errors import UserError

RESULT_FILE = "fast_ntk.json"


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
    parser.add_argument("--output", required=True, help="folder for the unlearned classifier and fast_ntk.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.set_defaults(handler=run_fast_ntk_command)
    return parser


def _split(train, args, num_classes: int):
    if args.forget_classes is not None:
        bad = [c for c in args.forget_classes if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"--forget-classes {bad} out of range; valid: 0..{num_classes - 1}")
        return train.forget_remain(args.forget_classes)
    if not 0 < args.forget_fraction < 1:
        raise UserError(f"--forget-fraction {args.forget_fraction} is invalid; give a number in (0, 1)")
    from ..benchmarks.scenarios import random_forget_split

    return random_forget_split(train, args.forget_fraction, args.seed)


def run_fast_ntk_command(args) -> dict:
    """Run `diffunlearn fast-ntk`; returns what it writes to `fast_ntk.json`.

    Raises:
        UserError: an existing output without --overwrite, a bad model path, forget target or option; all checked
            before anything is written.
    """
    from ..assets import resolve_model_path
    from ..data import load_digits_splits
    from ..evaluation.classification import classification_report
    from ..models.digits_classifier import DigitsClassifier
    from ..ntk.unlearn import fast_ntk_scrub

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise UserError(f"--output {str(output)!r} exists and is not empty; pass --overwrite to replace it")
    path = resolve_model_path(args.model)
    try:
        model = DigitsClassifier.from_pretrained(path).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot load --model {args.model!r} as a DigitsClassifier folder: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    train, test = load_digits_splits()
    forget, retain = _split(train, args, model.config.num_classes)
    if len(forget) == 0:
        raise UserError(f"the forget set is empty for --forget-classes {args.forget_classes}")
    result = fast_ntk_scrub(model, forget, retain, subset=args.subset, loss=args.loss,
                            weight_decay=args.weight_decay)
    summary = {"model": args.model, "forget_classes": args.forget_classes, "forget_fraction": args.forget_fraction,
               "seed": args.seed, "subset": args.subset, "loss": args.loss, "weight_decay": args.weight_decay,
               "info": result.info, "metrics": {"original": classification_report(model, None, forget, retain, test),
                                                "unlearned": classification_report(result.model, None, forget,
                                                                                   retain, test)}}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    result.model.save_pretrained(partial)
    (partial / RESULT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if output.exists():
        stale = output.parent / f".{output.name}.old{os.getpid()}"
        output.rename(stale)
        partial.rename(output)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    else:
        partial.rename(output)
    return summary
