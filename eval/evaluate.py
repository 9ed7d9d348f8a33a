"""Evaluate one model folder under a run config's forget target and protocol (FA, retained accuracy, FID).

    python eval/evaluate.py --model out/seven --output out/seven_eval.json   # a run folder: its own config
    python eval/evaluate.py configs/digits/ddpm_sfron.yaml --model FOLDER --output FILE   # any other model folder
"""

import sys

from diffunlearn.commands.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
