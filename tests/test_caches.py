"""The on-disk caches (`diffunlearn.disk_cache`): each kind capped by its env var, least recently used entries
trimmed first and the newest kept; keys are whole SHA-256 digests of everything that changes an entry (a generated
set's sampling scheduler and Hub revision, a mask's antithetic sampling and training scheduler)."""

import os
import re
from dataclasses import replace

import pytest
import torch
from conftest import tiny_ddpm
from diffusers import DDPMScheduler
from helpers import make_trainer

from diffunlearn.config import EvalConfig
from diffunlearn.data import generated
from diffunlearn.errors import UserError
from diffunlearn.methods import saliency
from diffunlearn.ntk import cache as ntk_cache

HEX64 = re.compile(r"[0-9a-f]{64}")
CACHES = {"generated": (generated.CACHE, "DIFFUNLEARN_CACHE_BYTES_GENERATED"),
          "masks": (saliency.CACHE, "DIFFUNLEARN_CACHE_BYTES_MASKS"),
          "fast_ntk": (ntk_cache.DISK, "DIFFUNLEARN_NTK_CACHE_BYTES")}


def entries(cache) -> list:
    return sorted(p.stem for p in (cache.path("x").parent).glob(f"*{cache.suffix}"))


@pytest.mark.parametrize("kind", sorted(CACHES))
def test_each_cache_is_capped_by_its_env_var_least_recently_used_first(kind, monkeypatch):
    cache, env = CACHES[kind]
    assert cache.env == env and cache.default_bytes >= 1 << 30 and cache.path("k").parent.name == kind
    assert cache.limit() == cache.default_bytes
    monkeypatch.setenv(env, str(3 * 1000))  # three 1,000-byte entries
    for age, name in enumerate("abc"):
        cache.store(name, lambda tmp: tmp.write_bytes(b"x" * 1000))
        os.utime(cache.path(name), (1000 + age, 1000 + age))  # a oldest, c newest
    assert entries(cache) == ["a", "b", "c"]
    assert cache.lookup("a") == cache.path("a") and cache.lookup("missing") is None  # a used: now the most recent
    cache.store("d", lambda tmp: tmp.write_bytes(b"x" * 1000))  # four entries: b, the least recently used, goes
    assert entries(cache) == ["a", "c", "d"]
    cache.store("big", lambda tmp: tmp.write_bytes(b"x" * 5000))  # larger than the cap alone: kept, all others go
    assert entries(cache) == ["big"]
    cache.store("e", lambda tmp: tmp.write_bytes(b"x" * 1000), commit=False)  # not this process's to keep or trim
    assert entries(cache) == ["big"]
    monkeypatch.setenv(env, "2GB")
    with pytest.raises(UserError, match=rf"{env}='2GB' is invalid; give a whole number of bytes"):
        cache.store("f", lambda tmp: tmp.write_bytes(b"x"))
    assert entries(cache) == ["big"]  # refused before writing


def test_folder_entries_are_written_whole_and_capped_by_their_files(monkeypatch):
    from diffunlearn.recipes.retrained import CACHE

    assert CACHE.folder and CACHE.env == "DIFFUNLEARN_CACHE_BYTES_RT" and CACHE.default_bytes >= 1 << 30

    def two_files(tmp):
        tmp.mkdir()
        (tmp / "unet").mkdir()
        (tmp / "model_index.json").write_bytes(b"x" * 400)
        (tmp / "unet" / "weights").write_bytes(b"x" * 600)

    monkeypatch.setenv(CACHE.env, "2000")  # two 1,000-byte folders
    for age, name in enumerate("abc"):
        CACHE.store(name, two_files)
        os.utime(CACHE.path(name), (1000 + age, 1000 + age))
    assert entries(CACHE) == ["b", "c"]  # a, the least recently used, went: sizes count the files inside
    assert (CACHE.path("c") / "unet" / "weights").stat().st_size == 600
    assert CACHE.lookup("b") == CACHE.path("b") and CACHE.lookup("a") is None
    CACHE.store("d", two_files, commit=False)
    assert entries(CACHE) == ["b", "c"] and not any(p.name.startswith(".") for p in CACHE.path("x").parent.iterdir())

    def crash(tmp):
        two_files(tmp)
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        CACHE.store("e", crash)
    assert entries(CACHE) == ["b", "c"] and not any(p.name.startswith(".") for p in CACHE.path("x").parent.iterdir())


def eval_cfg(**changes) -> EvalConfig:
    return replace(EvalConfig(), **{"batch_size": 4, "num_inference_steps": 2, "guidance_scale": 1.0, **changes})


def with_scheduler(model, **config):
    """`model`'s weights under another scheduler config (rewrapped: the wrapper builds its training scheduler from
    the pipeline's)."""
    model.pipeline.scheduler = DDPMScheduler.from_config(model.pipeline.scheduler.config, **config)
    return type(model)(model.pipeline)


