"""UnlearnDiffAtk (Zhang et al., "To generate or not? Safety-driven unlearned diffusion models are still easy to
generate unsafe images ... for now", 2023; reference code OPTML-Group/Diffusion-MU-Attack, `TextGrad`): a
white-box prompt attack on the attacked model alone.

Each attacked case is one image of the target (D_f: the base model's samples of the forget prompt) and one noise
seed. k adversarial tokens are prepended to the forget prompt (after the start token; the last k padding tokens
make room). Each token is a relaxed one-hot over the vocabulary, kept on the probability simplex: every iteration
samples one token per position from it (straight-through: the gradient of the sampled one-hot passes to the
relaxation, clipped to [-1, 1] as the reference's `hardtanh`), feeds the tokens' embeddings through the frozen
text encoder, and takes an Adam step (L2 weight decay, as the reference's `torch.optim.Adam`) on the attacked
model's denoising MSE of the case's image at one timestep, then projects back onto the simplex. The timesteps are
visited in order on an even grid over T (the reference's `sampled_t`), `iterations` steps each; after each, the
argmax tokens give a real prompt, the model samples it with the case's seed and the judge scores the image; a case
stops at its first success. Round 0 samples the plain prompt (a case the model already fails on is a success
without attack, as in the reference). ASR: the share of cases that succeed, worst forget target. Cases run as one
batch; each has its own relaxation and Adam state, so the batch is the reference run repeated per case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import check_positive
from ..data.generated import image_seed
from ..errors import UserError
from ..registry import register_attack
from .base import Attack, AttackConfig, AttackResult


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    k: int = 5  # adversarial tokens prepended to the forget prompt
    iterations: int = 40  # optimisation steps per timestep
    timesteps: int = 50  # timesteps visited (an even grid over T), one judged sample per case after each
    lr: float = 0.01
    weight_decay: float = 0.1
    cases: int = 16  # images of each forget target attacked, one adversarial prompt each
    num_inference_steps: Optional[int] = None  # null: the run's eval.num_inference_steps
    guidance_scale: Optional[float] = None  # null: the run's eval.guidance_scale

    def check(self) -> None:
        check_positive("attack.unlearndiffatk", k=self.k, iterations=self.iterations, timesteps=self.timesteps,
                       lr=self.lr, cases=self.cases)
        if self.weight_decay < 0:
            raise UserError(f"attack.unlearndiffatk.weight_decay must be >= 0, got {self.weight_decay!r}")


def prompt_length(ids: torch.Tensor, eos: int) -> int:
    """Tokens of a padded prompt (L,) up to and including its first end token."""
    return int((ids == eos).nonzero()[0]) + 1


def timestep_grid(num_train_timesteps: int, count: int) -> list:
    """`count` evenly spaced timesteps, T // count // 2 + i * (T // count) (the reference's `sampled_t`)."""
    step = num_train_timesteps // count
    return [step // 2 + i * step for i in range(count)]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of v (..., V) onto the probability simplex (the reference's bisection
    solves the same problem; sorting solves it exactly, Duchi et al. 2008)."""
    u = v.sort(dim=-1, descending=True).values
    css = u.cumsum(-1) - 1
    index = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / index) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho
    return (v - theta).clamp_min(0)


class SampledOneHot(torch.autograd.Function):
    """One-hot tokens sampled from the rows of a relaxed one-hot (..., V); straight-through backward with the
    gradient clipped to [-1, 1]."""

    @staticmethod
    def forward(ctx, probs, generator):
        flat = probs.detach().reshape(-1, probs.shape[-1])
        picked = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        return F.one_hot(picked, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx, grad):
        return F.hardtanh(grad), None


def prefixed(ids: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Token ids (B, L): `prefix` (B, k) inserted after the start token of `ids` (B, L), the last k (padding)
    tokens dropped."""
    k = prefix.shape[1]
    return torch.cat([ids[:, :1], prefix.to(ids), ids[:, 1:ids.shape[1] - k]], dim=1)


