"""Recipe: train the classification-unlearning benchmark's base classifier (10 outputs, no reject class) and record
the head init w0 next to it.

    python pipelines/train_digits_classifier_plain.py --config configs/recipes/digits_classifier_plain.yaml \
        --output out/digits_classifier_plain [--embed digits/classifier_plain] [key=value ...]
"""

from diffunlearn.benchmarks.base_model import train_base_classifier
from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("classifier_plain", runner=train_base_classifier)
