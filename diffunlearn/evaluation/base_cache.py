"""The base model's metrics under a protocol, evaluated once and reused: the same weights under the same protocol
give the same numbers on every run, so a run (its final evaluation, its in-loop checks and their confirmation) reads
them from `cache_dir()/base_eval` when an earlier run computed them.

The key (`evaluation_key`, a whole SHA-256) covers everything the numbers depend on: the base weights' digest (a Hub
model's cached revision), the sampling scheduler's config, the parameters' dtypes and count, the evaluator's whole
protocol (judge and its weights digest, FID features and extractor digest, sampler, steps, guidance, seed, sample
counts, targets, torch / torchmetrics versions), every target's condition, label and seed key, the FID reference
statistics themselves (summed over processes), the batch size, device type, process count and the diffunlearn
version. Where the judge's weights or a Hub model's revision cannot be identified, nothing is cached. The entry holds
the metrics and the gallery images; at most DIFFUNLEARN_CACHE_BYTES_BASE_EVAL bytes (default 1 GiB), least recently
used first. `eval.reuse_base=false` evaluates the base afresh (and stores the result).
"""

from __future__ import annotations

import json
from typing import Optional

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file

from ..data.generated import hub_revision
from ..disk_cache import GiB, DiskCache, cache_key, scheduler_config
from ..distributed import sum_over_processes

KEY_VERSION = 1
CACHE = DiskCache("base_eval", "DIFFUNLEARN_CACHE_BYTES_BASE_EVAL", GiB)
FID_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def reference_statistics(evaluator) -> list:
    """(name, tensor) of every FID reference's statistics, summed over processes (the same in every process)."""
    out = []
    for name in ("fid", "fid_forget", "fid_train"):
        fid = getattr(evaluator, name)
        if fid is not None:
            out += [(f"{name}.{state}", sum_over_processes(getattr(fid.metric, state).detach()))
                    for state in FID_STATES]
    return out


def evaluation_key(evaluator, model, model_key: str, device) -> Optional[str]:
    """The cache key of `evaluator`'s metrics of `model` (weights digest `model_key`), or None when the judge's
    weights or the Hub revision are unknown. A collective in a distributed run (every process calls it)."""
    from ..version import __version__

    revision = hub_revision(model_key)
    if evaluator.protocol["judge"].get("weights_sha256") is None or (model_key.startswith("hub:") and not revision):
        return None
    params = list(model.network.parameters())
    targets = evaluator.targets
    header = {"version": KEY_VERSION, "diffunlearn": __version__, "model": model_key, "revision": revision,
              "scheduler": scheduler_config(getattr(model.pipeline, "scheduler", None)),
              "dtypes": sorted({str(p.dtype) for p in params}), "parameters": sum(p.numel() for p in params),
              "protocol": evaluator.protocol, "batch_size": evaluator.eval_cfg.batch_size,
              "gallery_per_class": evaluator.eval_cfg.gallery_per_class,
              "targets": [[str(t.key), t.label, t.seed_key, t.forget] for t in targets],
              "device": torch.device(device).type, "num_processes": PartialState().num_processes}
    conditions = torch.stack([t.condition for t in targets])
    return cache_key(header, [("conditions", conditions), *reference_statistics(evaluator)])


def evaluate_base(evaluator, model, model_key: str, device, reuse: bool = True) -> tuple:
    """(metrics, gallery images {target key: (k, C, H, W)}, reused) of the base `model` under `evaluator`: read
    from the cache when `reuse` and an entry exists, else computed (and stored when it has a key). Every process
    takes the same branch (the evaluation is collective)."""
    key = evaluation_key(evaluator, model, model_key, device)
    decision = [key is not None and reuse and CACHE.lookup(key) is not None]
    broadcast_object_list(decision)
    if decision[0]:
        tensors = load_file(str(CACHE.path(key)))
        metrics = json.loads(tensors.pop("metrics").numpy().tobytes().decode())
        keys = [t.key for t in evaluator.targets]  # per-target results by key (a class id stays an int)
        metrics["per_target_accuracy"] = dict(zip(keys, metrics["per_target_accuracy"]))
        return metrics, {k: tensors[f"gallery.{i}"] for i, k in enumerate(keys)}, True
    metrics, images = evaluator(model)
    if key is not None:
        payload = {f"gallery.{i}": images[t.key].contiguous() for i, t in enumerate(evaluator.targets)}
        stored = {**metrics, "per_target_accuracy": [metrics["per_target_accuracy"][t.key] for t in evaluator.targets]}
        payload["metrics"] = torch.frombuffer(bytearray(json.dumps(stored).encode()), dtype=torch.uint8)
        CACHE.store(key, lambda tmp: save_file(payload, str(tmp)), commit=PartialState().is_main_process)
    return metrics, images, False
