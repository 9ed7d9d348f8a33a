"""Recipe of the embedded SDXL-layout text-to-image model (`embedded:digits/sdxl`): a tiny Stable Diffusion XL (a
`UNet2DConditionModel` with text-time added conditioning, `CLIPTextModel` + `CLIPTextModelWithProjection` sharing
one tokenizer vocabulary) trained from scratch on the captioned digits of the SD recipe, in the latent space of the
embedded digits VAE, with the SD recipe's noise schedule and epsilon loss (`train_joint`).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from ..registry import RecipeKind, register_recipe
from ..config import check_positive
from ..models.latent import tiny_vae_config
from ..models.sd import tiny_sd_unet_config
from ..models.sdxl import StableDiffusionXL
from ..models.text import build_tokenizer, tiny_text_encoder
from .text_to_image import TextToImageRecipe, caption_vocabulary, text_to_image_quality, train_joint
from .text_to_image_sd3 import tiny_clip_with_projection

__all__ = ["SDXLRecipe", "build_sdxl", "text_to_image_quality", "train_sdxl"]
TIME_IDS = 6  # original size, crop corner, target size


@dataclass
class SDXLRecipe(TextToImageRecipe):
    """The SD recipe with SDXL's second text encoder and added conditioning."""

    projection_dim: int = 32  # text_encoder_2's pooled projection (the UNet's text_embeds)
    addition_time_embed_dim: int = 8  # per time id

    def __post_init__(self):
        super().__post_init__()
        check_positive("recipe", projection_dim=self.projection_dim,
                       addition_time_embed_dim=self.addition_time_embed_dim)


def build_sdxl(recipe: SDXLRecipe) -> StableDiffusionXL:
    """A randomly initialised SDXL-layout model on the recipe's VAE."""
    from ..assets import resolve_model_path

    vae = (AutoencoderKL(**tiny_vae_config()) if recipe.vae == "random" else
           AutoencoderKL.from_pretrained(resolve_model_path(recipe.vae), use_safetensors=True))
    tokenizer = build_tokenizer(caption_vocabulary(), model_max_length=recipe.max_length)
    encoder = tiny_text_encoder(tokenizer, hidden_size=recipe.text_hidden_size, num_layers=recipe.text_layers,
                                num_heads=recipe.text_heads, intermediate_size=2 * recipe.text_hidden_size)
    encoder_2 = tiny_clip_with_projection(tokenizer, recipe.text_hidden_size, recipe.text_layers, recipe.text_heads,
                                          recipe.projection_dim)
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet_config = tiny_sd_unet_config(sample_size=latent_size, in_channels=vae.config.latent_channels,
                                      channels=recipe.channels, layers_per_block=recipe.layers_per_block,
                                      cross_attention_dim=2 * recipe.text_hidden_size, heads=recipe.heads,
                                      norm_num_groups=recipe.norm_num_groups)
    unet = UNet2DConditionModel(**unet_config, addition_embed_type="text_time",
                                addition_time_embed_dim=recipe.addition_time_embed_dim,
                                projection_class_embeddings_input_dim=recipe.projection_dim
                                + TIME_IDS * recipe.addition_time_embed_dim)
    scheduler = DDPMScheduler(num_train_timesteps=recipe.num_train_timesteps, beta_schedule=recipe.beta_schedule,
                              prediction_type=recipe.prediction_type, clip_sample=recipe.clip_sample, steps_offset=1)
    return StableDiffusionXL(StableDiffusionXLPipeline(
        vae=vae.eval().requires_grad_(False), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=False,
        add_watermarker=False))


def train_sdxl(recipe: SDXLRecipe, train_set=None, progress: bool = True) -> StableDiffusionXL:
    """Train the tiny SDXL (`train_joint`)."""
    return train_joint(build_sdxl, recipe, train_set, "train sdxl", progress)


register_recipe(RecipeKind("sdxl", SDXLRecipe, train_sdxl, text_to_image_quality))
