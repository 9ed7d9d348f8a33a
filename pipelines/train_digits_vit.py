"""Recipe: train the embedded digits vision transformer and its prompt-tuned sibling (OUTPUT and OUTPUT_prompted).

    python pipelines/train_digits_vit.py --config configs/recipes/digits_vit.yaml --output out/digits_vit \
        [--embed digits/vit] [key=value ...]
"""

from diffunlearn.commands.cli import recipe_main
from diffunlearn.recipes.vit import train_vit_models

if __name__ == "__main__":
    recipe_main("vit", runner=train_vit_models)
