"""Recipe: train the embedded class-conditional digits DDPM from scratch.

    accelerate launch pipelines/train_digits_ddpm.py --config configs/recipes/digits_ddpm.yaml \
        --output out/digits_ddpm [--embed digits/ddpm] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main

if __name__ == "__main__":
    recipe_main("ddpm")
