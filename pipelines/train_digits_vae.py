"""Recipe: train the embedded digits VAE (`AutoencoderKL`, 8x8 images -> 4x4x4 latents) from scratch.

    accelerate launch pipelines/train_digits_vae.py --config configs/recipes/digits_vae.yaml \
        --output out/digits_vae [--embed digits/vae] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("vae")
