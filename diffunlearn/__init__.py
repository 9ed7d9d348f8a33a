"""diffunlearn: make a trained diffusion model (or its classifier) forget a class or a concept, and measure it.

The Python entry points, imported on first use so that `import diffunlearn` stays light:

- `diffunlearn.unlearn(config, output, overrides=(), ...)`: what `diffunlearn unlearn CONFIG --output DIR` runs;
  returns the report written to `DIR/report.json`.
- `diffunlearn.evaluate(config, model_path, output, overrides=())`: what `diffunlearn evaluate` runs.
- `diffunlearn.fast_ntk_unlearn(model, forget, retain, subset="head", loss="ce", ...)`: the closed-form Fast-NTK
  scrub of a classifier; returns the unlearned copy. `diffunlearn.fast_ntk_scrub` also returns the details.
"""

from importlib import import_module, metadata

try:
    __version__ = metadata.version("diffunlearn")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

# public name -> (module, attribute)
_API = {
    "unlearn": ("diffunlearn.run", "unlearn_run"),
    "evaluate": ("diffunlearn.run", "evaluate_model_command"),
    "fast_ntk_unlearn": ("diffunlearn.fast_ntk", "fast_ntk_unlearn"),
    "fast_ntk_scrub": ("diffunlearn.fast_ntk", "fast_ntk_scrub"),
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
