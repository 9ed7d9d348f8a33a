"""The real model sizes the GPU benchmark builds (random weights from the published configs) and tiny stand-ins.

Each `Spec` names a family's denoiser, its VAE, the conditioning the denoiser sees (class labels, or text-encoder
states of the real shape), the training resolution and batch, and the sampling settings users run. Text encoders
are frozen and the prompts of an unlearning run are a fixed handful, so the benchmark feeds random states of the
encoders' output shape instead of running CLIP / T5 (the library's SD family runs its CLIP every step; the
`library` section measures that path).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...errors import choice_error

# facebook/DiT-XL-2-256, transformer/config.json
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                patch_size=2, sample_size=32, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-5,
                dropout=0.0, upcast_attention=False, norm_num_groups=32)
# CompVis/stable-diffusion-v1-4, unet/config.json
SD14_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32)
# stabilityai/stable-diffusion-3.5-medium, transformer/config.json (MMDiT-X: dual attention in blocks 0-12)
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# the SD / SDXL / DiT VAE layout (8x downsampling); SD3 has 16 latent channels and no quant convs
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=2, norm_num_groups=32, scaling_factor=0.18215)
VAE_SDXL = {**VAE, "scaling_factor": 0.13025}
VAE_SD3 = {**VAE, "latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False,
           "use_post_quant_conv": False}


@dataclass(frozen=True)
class Spec:
    """One benchmarked model.

    text: (sequence length, hidden size) of the text states the denoiser attends to; pooled: size of the pooled
    text vector (SDXL's text_embeds, SD3's pooled projections); None for class-conditional DiT.
    """

    key: str
    name: str
    network_class: str  # diffusers class name
    network: dict
    vae: dict
    pixels: int
    batch: int  # training batch per GPU for the step table
    objective: str  # "epsilon" (DDPM noise prediction) or "flow" (rectified-flow velocity)
    subsets: tuple  # trainable subsets the family has
    sample_steps: int
    guidance: float
    sample_batch: int
    text: tuple = None
    pooled: int = None
    time_ids: int = 0  # SDXL's added time ids (original size, crop, target size)
    forget_alpha: float = 1.0
    extra: dict = field(default_factory=dict)


SPECS = {
    "dit": Spec("dit", "DiT-XL/2 256 px", "DiTTransformer2DModel", DIT_XL_2, VAE, 256, 16, "epsilon",
                ("all", "lora"), 50, 4.0, 32, forget_alpha=1e-3),
    "sd": Spec("sd", "SD v1.4 UNet 512 px", "UNet2DConditionModel", SD14_UNET, VAE, 512, 2, "epsilon",
               ("all", "cross_attention", "lora"), 50, 7.5, 8, text=(77, 768)),
    "sdxl": Spec("sdxl", "SDXL UNet 1024 px", "UNet2DConditionModel", SDXL_UNET, VAE_SDXL, 1024, 2, "epsilon",
                 ("all", "cross_attention", "lora"), 50, 5.0, 4, text=(77, 2048), pooled=1280, time_ids=6),
    "sd3": Spec("sd3", "SD3.5-medium MMDiT 1024 px", "SD3Transformer2DModel", SD35M_TRANSFORMER, VAE_SD3, 1024, 2,
                "flow", ("all", "cross_attention", "lora"), 40, 4.5, 2, text=(333, 4096), pooled=2048),
}
# the same classes and code paths at a size a CPU runs in seconds (for --tiny and the tests)
TINY_VAE = {"block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "norm_num_groups": 4}
TINY = {
    "dit": dict(network={"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 8},
                pixels=16, batch=2, sample_steps=2, sample_batch=2),
    "sd": dict(network={"sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64),
                        "cross_attention_dim": 32, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "norm_num_groups": 8},
               pixels=16, batch=2, text=(8, 32), sample_steps=2, sample_batch=2),
    "sdxl": dict(network={"sample_size": 8, "block_out_channels": (32, 64), "attention_head_dim": (2, 4),
                          "cross_attention_dim": 32, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                          "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                          "transformer_layers_per_block": (1, 1), "addition_time_embed_dim": 8,
                          "projection_class_embeddings_input_dim": 16 + 6 * 8, "norm_num_groups": 8,
                          "layers_per_block": 1},
                 pixels=16, batch=2, text=(8, 32), pooled=16, sample_steps=2, sample_batch=2),
    "sd3": dict(network={"sample_size": 8, "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 2,
                         "joint_attention_dim": 32, "caption_projection_dim": 16, "pooled_projection_dim": 16,
                         "pos_embed_max_size": 8, "dual_attention_layers": (0,)},
                pixels=16, batch=2, text=(8, 32), pooled=16, sample_steps=2, sample_batch=2),
}


def get_spec(key: str, tiny: bool = False) -> Spec:
    if key not in SPECS:
        raise choice_error("benchmark model", key, SPECS)
    spec = SPECS[key]
    if not tiny:
        return spec
    change = dict(TINY[key])
    return replace(spec, name=f"{spec.name.split()[0]} (tiny)", network={**spec.network, **change.pop("network")},
                   vae={**spec.vae, **TINY_VAE}, **change)
