"""Recipe: train the embedded class-conditional digits DiT on the latents of `embedded:digits/vae` from scratch.

    accelerate launch pipelines/train_digits_dit.py --config configs/recipes/digits_dit.yaml \
        --output out/digits_dit [--embed digits/dit] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("dit")
