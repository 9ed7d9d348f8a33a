"""diffunlearn: make a trained diffusion model (or its classifier) forget a class or a concept, and measure it.

The Python entry points, imported on first use so that `import diffunlearn` stays light:

- `diffunlearn.from_pretrained(path)`: any supported pipeline (Hub id, local folder, `embedded:NAME`, or a run's
  output folder) as its pipeline class.
- `diffunlearn.unlearn(pipe, forget=..., method=..., seed=...)`: pipelines in, pipelines out (see `api.py`);
  `diffunlearn.unlearn(config, output, overrides=(), ...)` is what `diffunlearn unlearn CONFIG --output DIR` runs.
- `diffunlearn.evaluate(pipe, forget=..., judge=...)`: score a pipeline under its family's protocol;
  `diffunlearn.evaluate_config(config, model_path, output, overrides=())` is what `diffunlearn evaluate` runs.
- `ClassConditionalDDPMPipeline`, `ClassConditionalDDPM`, `ClassConditionalDiT`, `StableDiffusion`: the pipeline
  diffusers lacks and the family wrappers.
- `diffunlearn.fast_ntk_unlearn(model, forget, retain, subset="head", loss="ce", ...)`: the closed-form Fast-NTK
  scrub of a classifier; returns the unlearned copy. `diffunlearn.fast_ntk_scrub` also returns the details.
- `diffunlearn.add_visual_prompts(vit, num_tokens=10, deep=False)`: prompt tokens on a vision transformer (the
  Fast-NTK subset `prompt`); `save_visual_prompts` / `load_visual_prompts` keep them as safetensors.
"""

from importlib import import_module

from .version import __version__

# public name -> (module, attribute)
_API = {
    "from_pretrained": ("diffunlearn.api", "from_pretrained"),
    "unlearn": ("diffunlearn.api", "unlearn"),
    "evaluate": ("diffunlearn.api", "evaluate"),
    "UnlearnResult": ("diffunlearn.api", "UnlearnResult"),
    "evaluate_config": ("diffunlearn.runs.evaluate", "evaluate_model_command"),
    "ClassConditionalDDPMPipeline": ("diffunlearn.models.ddpm", "ClassConditionalDDPMPipeline"),
    "ClassConditionalDDPM": ("diffunlearn.models.ddpm", "ClassConditionalDDPM"),
    "ClassConditionalDiT": ("diffunlearn.models.dit", "ClassConditionalDiT"),
    "StableDiffusion": ("diffunlearn.models.sd", "StableDiffusion"),
    "fast_ntk_unlearn": ("diffunlearn.ntk.unlearn", "fast_ntk_unlearn"),
    "fast_ntk_scrub": ("diffunlearn.ntk.unlearn", "fast_ntk_scrub"),
    "add_visual_prompts": ("diffunlearn.models.visual_prompts", "add_visual_prompts"),
    "remove_visual_prompts": ("diffunlearn.models.visual_prompts", "remove_visual_prompts"),
    "save_visual_prompts": ("diffunlearn.models.visual_prompts", "save_visual_prompts"),
    "load_visual_prompts": ("diffunlearn.models.visual_prompts", "load_visual_prompts"),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'diffunlearn' has no attribute {name!r}; its API is {sorted(_API)}")
    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_API))
