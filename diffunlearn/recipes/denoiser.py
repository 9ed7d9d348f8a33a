"""What every denoiser recipe shares: its settings, the seeded training loop with EMA, and the sample accuracy check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel

from ..data import StepSampler, load_digits_splits
from ..models.digits_classifier import DigitsClassifier
from ..training.fit import fit


@dataclass
class DenoiserRecipe:
    """What every denoiser recipe (DDPM, DiT, text-to-image) has: the `fit_denoiser` loop's settings, the noise
    scheduler and the data split. A family's recipe adds its architecture and may change these defaults."""

    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    cond_drop: float = 0.1
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = False  # x0 clipping in DDIM sampling breaks classifier-free guidance (eps is not re-derived)
    exclude_classes: List[int] = field(default_factory=list)  # RT: leave these classes out of the training data
    split_seed: int = 0
    seed: int = 0
    mixed_precision: str = "no"

    def start(self, train_set=None) -> tuple:
        """(Accelerator, training set) of a seeded run: `train_set`, or the digits train split, minus
        `exclude_classes`."""
        accelerator = Accelerator(mixed_precision=self.mixed_precision)
        set_seed(self.seed)
        if train_set is None:
            train_set, _ = load_digits_splits(self.split_seed)
        if self.exclude_classes:
            train_set = train_set.select_classes(self.exclude_classes, keep=False)
        return accelerator, train_set


def fit_denoiser(model, recipe, train_set, accelerator, optimizer, lr_schedule, desc: str,
                 progress: bool = True, encoder=None, encode=None) -> None:
    """Train `model.network` from scratch on its per-sample denoising loss with an EMA; leaves the EMA weights.

    Seeded per step (`recipe.seed`), antithetic timesteps, random draws made for the global batch and sliced per
    process. Shared by the DDPM, DiT and text-to-image recipes. Without an `encoder` the batch's class labels
    condition the network, dropped with probability `recipe.cond_drop`; with one (a text encoder trained jointly:
    its parameters are in `optimizer` and the EMA), `encode(prepared encoder, batch, step)` gives the conditioning.
    """
    modules = [model.network] + ([encoder] if encoder is not None else [])
    *prepared, optimizer, lr_schedule = accelerator.prepare(*modules, optimizer, lr_schedule)
    model.forward_module = prepared[0]
    params = [p for m in modules for p in m.parameters()]
    ema = EMAModel(params, decay=recipe.ema_decay)
    sampler = StepSampler(train_set, recipe.batch_size, recipe.seed, accelerator.process_index,
                          accelerator.num_processes)
    model.network.train()

    def loss_fn(step):
        gen = torch.Generator(accelerator.device).manual_seed(recipe.seed * 7919 + step)
        batch = sampler.batch(step, accelerator.device)
        condition = {"cond_drop": recipe.cond_drop} if encoder is None else {"cond": encode(prepared[1], batch, step)}
        loss = model.training_losses(batch, generator=gen, antithetic=True, **condition,
                                     shard=(accelerator.process_index, accelerator.num_processes)).mean()
        return loss, loss

    fit(accelerator, optimizer, lr_schedule, recipe.steps, loss_fn, desc, progress, ema=ema, ema_params=params)
    ema.copy_to(params)
    model.network.eval()
    model.forward_module = None


def sample_accuracy(model, classifier: str = "embedded:digits/classifier", per_class: int = 50) -> dict:
    """Share of samples per class (DDIM 25 steps, guidance 2) that the embedded classifier assigns to their class."""
    from ..assets import resolve_model_path
    from ..config import EvalConfig
    from ..data.generated import generate, labels_and_seeds
    from ..evaluation.metrics import classify, per_class_accuracy

    judge = DigitsClassifier.from_pretrained(resolve_model_path(classifier), use_safetensors=True).eval()
    labels, seeds = labels_and_seeds(range(model.num_classes), per_class, eval_seed=0)
    eval_cfg = EvalConfig(num_inference_steps=25, guidance_scale=2.0)
    accs = per_class_accuracy(classify(judge, generate(model, labels, seeds, eval_cfg)), labels)
    return {"protocol": f"{per_class} samples/class, ddim 25 steps, guidance 2.0, seeds 100000*c+j, judged by "
                        f"{classifier}", "mean": sum(accs.values()) / len(accs), "per_class": accs}