def test_a_generated_set_key_follows_the_sampling_scheduler_and_settings():
    conditions, seeds = torch.tensor([1, 2]), [5, 6]
    key = generated.generation_key(tiny_ddpm(), "memory:m", conditions, seeds, eval_cfg())
    assert HEX64.fullmatch(key)
    assert generated.generation_key(tiny_ddpm(), "memory:m", conditions, seeds, eval_cfg()) == key
    others = [generated.generation_key(with_scheduler(tiny_ddpm(), timestep_spacing="trailing"), "memory:m",
                                       conditions, seeds, eval_cfg()),
              generated.generation_key(tiny_ddpm(prediction_type="v_prediction"), "memory:m", conditions, seeds,
                                       eval_cfg()),
              generated.generation_key(tiny_ddpm(), "memory:n", conditions, seeds, eval_cfg()),
              generated.generation_key(tiny_ddpm(), "memory:m", torch.tensor([1, 3]), seeds, eval_cfg()),
              generated.generation_key(tiny_ddpm(), "memory:m", conditions, [5, 7], eval_cfg()),
              generated.generation_key(tiny_ddpm(), "memory:m", conditions, seeds, eval_cfg(sampler="ddpm")),
              generated.generation_key(tiny_ddpm(), "memory:m", conditions, seeds, eval_cfg(num_inference_steps=3)),
              generated.generation_key(tiny_ddpm(), "memory:m", conditions, seeds, eval_cfg(guidance_scale=2.0))]
    assert len({key, *others}) == 1 + len(others)


def test_a_hub_models_generated_set_key_follows_its_cached_revision(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert generated.hub_revision("hub:org/model") == "a" * 40
    assert generated.hub_revision("hub:org/absent") is None and generated.hub_revision("memory:x") is None
    model, conditions = tiny_ddpm(), torch.tensor([1])
    first = generated.generation_key(model, "hub:org/model", conditions, [0], eval_cfg())
    (repo / "refs" / "main").write_text("b" * 40)  # the Hub's main moved on and was downloaded
    assert generated.hub_revision("hub:org/model") == "b" * 40
    assert generated.generation_key(model, "hub:org/model", conditions, [0], eval_cfg()) != first


def test_generate_cached_reuses_its_file_and_a_new_scheduler_config_makes_a_new_one():
    conditions, seeds = torch.tensor([1, 2]), [5, 6]
    images = generated.generate_cached(tiny_ddpm(), conditions, seeds, eval_cfg(), "memory:m")
    [name] = entries(generated.CACHE)
    assert HEX64.fullmatch(name) and images.shape == (2, 1, 8, 8)
    calls = []
    original = generated.generate
    generated.generate = lambda *args: calls.append(args) or original(*args)
    try:
        again = generated.generate_cached(tiny_ddpm(), conditions, seeds, eval_cfg(), "memory:m")
        assert not calls and torch.equal(again, images), "the second request should read the file"
        generated.generate_cached(with_scheduler(tiny_ddpm(), timestep_spacing="trailing"), conditions, seeds,
                                  eval_cfg(), "memory:m")
        assert len(calls) == 1 and len(entries(generated.CACHE)) == 2
    finally:
        generated.generate = original


def test_a_mask_key_follows_antithetic_sampling_and_the_training_scheduler(tmp_path):
    def key(model, overrides=()):
        trainer = make_trainer(model, tmp_path / str(len(keys)), overrides)
        batches = [trainer.forget_batch(0), trainer.remain_batch(0)]
        keys.append(saliency.mask_key(trainer.context, batches, 1.0, 1.0, None, 1e-15))
        return keys[-1]

    keys = []
    base = key(tiny_ddpm())
    assert HEX64.fullmatch(base) and key(tiny_ddpm()) == base
    assert key(tiny_ddpm(), ["train.antithetic=false"]) != base
    assert key(tiny_ddpm(prediction_type="v_prediction")) != base
    assert key(with_scheduler(tiny_ddpm(), beta_schedule="linear")) != base
    assert key(tiny_ddpm(seed=1)) != base  # other weights
    assert len(set(keys[2:])) == len(keys[2:])


def test_the_statistics_key_is_unchanged_by_the_port():
    """Fast-NTK's key is the same message as before the shared module (its files from before still hit)."""
    import hashlib
    import json

    from diffunlearn.disk_cache import hash_tensor

    model = torch.nn.Linear(4, 3)
    digest = hashlib.sha256(json.dumps([ntk_cache.FORMAT_VERSION, "Linear", ["weight"], "ce", "d" * 64, True, 2,
                                        []]).encode())
    for name, tensor in model.state_dict().items():
        digest.update(json.dumps(name).encode())
        hash_tensor(digest, tensor)
    assert ntk_cache.statistics_key(model, ["weight"], None, "ce", "d" * 64) == digest.hexdigest()
