"""Accelerate-launchable unlearning job (same arguments as `diffunlearn unlearn`).

    accelerate launch pipelines/unlearn.py configs/digits/ddpm_sfron.yaml --output out/seven forget.classes=[7]
"""

import sys

from diffunlearn.commands.cli import main

if __name__ == "__main__":
    main(["unlearn", *sys.argv[1:]])
