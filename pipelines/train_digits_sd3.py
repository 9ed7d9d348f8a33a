"""Recipe: train the embedded SD3-layout text-to-image digits model (a tiny Stable Diffusion 3, flow matching) from
scratch.

    accelerate launch pipelines/train_digits_sd3.py --config configs/recipes/digits_sd3.yaml \
        --output out/digits_sd3 [--embed digits/sd3] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("sd3")
