"""Recipe: train the embedded SDXL-layout text-to-image digits model (a tiny Stable Diffusion XL) from
scratch.

    accelerate launch pipelines/train_digits_sdxl.py --config configs/recipes/digits_sdxl.yaml \
        --output out/digits_sdxl [--embed digits/sdxl] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("sdxl")
