"""Images that are not digits: what a judge's "not a digit" output must recognise.

Unlearning by ascent does not make a model draw another digit; it makes it draw degenerate images: flat fields,
stripes, checkerboards, noise, saturated blobs (the embedded DiT forgetting 7 drew horizontal stripes that a judge
trained only on noise called "seven"). `degenerate_images` draws such images, one family per kind, with random
sizes, phases and grey levels, to train the digits judge's reject output (outlier exposure) and to test it.

A single vertical bar is left out on purpose: it is a plausible "1".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("constant", "stripes", "profile", "checkerboard", "uniform_noise", "binary_noise", "smooth_noise", "blobs",
         "saturated", "shuffled", "ramp")


def _uniform(shape, generator, low=0.0, high=1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _two_levels(b: int, generator) -> tuple:
    """Two grey levels per image (B, 1, 1, 1) at least 0.3 apart (else it is a flat field)."""
    low = _uniform((b, 1, 1, 1), generator, 0.0, 0.6)
    return low, (low + _uniform((b, 1, 1, 1), generator, 0.3, 1.0)).clamp(max=1.0)


def _constant(b, h, w, generator, images):
    return _uniform((b, 1, 1, 1), generator).expand(b, 1, h, w)


def _stripes(b, h, w, generator, images):
    """Periodic bands, hard or sinusoidal, horizontal / vertical / diagonal, period 2..4 px (>= 2 bands)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    angle = torch.randint(0, 4, (b,), generator=generator).float() * (math.pi / 4)
    coord = torch.cos(angle)[:, None, None] * y + torch.sin(angle)[:, None, None] * x
    period = _uniform((b, 1, 1), generator, 2.0, 4.0)
    wave = torch.sin(2 * math.pi * coord / period + _uniform((b, 1, 1), generator, 0, 2 * math.pi))
    hard = torch.rand(b, 1, 1, generator=generator) < 0.5
    shape = torch.where(hard, (wave > 0).float(), (wave + 1) / 2).unsqueeze(1)
    low, high = _two_levels(b, generator)
    return low + (high - low) * shape


def _profile(b, h, w, generator, images):
    """Every row (or every column) one random grey level: arbitrary multi-level stripes."""
    rows = _uniform((b, 1, h, 1), generator).expand(b, 1, h, w)
    cols = _uniform((b, 1, 1, w), generator).expand(b, 1, h, w)
    return torch.where(torch.rand(b, 1, 1, 1, generator=generator) < 0.5, rows, cols)


def _checkerboard(b, h, w, generator, images):
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cell = torch.randint(1, 4, (b, 1, 1), generator=generator)
    offset = torch.randint(0, 2, (b, 1, 1), generator=generator)
    board = ((y // cell + x // cell + offset) % 2).float().unsqueeze(1)
    low, high = _two_levels(b, generator)
    return low + (high - low) * board


def _uniform_noise(b, h, w, generator, images):
    return torch.rand(b, 1, h, w, generator=generator)


def _binary_noise(b, h, w, generator, images):
    density = _uniform((b, 1, 1, 1), generator, 0.1, 0.9)
    return (torch.rand(b, 1, h, w, generator=generator) < density).float()


def _smooth_noise(b, h, w, generator, images):
    """Noise at a coarse scale, bilinearly upsampled (soft clouds)."""
    scale = int(torch.randint(2, 5, (1,), generator=generator))
    coarse = torch.rand(b, 1, scale, scale, generator=generator)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def _blobs(b, h, w, generator, images):
    """Thresholded coarse noise: large flat regions with hard edges."""
    return (_smooth_noise(b, h, w, generator, images) > _uniform((b, 1, 1, 1), generator, 0.3, 0.7)).float()


def _saturated(b, h, w, generator, images):
    """A flat field with a ragged border of the other level (what the DDPM draws after long ascent)."""
    inner = torch.zeros(b, 1, h, w)
    depth = torch.randint(1, 3, (b, 1, 1, 1), generator=generator)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    edge = torch.minimum(torch.minimum(y, x), torch.minimum(h - 1 - y, w - 1 - x))
    border = (edge < depth) & (torch.rand(b, 1, h, w, generator=generator) < 0.7)
    inner[border] = 1.0
    flip = torch.rand(b, 1, 1, 1, generator=generator) < 0.3
    return torch.where(flip, 1 - inner, inner)


def _shuffled(b, h, w, generator, images):
    """Real digits with their pixels shuffled: digit-like intensities, no shape."""
    source = images[torch.randint(0, len(images), (b,), generator=generator)].reshape(b, -1)
    perm = torch.argsort(torch.rand(b, h * w, generator=generator), dim=1)
    return torch.gather(source, 1, perm).reshape(b, 1, h, w)


def _ramp(b, h, w, generator, images):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    angle = _uniform((b, 1, 1), generator, 0, 2 * math.pi)
    ramp = torch.cos(angle) * y + torch.sin(angle) * x
    ramp = ramp - ramp.amin(dim=(1, 2), keepdim=True)
    return (ramp / ramp.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)).unsqueeze(1)


FAMILIES = {"constant": _constant, "stripes": _stripes, "profile": _profile, "checkerboard": _checkerboard,
            "uniform_noise": _uniform_noise, "binary_noise": _binary_noise, "smooth_noise": _smooth_noise,
            "blobs": _blobs, "saturated": _saturated, "shuffled": _shuffled, "ramp": _ramp}


def degenerate_images(kind: str, count: int, size: tuple, generator: torch.Generator,
                      digits: torch.Tensor = None) -> torch.Tensor:
    """`count` images of one family `kind` (one of `KINDS`), (count, 1, H, W) in [0, 1].

    Args:
        size: (H, W).
        generator: CPU generator of every draw.
        digits: real digit images (N, 1, H, W) in [0, 1]; needed by "shuffled".
    """
    from ..errors import choice_error

    if kind not in FAMILIES:
        raise choice_error("degenerate image kind", kind, KINDS)
    h, w = size
    return FAMILIES[kind](count, h, w, generator, digits).float().clamp(0, 1).contiguous()


def mixed_outliers(count: int, size: tuple, generator: torch.Generator, digits: torch.Tensor,
                   kinds=KINDS) -> torch.Tensor:
    """`count` degenerate images, each of a kind drawn uniformly from `kinds`, (count, 1, H, W) in [0, 1]."""
    drawn = torch.randint(0, len(kinds), (count,), generator=generator)
    out = torch.empty(count, 1, *size)
    for i, kind in enumerate(kinds):
        rows = (drawn == i).nonzero().flatten()
        if len(rows):
            out[rows] = degenerate_images(kind, len(rows), size, generator, digits)
    return out
