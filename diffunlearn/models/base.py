"""What every model family provides to the methods, the trainer and the evaluation.

A family wraps one diffusers pipeline. It knows how to turn a batch into per-sample training losses (honouring the
scheduler's `prediction_type`), how to condition (class label or prompt, and the null condition used for
classifier-free guidance and condition dropout), how to sample, and how to save and load itself as a standard
diffusers folder. Methods only see `training_losses`, `trainable_parameters` and `network`.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ..distributed import global_draw
from ..errors import UserError, choice_error


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance, diffusers convention: scale 0 is unconditional, 1 is conditional."""
    return uncond + guidance_scale * (cond - uncond)


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error (B,) summed over every other dimension, in float32 (the training loss's form)."""
    return (pred.float() - target.float()).pow(2).flatten(1).sum(1)


def sampling_scheduler(config, sampler: str):
    """A DDIM or DDPM scheduler with the noise schedule of `config` (the model's training scheduler)."""
    classes = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    if sampler not in classes:
        raise choice_error("sampler", sampler, classes)
    return classes[sampler].from_config(config)


def class_guided_loop(scheduler, x: torch.Tensor, predict_eps, labels: torch.Tensor, null: torch.Tensor,
                      guidance_scale: float, step_kwargs: dict, timesteps=None) -> torch.Tensor:
    """The denoising loop of the class-conditional families (DDPM, DiT): x (B, C, H, W) from noise to x_0; the
    completion probe runs it for every family from a partly noised x.

    `predict_eps(x_in, t, condition)` is the network's prediction (C channels) for a batch of conditions (class ids,
    or prompt embeddings). Scale 1 runs the conditional pass only, 0 the unconditional (null) pass only, any other
    scale both in one batch, combined by `cfg_combine`. `timesteps`: an iterable over (a tail of)
    `scheduler.timesteps` (e.g. wrapped in a progress bar)."""
    for t in scheduler.timesteps if timesteps is None else timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if guidance_scale in (0.0, 1.0):
            eps = predict_eps(x_in, t, labels if guidance_scale == 1.0 else null)
        else:
            both = predict_eps(torch.cat([x_in, x_in]), t, torch.cat([labels, null]))
            eps = cfg_combine(*both.chunk(2), guidance_scale)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


# conditioning kind -> what a family of that kind provides beyond the base class (the forget target it takes:
# "class" forgets `forget.classes`, "text" maps `forget.prompts` onto `forget.anchors`)
CONDITIONINGS = {"class": ("num_classes",), "text": ("tokenize", "anchor_condition", "token_embedding_table",
                                                     "special_token_ids", "encode_token_embeddings")}


class TrainableModel:
    """What the trainer needs of every model family (diffusion or classifier): the network, the module to call while
    training, its device, and which weights unlearning may change."""

    family: ClassVar[str]
    trainable_subsets: ClassVar[tuple] = ("all",)  # what `model.subset` may name for this family
    load_hint: ClassVar[str] = ""  # how a user loads the saved folder, for the model card
    forward_module = None  # set by the trainer to the accelerate-prepared network while it trains

    @property
    def network(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def module(self):
        """The network to call in training: the accelerate-prepared (DDP / FSDP / compiled) one while training,
        else the plain network (never `forward_module or network`: a compiled module refuses truth tests)."""
        return self.forward_module if self.forward_module is not None else self.network

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def set_trainable(self, subset: str = "all", lora_rank: int = 4) -> None:
        """Choose which weights unlearning may change (`model.subset`); families with more subsets override."""
        if subset not in self.trainable_subsets:
            raise choice_error(f"model.subset for the {self.family} family", subset, self.trainable_subsets)

    def trainable_parameters(self):
        """(name, parameter) pairs that unlearning may change."""
        return [(n, p) for n, p in self.network.named_parameters() if p.requires_grad]


class DiffusionModel(TrainableModel):
    """Base of the model-family wrappers.

    Subclasses set `family`, `pipeline_class` and `conditioning`, implement `network`, `predict`, `condition`,
    `null_condition`, `drop_condition` and `sample` (and what their conditioning kind needs, `CONDITIONINGS`), and
    override `encode` when they work in a latent space. `register_family` checks all of it (`check_contract`).
    """

    pipeline_class: ClassVar[type]
    conditioning: ClassVar[str]  # a key of CONDITIONINGS
    # the run configs (under configs/) the Python API starts from: for an embedded model, for any other checkpoint
    presets: ClassVar[dict] = {}
    default_sampler: ClassVar[str] = "ddim"  # what the recipes' quality checks sample with
    REQUIRED: ClassVar[tuple] = ("network", "predict", "condition", "null_condition", "drop_condition", "sample")

    @classmethod
    def check_contract(cls) -> None:
        """Refuse (TypeError) a family class that lacks a name, a known conditioning kind, or an override of what
        the trainer, the methods and the evaluation call."""
        unnamed = [n for n in ("family", "pipeline_class", "conditioning") if not hasattr(cls, n)]
        unnamed += [] if {"embedded", "checkpoint"} <= set(cls.presets) else ["presets (embedded, checkpoint)"]
        if unnamed:
            raise TypeError(f"model family {cls.__name__} does not set {', '.join(unnamed)}")
        if cls.conditioning not in CONDITIONINGS:
            raise TypeError(f"model family {cls.family!r}: conditioning {cls.conditioning!r} is not one of "
                            f"{', '.join(CONDITIONINGS)}")
        needed = cls.REQUIRED + CONDITIONINGS[cls.conditioning]
        missing = [n for n in needed if getattr(cls, n, None) is getattr(DiffusionModel, n, None)]
        if missing:
            raise TypeError(f"model family {cls.family!r} ({cls.conditioning} conditioning) does not implement "
                            f"{', '.join(missing)}")

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

    # --- loading and saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "DiffusionModel":
        return cls(cls.pipeline_class.from_pretrained(path, use_safetensors=True, **kwargs))

    def save_pretrained(self, path) -> None:
        self.pipeline.save_pretrained(path, safe_serialization=True)

    def to(self, device) -> "DiffusionModel":
        self.pipeline.to(device)
        return self

    # --- what the methods use -----------------------------------------------------------------------------------
    def image_shape(self) -> tuple:
        """(C, H, W) of the images `sample` returns (pixel space: through the VAE for latent families)."""
        cfg, vae = self.network.config, getattr(self.pipeline, "vae", None)
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        if vae is None:
            return (cfg.in_channels, size, size)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        return (vae.config.out_channels, size * scale, size * scale)

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] to the space the network works in (identity for pixel-space models)."""
        return pixel_values

    def class_embeddings(self) -> list:
        """The class-embedding tables of the network (`nn.Embedding` modules named `class...`: DDPM's
        `class_embedding`, each DiT block's label embedder); empty for text-conditioned families."""
        return [m for name, m in self.network.named_modules() if isinstance(m, torch.nn.Embedding) and "class" in name]

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from the network's space (pixel-space models: x in [-1, 1])."""
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def condition(self, batch: dict):
        """The conditioning of a batch (class labels, prompt embeddings...)."""
        raise NotImplementedError

    def null_condition(self, cond):
        """The unconditional counterpart of `cond` (null class, empty prompt), same batch size."""
        raise NotImplementedError

    def drop_condition(self, cond, keep: torch.Tensor):
        """Replace the condition of samples where `keep` (B,) is False by the null condition."""
        raise NotImplementedError

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """Denoiser output of the training target's shape, x_t: (B, C, H, W), t: (B,)."""
        raise NotImplementedError

    def check_sampler(self, sampler: str) -> None:
        """Refuse (one line) an `eval.sampler` this family cannot sample with (DDPM schedules: ddim, ddpm)."""
        if sampler not in ("ddim", "ddpm"):
            raise UserError(f"eval.sampler {sampler!r} is not supported by the {self.family} family; valid: ddim, "
                            "ddpm")

    def sample_timesteps(self, batch_size: int, generator, antithetic: bool = False) -> torch.Tensor:
        n = self.noise_scheduler.config.num_train_timesteps
        if not antithetic:
            return torch.randint(0, n, (batch_size,), generator=generator, device=self.device)
        half = torch.randint(0, n, ((batch_size + 1) // 2,), generator=generator, device=self.device)
        return torch.cat([half, n - 1 - half])[:batch_size]

    def training_target(self, x0, noise, t):
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t)
        if kind == "sample":
            return x0
        raise choice_error("prediction_type", kind, ("epsilon", "v_prediction", "sample"))

    def noised(self, batch: dict, generator, antithetic: bool, shard: tuple, timesteps=None):
        """(x0, noise, t, x_t) for a batch; draws are made for the global batch and sliced (see `shard`);
        `timesteps` (B,), if given, replace the drawn t."""
        cached = batch.get("latents")  # `train.cache_latents`: encoded once (training/latent_cache.py)
        x0 = cached.to(self.device) if cached is not None else self.encode(batch["pixel_values"].to(self.device))
        local = x0.shape[0]
        t = (global_draw(lambda n: self.sample_timesteps(n, generator, antithetic), local, shard)
             if timesteps is None else timesteps.to(self.device, torch.long))
        noise = global_draw(lambda n: torch.randn((n, *x0.shape[1:]), generator=generator, device=self.device,
                                                  dtype=x0.dtype), local, shard)
        return x0, noise, t, self.add_noise(x0, noise, t)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t of x0 at integer timesteps t (B,): the training scheduler's forward process."""
        return self.noise_scheduler.add_noise(x0, noise, t)

    def training_losses(self, batch: dict, generator: Optional[torch.Generator] = None, cond_drop: float = 0.0,
                        guidance_scale: Optional[float] = None, antithetic: bool = False,
                        cond=None, shard: tuple = (0, 1), timesteps=None) -> torch.Tensor:
        """Per-sample denoising losses, (B,): squared error summed over (C, H, W).

        Args:
            batch: a batch with "pixel_values" (B, C, H, W) in [-1, 1] and the family's condition keys.
            generator: source of timesteps, noise and condition dropout.
            cond_drop: probability of replacing a sample's condition by the null condition.
            guidance_scale: if given, the prediction is the classifier-free-guided one (two passes).
            antithetic: pair timesteps t and T-1-t.
            cond: a condition to use instead of the batch's (e.g. an anchor prompt's).
            shard: (index, count) when the batch is rows index::count of a global batch split over processes:
                random draws are made for the global batch and sliced, so every sample gets the same timestep
                and noise whatever the number of processes.
            timesteps: (B,) diffusion timesteps to use instead of drawn ones.
        """
        cond = self.condition(batch) if cond is None else cond
        if cond_drop > 0:
            keep = global_draw(lambda n: torch.rand(n, generator=generator, device=self.device),
                               batch["pixel_values"].shape[0], shard) >= cond_drop
            cond = self.drop_condition(cond, keep)
        x0, noise, t, x_t = self.noised(batch, generator, antithetic, shard, timesteps)
        if guidance_scale is None:
            pred = self.predict(x_t, t, cond)
        else:
            pred = cfg_combine(self.predict(x_t, t, cond), self.predict(x_t, t, self.null_condition(cond)),
                               guidance_scale)
        target = self.training_target(x0, noise, t)
        return squared_error(pred, target)

    def anchored_losses(self, batch: dict, generator: Optional[torch.Generator] = None, antithetic: bool = False,
                        shard: tuple = (0, 1), anchor=None, mean: bool = False, cond=None) -> torch.Tensor:
        """Concept forgetting: ||pred(x_t, c_forget) - stopgrad pred(x_t, c_anchor)||^2 per sample, (B,).

        The forget condition is `cond` if given (an attacked condition), else the batch's own (`condition`); the
        anchor is `anchor` if given (e.g. SalUn's pseudo labels), else `anchor_condition(batch)`; both see the same
        x_t and t. Summed over the prediction's elements, or averaged with `mean`.
        """
        _, _, t, x_t = self.noised(batch, generator, antithetic, shard)
        with torch.no_grad():
            target = self.predict(x_t, t, self.anchor_condition(batch) if anchor is None else anchor)
        pred = self.predict(x_t, t, self.condition(batch) if cond is None else cond)
        squared = (pred.float() - target.float()).pow(2).flatten(1)
        return squared.mean(1) if mean else squared.sum(1)

    def anchor_condition(self, batch: dict):
        """The anchor concept's condition for each sample of a forget batch (concept families only)."""
        raise NotImplementedError(f"the {self.family} family has no anchor prompts (class forgetting only)")

    def sample(self, labels: torch.Tensor, generator, num_inference_steps: int, guidance_scale: float,
               sampler: str = "ddim") -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] for the given conditions."""
        raise NotImplementedError
