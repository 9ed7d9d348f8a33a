"""Recipe: train the classification-unlearning benchmark's base classifier (10 outputs, no reject class) and record
the head init w0 next to it.

    python pipelines/train_digits_classifier_plain.py --config configs/recipes/digits_classifier_plain.yaml \
        --output out/digits_classifier_plain [--embed digits/classifier_plain] [key=value ...]
"""

import argparse
import sys

from diffunlearn.cli import parse_args
from diffunlearn.errors import UserError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--embed", default=None, help="also ship it as embedded:NAME inside the package")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_args(parser, argv)
    from diffunlearn.benchmarks.base_model import train_base_classifier

    try:
        entry = train_base_classifier(args.config, args.output, args.overrides, embed_as=args.embed)
    except UserError as exc:
        print(f"diffunlearn: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print({k: v for k, v in entry.items() if k != "recipe"})


if __name__ == "__main__":
    main()
