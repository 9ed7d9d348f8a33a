"""Evaluate one model folder under a run config's forget target and protocol (FA, retained accuracy, FID).

    python eval/evaluate.py configs/digits/ddpm_sfron.yaml --model out/seven/pipeline --output out/seven_eval.json
"""

import sys

from diffunlearn.commands.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
