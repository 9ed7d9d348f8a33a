"""`train.cache_latents`: the latent families' D_f / D_r go through the VAE once, before the first step, and the run
is otherwise the run without it (same batches, draws and updates; the latents equal up to float reordering)."""

import json

import pytest
import torch
from conftest import tiny_ddpm
from helpers import snapshot
from test_families import family_trainer

from diffunlearn.training.latent_cache import LATENTS, CachedLatents, without_latents

LATENT_FAMILIES = ["dit", "sd", "sd3", "sdxl"]
# measured on the tiny models: the table's latents equal a step's own encode (0 difference for batches of 8 and 64;
# up to 1.7e-7 against one image at a time), the losses of 3 SFR-on iterations are equal, and the weights' update
# differs by 0 (DiT, SD3, SDXL) to 0.14% of its norm (SD: backward's float order)
LATENT_ATOL, LOSS_RTOL, UPDATE_RTOL = 1e-6, 1e-5, 1e-2


def trainer_in(family, folder, overrides=(), method=None):
    folder.mkdir()
    return family_trainer(family, folder, overrides, method=method)


def counting_encode(model):
    """Wrap `model.encode` to count the images it encodes; returns the counter (a one-element list)."""
    seen, encode = [0], model.encode

    def counted(pixels):
        seen[0] += pixels.shape[0]
        return encode(pixels)

    model.encode = counted
    return seen


@pytest.mark.parametrize("family", LATENT_FAMILIES)
def test_each_image_is_encoded_once_however_often_it_is_drawn(family, tmp_path):
    plain = trainer_in(family, tmp_path / "plain", ["train.steps=3"])
    seen_plain = counting_encode(plain.model)
    plain.train()  # the mask's Fisher batches and the steps draw some rows more than once

    cached = trainer_in(family, tmp_path / "cached", ["train.steps=3", "train.cache_latents=true"])
    sets = (cached.forget_sampler.dataset, cached.remain_sampler.dataset)
    assert all(isinstance(s, CachedLatents) for s in sets)
    seen = counting_encode(cached.model)
    cached.train()
    encoded = lambda: sum(int(s.encoded.sum()) for s in sets)  # noqa: E731
    assert seen[0] == encoded() > 0 and seen[0] < seen_plain[0], (seen[0], encoded(), seen_plain[0])
    for again in range(2):  # every batch of steps 0-2 (new rows encoded once), then the same batches again
        for step in range(3):
            cached.forget_batch(step), cached.remain_batch(step)
        assert seen[0] == encoded()
        first = seen[0] if again == 0 else first
    assert seen[0] == first


def test_a_cached_set_gives_the_rows_and_latents_the_vae_gives(tmp_path):
    trainer = family_trainer("dit", tmp_path, ["train.cache_latents=true"])
    data = trainer.forget_sampler.dataset
    rows = torch.tensor([5, 0, 3])
    item = data[rows]
    torch.testing.assert_close(item["pixel_values"], data.data_set[rows]["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(item[LATENTS], trainer.model.encode(item["pixel_values"]), rtol=0, atol=LATENT_ATOL)
    single = data[2]  # an int index, as the relearning probe's seeded rows read it
    assert single[LATENTS].shape == item[LATENTS].shape[1:]
    assert LATENTS not in without_latents(item) and "pixel_values" in without_latents(item)


@pytest.mark.parametrize("family", LATENT_FAMILIES)
def test_the_run_with_cached_latents_is_the_run_without(family, tmp_path):
    """Same batches, draws and losses; the weights after 3 SFR-on iterations equal up to float noise, which Adam
    amplifies on elements whose gradient is near zero (SD: 1 of 4,096 elements of a layer off by 2e-4, the whole
    update off by 0.14% of its norm): compared as the update's relative error."""
    base, runs = None, {}
    for cache in (False, True):
        trainer = trainer_in(family, tmp_path / str(cache), ["train.steps=3", f"train.cache_latents={cache}"])
        base = snapshot(trainer)
        trainer.train()
        runs[cache] = snapshot(trainer)
        runs[cache, "log"] = (tmp_path / str(cache) / "work" / "losses.jsonl").read_text().splitlines()
    assert len(runs[True, "log"]) == len(runs[False, "log"]) == 3
    for cached, plain in zip(runs[True, "log"], runs[False, "log"]):
        cached, plain = json.loads(cached), json.loads(plain)
        assert cached.keys() == plain.keys() and all(
            abs(cached[k] - plain[k]) <= LOSS_RTOL * abs(plain[k]) for k in plain), (cached, plain)
    error = sum((runs[True][n] - runs[False][n]).pow(2).sum() for n in base).sqrt()
    update = sum((runs[False][n] - base[n]).pow(2).sum() for n in base).sqrt()
    assert update > 0 and error <= UPDATE_RTOL * update, (family, float(error / update))


def test_pixel_families_have_nothing_to_cache(tmp_path):
    from helpers import make_trainer

    trainer = make_trainer(tiny_ddpm(), tmp_path, ["train.cache_latents=true", "train.steps=1"])
    assert not isinstance(trainer.forget_sampler.dataset, CachedLatents)
    assert LATENTS not in trainer.forget_batch(0)


def test_sa_draws_its_noise_images_not_the_cached_latents(tmp_path):
    """SA's surrogate replaces a D_f batch's pixels by noise: the cached latents of D_f must not stand in for them
    (its surrogate loss is the one of the run without the cache)."""
    sa = ["train.steps=1", "method.replay_samples=8", "method.fisher_samples=4", "method.replay_steps=2"]
    logs = {}
    for cache in (False, True):
        trainer = trainer_in("dit", tmp_path / str(cache), [*sa, f"train.cache_latents={cache}"], method="sa")
        trainer.method.setup()
        logs[cache] = trainer.method.training_step(0)
        batch = trainer.forget_batch(0)
    torch.testing.assert_close(logs[True]["surrogate_loss"], logs[False]["surrogate_loss"], rtol=LOSS_RTOL, atol=0)
    noise = {**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}  # the mistake guarded against:
    assert torch.equal(trainer.losses(noise, 0, stream=1), trainer.losses(batch, 0, stream=1))  # latents win
