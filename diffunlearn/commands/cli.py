"""Command line: `diffunlearn unlearn CONFIG --output DIR [key=value ...]` and friends.

Every user error prints one line `diffunlearn: error: ...` and exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import NonFiniteLossError, UserError

USAGE_EXIT = 2  # bad input: nothing was written
RUNTIME_EXIT = 3  # the run itself failed (e.g. a non-finite loss); the last good checkpoint is kept
OPTIONAL_CONFIG = ("evaluate", "attack")  # a run folder given as --model brings its own config


def _fail(message: str) -> None:
    print(f"diffunlearn: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def call(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` for a script of eval/ or pipelines/: a `UserError` becomes the one-line error and
    exit code 2, as in `main`."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        _fail(str(exc))


def summary(report: dict, output: str) -> str:
    """A few lines for the terminal: what was forgotten, the metrics before and after, where the outputs are."""
    if "forget_prompts" in report:
        what = f"prompts {report['forget_prompts']} (mapped onto {report['anchors']})"
    else:
        what = f"classes {report.get('forget_classes')}"
    from ..evaluation.report import base_reuse_line, metric_rows, signals_line, stop_line

    lines = [f"{report.get('method')} forgot {what} -> {output} (a diffusers pipeline folder)"]
    if "unlearned" in report:
        lines.append(f"{'':20s}{'base':>10s}{'unlearned':>12s}   unlearned 95% CI (Wilson)")
        for key, label in metric_rows(report["base"], report["unlearned"], report["protocol"]):
            ci = report["unlearned"].get(f"{key}_ci95")
            lines.append(f"{key:20s}{report['base'][key]:10.4f}{report['unlearned'][key]:12.4f}"
                         + (f"   [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"   ({label})"))
        lines.append(f"report: {output}/report.json   gallery: {output}/gallery/index.html")

    signals = signals_line(report.get("signals") or {})
    if signals:
        lines.append(signals)
    if "config" in report:
        lines.append(stop_line(report.get("stop"), report["config"]["train"]["steps"]))
    reuse = base_reuse_line(report)
    if reuse:
        lines.append(reuse)
    timing = report.get("timing", {})
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timing.items() if v is not None))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffunlearn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    unlearn = commands.add_parser("unlearn", help="unlearn, evaluate base and unlearned, write report and gallery")
    unlearn.add_argument("config", help="YAML run config, e.g. configs/digits/ddpm_sfron.yaml")
    unlearn.add_argument("--output", required=True, help="output folder (must not hold a run, unless --overwrite)")
    unlearn.add_argument("--overwrite", action="store_true", help="replace a finished run in --output")
    unlearn.add_argument("--no-eval", action="store_true", help="skip evaluation and gallery (unlearn only)")
    unlearn.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")

    evaluate = commands.add_parser("evaluate", help="evaluate a model folder under a run's protocol")
    evaluate.add_argument("config", nargs="?", default=None,
                          help="YAML run config giving the forget target and the protocol (optional for a run "
                               "folder, which brings its own; if given, it must name the run's target)")
    evaluate.add_argument("--model", required=True, help="run folder, diffusers folder or embedded:NAME to evaluate")
    evaluate.add_argument("--output", required=True, help="JSON file for the metrics")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value")

    from .attack import add_attack_parser
    from .fast_ntk import add_fast_ntk_parser

    add_fast_ntk_parser(commands)
    add_attack_parser(commands)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv):
    """Parse options anywhere on the line; the remaining `key=value` words are config overrides."""
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    bad = [word for word in extra if word.startswith("-") or "=" not in word or not takes_overrides]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are key=value)")
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
        if getattr(args, "command", None) in OPTIONAL_CONFIG and args.config is not None and "=" in args.config \
                and not Path(args.config).exists():  # CONFIG left out: the first word was an override
            args.overrides, args.config = [args.config] + args.overrides, None
    return args


def main(argv=None) -> None:
    args = parse_args(build_parser(), argv)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars; our own tqdm bars stay
    transformers_logging.disable_progress_bar()  # "Loading weights" of text encoders and judges
    try:
        if args.command == "unlearn":
            from ..runs.unlearn import unlearn_run

            report = unlearn_run(args.config, args.output, args.overrides, overwrite=args.overwrite,
                                 evaluate=not args.no_eval)
            if report:  # other processes of a launch return {}: the main one reports
                print(summary(report, args.output))
        elif args.command == "evaluate":
            from ..runs.evaluate import evaluate_model_command

            evaluate_model_command(args.config, args.model, args.output, args.overrides, overwrite=args.overwrite)
        elif hasattr(args, "handler"):
            args.handler(args)
    except UserError as exc:
        _fail(str(exc))
    except NonFiniteLossError as exc:
        print(f"diffunlearn: error: {exc}", file=sys.stderr)
        sys.exit(RUNTIME_EXIT)


def recipe_main(kind: str, argv=None, runner=None) -> None:
    """Entry point of the `pipelines/train_digits_*.py` recipes; `runner(config, output, overrides, embed_as=...)`
    replaces `run_recipe` for recipes that save more than the model (e.g. a recorded head init)."""
    parser = argparse.ArgumentParser(description=f"train the embedded digits {kind} from a recipe")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--embed", default=None, help="also ship it as embedded:NAME inside the package")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_args(parser, argv)
    try:
        if runner is None:
            from ..recipes import run_recipe

            entry = run_recipe(kind, args.config, args.output, args.overrides, embed_as=args.embed)
        else:
            entry = runner(args.config, args.output, args.overrides, embed_as=args.embed)
    except UserError as exc:
        _fail(str(exc))
    print({k: v for k, v in entry.items() if k != "recipe"})