@register_attack
class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    config_cls = UnlearnDiffAtkConfig
    conditionings = ("text",)

    @classmethod
    def check_model(cls, config, model, run_cfg) -> None:
        limit = model.tokenize([""]).shape[1]
        eos = model.pipeline.tokenizer.eos_token_id
        for prompt in run_cfg.forget.prompts:
            used = prompt_length(model.tokenize([prompt])[0], eos)
            if used + config.k > limit:
                raise UserError(f"attack.unlearndiffatk.k={config.k} does not fit: the forget prompt {prompt!r} "
                                f"takes {used} of the tokenizer's {limit} tokens; use k <= {limit - used}")
        total = model.noise_scheduler.config.num_train_timesteps
        if config.timesteps > total:
            raise UserError(f"attack.unlearndiffatk.timesteps={config.timesteps} is more than the model's "
                            f"{total} training timesteps; use at most {total}")

    def run(self, ctx) -> AttackResult:
        cfg, model = self.cfg, ctx.model
        steps, guidance = ctx.sampling(cfg.num_inference_steps, cfg.guidance_scale)
        grid = timestep_grid(model.noise_scheduler.config.num_train_timesteps, cfg.timesteps)
        table = model.token_embedding_table()
        curve, shares, best, passes = [], [], None, 0
        for i, target in enumerate(ctx.forget):
            found, images, rounds, used = self._attack_target(ctx, target, i, grid, table, steps, guidance)
            passes += used
            share = found.double().mean().item()
            curve.append({"target": target.name, "asr": share, "rounds": rounds})
            shares.append(share)
            if share >= max(shares):
                best = images
        return AttackResult(
            asr=max(shares), curve=curve, images=best, samples=cfg.cases,
            budget={"k": cfg.k, "iterations_per_timestep": cfg.iterations, "timesteps": cfg.timesteps,
                    "cases": cfg.cases * len(ctx.forget), "forward_backward_passes": passes,
                    "max_passes_per_case": cfg.iterations * cfg.timesteps},
            protocol={"tokens": f"{cfg.k} prefix tokens after the start token", "vocabulary": int(table.shape[0]),
                      "relaxation": "one-hot on the probability simplex, straight-through sampled token (hardtanh)",
                      "objective": "the attacked model's denoising MSE on the case's image of the target",
                      "optimizer": "adam (L2 weight decay)", "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                      "timestep_grid": grid, "stop": "a case stops at its first judged success",
                      "images": "D_f (the base model's samples of the forget prompt), a seeded draw",
                      "sampler": ctx.cfg.eval.sampler, "num_inference_steps": steps, "guidance_scale": guidance,
                      "seed": cfg.seed, "asr": "share of cases succeeded, worst forget target"})

    def _attack_target(self, ctx, target, index: int, grid: list, table: torch.Tensor, steps: int,
                       guidance: float) -> tuple:
        """(succeeded (cases,), final images, per-round ASR, forward-backward passes) for one forget target."""
        cfg, model = self.cfg, ctx.model
        n, device = cfg.cases, model.device
        pixels = ctx.forget_batch(n, cfg.seed + index)["pixel_values"]
        seeds = [image_seed(cfg.seed + 700_000, target.seed_key, j) for j in range(n)]
        ids = target.condition.to(device).reshape(1, -1).expand(n, -1)
        found, images = ctx.judged_samples(model, target, ids, seeds, steps, guidance)  # round 0: unattacked
        found, images = found.clone(), images.clone()  # updated per case below (generation gives inference tensors)
        rounds = [{"timestep": None, "asr": found.double().mean().item()}]
        table = table.to(device)
        probs = project_simplex(torch.full((n, cfg.k, table.shape[0]), 1.0 / table.shape[0], device=device))
        probs.requires_grad_(True)
        optimizer = torch.optim.Adam([probs], lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator(device).manual_seed(cfg.seed * 7919 + index)
        elements = model.encode(pixels[:1].to(device)).numel()
        passes = 0
        for t in grid:
            active = (~found).nonzero().flatten()
            if len(active) == 0:
                break
            for _ in range(cfg.iterations):
                one_hot = SampledOneHot.apply(probs, generator)[active.to(device)]
                tokens = prefixed(ids[active], one_hot.argmax(-1))
                embeds = torch.cat([table[tokens[:, :1]], one_hot @ table, table[tokens[:, cfg.k + 1:]]], dim=1)
                cond = model.encode_token_embeddings(tokens, embeds)
                losses = model.training_losses({"pixel_values": pixels[active]}, generator=generator, cond=cond,
                                               timesteps=torch.full((len(active),), t, device=device))
                probs.grad, = torch.autograd.grad(losses.sum() / elements, [probs])
                optimizer.step()
                with torch.no_grad():
                    probs.copy_(project_simplex(probs))
                passes += len(active)
            attacked = prefixed(ids[active], probs.detach()[active.to(device)].argmax(-1))
            hit, sampled = ctx.judged_samples(model, target, attacked, [seeds[j] for j in active], steps, guidance)
            found[active], images[active] = hit, sampled
            rounds.append({"timestep": t, "asr": found.double().mean().item()})
        return found, images, rounds, passes
