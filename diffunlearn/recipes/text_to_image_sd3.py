"""Recipe of the embedded SD3-layout text-to-image model (`embedded:digits/sd3`): a tiny Stable Diffusion 3 (MMDiT
transformer, two CLIP text encoders with projections, no T5) trained from scratch by flow matching on the captioned
digits of the SD recipe, in the latent space of the embedded digits VAE. Transformer and text encoders train
jointly; the text encoders are frozen afterwards (unlearning never changes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from ..registry import RecipeKind, register_recipe
from ..config import check_positive
from ..models.latent import tiny_vae_config
from ..models.sd3 import StableDiffusion3
from ..models.text import build_tokenizer, tiny_text_encoder_config
from .text_to_image import TextToImageRecipe, caption_vocabulary, text_to_image_quality, train_joint

__all__ = ["SD3Recipe", "build_sd3", "text_to_image_quality", "tiny_clip_with_projection", "train_sd3"]


@dataclass
class SD3Recipe(TextToImageRecipe):
    """The SD recipe's captions, data and schedule; an MMDiT instead of the UNet (`channels`, `layers_per_block`,
    `norm_num_groups`, `beta_schedule`, `prediction_type`, `clip_sample` are not used by this layout)."""

    layers: int = 4  # joint transformer blocks
    head_dim: int = 16  # attention_head_dim; inner width = heads x head_dim
    patch_size: int = 1  # 4 x 4 latents -> 16 image tokens
    shift: float = 1.0  # FlowMatchEulerDiscreteScheduler shift (SD3 uses 3.0 at 1024 px; none at 4 x 4 latents)
    projection_dim: int = 32  # each CLIP's pooled projection

    def __post_init__(self):
        super().__post_init__()
        check_positive("recipe", layers=self.layers, head_dim=self.head_dim, patch_size=self.patch_size,
                       shift=self.shift, projection_dim=self.projection_dim)


def tiny_clip_with_projection(tokenizer, hidden_size: int, num_layers: int, num_heads: int, projection_dim: int):
    """A randomly initialised `CLIPTextModelWithProjection` matching `tokenizer` (SD3's text encoder class)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = tiny_text_encoder_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                                      intermediate_size=2 * hidden_size)
    return CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=projection_dim))


def build_sd3(recipe: SD3Recipe, vae=None) -> StableDiffusion3:
    """A randomly initialised SD3-layout model (transformer, two CLIP encoders sharing one tokenizer vocabulary)
    on the recipe's VAE (or `vae`)."""
    from ..assets import resolve_model_path

    if vae is None:
        vae = (AutoencoderKL(**tiny_vae_config()) if recipe.vae == "random" else
               AutoencoderKL.from_pretrained(resolve_model_path(recipe.vae), use_safetensors=True))
    if getattr(vae.config, "shift_factor", None) is None:  # StableDiffusion3Pipeline decodes with it
        vae.register_to_config(shift_factor=0.0)
    tokenizer = build_tokenizer(caption_vocabulary(), model_max_length=recipe.max_length)
    encoders = [tiny_clip_with_projection(tokenizer, recipe.text_hidden_size, recipe.text_layers, recipe.text_heads,
                                          recipe.projection_dim) for _ in range(2)]
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=recipe.patch_size, in_channels=vae.config.latent_channels,
        num_layers=recipe.layers, attention_head_dim=recipe.head_dim, num_attention_heads=recipe.heads,
        joint_attention_dim=2 * recipe.text_hidden_size, caption_projection_dim=recipe.heads * recipe.head_dim,
        pooled_projection_dim=2 * recipe.projection_dim, out_channels=vae.config.latent_channels,
        pos_embed_max_size=latent_size // recipe.patch_size)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=recipe.num_train_timesteps, shift=recipe.shift)
    return StableDiffusion3(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae.eval().requires_grad_(False), text_encoder=encoders[0],
        tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None))


def train_sd3(recipe: SD3Recipe, train_set=None, progress: bool = True) -> StableDiffusion3:
    """Train the tiny SD3 by flow matching (`train_joint`)."""
    return train_joint(build_sd3, recipe, train_set, "train sd3", progress)


register_recipe(RecipeKind("sd3", SD3Recipe, train_sd3, text_to_image_quality))
