"""A benchmarked model on a device: its denoiser (random weights), frozen VAE, random inputs of the real shapes,
the trainable subset, and the losses of one SFR-on iteration and of one plain fine-tuning step.

Losses follow the library's families: per-sample squared error summed over (C, H, W) of the training target (noise
for the epsilon families; velocity noise - x0 for SD3's rectified flow, x_t = (1 - s) x0 + s noise with s drawn
logit-normal as SD3 trains). DiT's forget step is plain gradient ascent -alpha * mean_i l_i on the noise half of its
learned-sigma output (the reference DiT setup); the text families' forget step maps the prediction under the forget
prompt onto the stop-gradient prediction under the anchor prompt at the same x_t, t (one extra no-grad forward).
"""

from __future__ import annotations

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from ...errors import UserError
from ...models.dit import disable_label_dropout
from ...models.sd import LORA_TARGETS
from ...registry import get_family


def cross_attention_modules(spec, network) -> list:
    """Modules of the `cross_attention` subset as the family itself trains it (its `attention_modules`): the UNets'
    `attn2` (text cross-attention, as ESD-x); SD3's text-token projections of each joint attention."""
    suffixes = get_family(spec.key).attention_modules
    return [m for n, m in network.named_modules() if n.split(".")[-1] in suffixes]


def set_subset(spec, network, subset: str, lora_rank: int = 4) -> list:
    """Make only `subset`'s weights trainable (adding LoRA adapters for `lora`); returns (name, param) pairs."""
    if subset not in spec.subsets:
        raise UserError(f"subset {subset!r} is not benchmarked for {spec.name}; valid: {', '.join(spec.subsets)}")
    network.requires_grad_(subset == "all")
    if subset == "cross_attention":
        for module in cross_attention_modules(spec, network):
            module.requires_grad_(True)
    elif subset == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        if not any(".lora_" in n for n, _ in network.named_parameters()):
            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(LORA_TARGETS)),
                                    network)
        for name, p in network.named_parameters():
            p.requires_grad_(".lora_" in name)
    return [(n, p) for n, p in network.named_parameters() if p.requires_grad]


class Case:
    """One family's models on `device` (created there directly) and its input generator."""

    def __init__(self, spec, device, seed: int = 0):
        self.spec, self.device = spec, torch.device(device)
        with torch.device(self.device):
            torch.manual_seed(seed)
            self.vae = AutoencoderKL(**spec.vae).eval().requires_grad_(False)
            self.network = getattr(diffusers, spec.network_class)(**spec.network).train()
        self.forward_net = self.network  # what the losses call: the network, or a compiled wrapper of it
        if spec.key == "dit":  # as the library's DiT family: no random label dropout inside the network
            disable_label_dropout(self.network)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.latent_channels = spec.vae["latent_channels"]
        self.gen = torch.Generator(self.device).manual_seed(seed)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    # --- inputs -------------------------------------------------------------------------------------------------
    def pixels(self, batch: int) -> torch.Tensor:
        s = self.spec.pixels
        return torch.rand(batch, 3, s, s, generator=self.gen, device=self.device) * 2 - 1

    def condition(self, batch: int) -> dict:
        """Keyword inputs of the denoiser besides x_t and t: class labels, or text states of the real shape."""
        spec, g, d = self.spec, self.gen, self.device
        if spec.text is None:
            return {"class_labels": torch.randint(0, 1000, (batch,), generator=g, device=d)}
        states = torch.randn(batch, *spec.text, generator=g, device=d)
        if spec.key == "sd":
            return {"encoder_hidden_states": states}
        pooled = torch.randn(batch, spec.pooled, generator=g, device=d)
        if spec.key == "sdxl":
            time_ids = torch.tensor([spec.pixels, spec.pixels, 0, 0, spec.pixels, spec.pixels], device=d)
            return {"encoder_hidden_states": states,
                    "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(batch, 1).float()}}
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def batch(self, batch: int) -> dict:
        """Pixels, a forget condition and an anchor / remain condition, drawn once and reused by timed steps."""
        return {"pixels": self.pixels(batch), "cond": self.condition(batch), "anchor": self.condition(batch)}

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled posterior-mean latents of the frozen VAE, as the latent families train."""
        cfg = self.vae.config
        z = self.vae.encode(pixels).latent_dist.mean
        return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def noised(self, pixels, latents=None):
        """(x_t, timestep input, target) for a pixel batch (`latents`: its cached latents, `train.cache_latents`)."""
        x0 = self.latents(pixels) if latents is None else latents
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        if self.spec.objective == "flow":
            sigma = torch.sigmoid(torch.randn(len(x0), generator=self.gen, device=self.device))  # logit-normal
            s = sigma.view(-1, 1, 1, 1)
            return (1 - s) * x0 + s * noise, sigma * 1000, noise - x0
        t = torch.randint(0, 1000, (len(x0),), generator=self.gen, device=self.device)
        return self.scheduler.add_noise(x0, noise, t), t, noise

    def predict(self, x_t, t, cond: dict) -> torch.Tensor:
        net = self.forward_net
        if self.spec.key == "sd3":
            return net(hidden_states=x_t, timestep=t, **cond).sample
        if self.spec.key == "dit":
            return net(x_t, timestep=t, **cond).sample[:, :self.latent_channels]
        return net(x_t, t, **cond).sample

    # --- losses -------------------------------------------------------------------------------------------------
    def task_loss(self, batch: dict, key: str = "anchor") -> torch.Tensor:
        """Mean per-sample denoising loss (the remain step, and the fine-tuning step)."""
        x_t, t, target = self.noised(batch["pixels"], batch.get("latents"))
        return per_sample(self.predict(x_t, t, batch[key]), target).mean()

    def forget_loss(self, batch: dict) -> torch.Tensor:
        x_t, t, target = self.noised(batch["pixels"], batch.get("latents"))
        if self.spec.text is None:  # class forgetting: gradient ascent
            return -self.spec.forget_alpha * per_sample(self.predict(x_t, t, batch["cond"]), target).mean()
        with torch.no_grad():
            anchored = self.predict(x_t, t, batch["anchor"])
        return self.spec.forget_alpha * per_sample(self.predict(x_t, t, batch["cond"]), anchored).mean()


def per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).sum(1)
