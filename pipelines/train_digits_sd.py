"""Recipe: train the embedded text-to-image digits model (a tiny Stable Diffusion) from scratch.

    accelerate launch pipelines/train_digits_sd.py --config configs/recipes/digits_sd.yaml \
        --output out/digits_sd [--embed digits/sd] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("sd")
