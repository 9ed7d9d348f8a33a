"""Recipe: train the embedded digits classifier (FA judge and FID feature extractor).

    accelerate launch pipelines/train_digits_classifier.py --config configs/recipes/digits_classifier.yaml \
        --output out/digits_classifier [--embed digits/classifier] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("classifier")
