"""Free class-embedding rows: the variable of the `inversion` attack and of the lasting option's inner condition
attack (`methods/lasting.py`)."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UserError


@contextlib.contextmanager
def free_class_embedding(model, label: int, init_label: int):
    """Inside the block, the rows of class `label` in every class-embedding table come from free vectors
    (returned, trainable, initialised from row `init_label`); the network's own weights are untouched."""
    tables = model.class_embeddings()
    if not tables:
        raise UserError(f"the {model.family} family has no class-embedding table to invert")
    free = [torch.nn.Parameter(table.weight[init_label].detach().clone()) for table in tables]

    def hook(vector):
        def replace(module, inputs, output):
            rows = (inputs[0] == label).reshape(-1)
            if not bool(rows.any()):
                return output
            output = output.clone()
            output[rows] = vector.to(output.dtype)
            return output
        return replace

    handles = [table.register_forward_hook(hook(vector)) for table, vector in zip(tables, free)]
    try:
        yield free
    finally:
        for handle in handles:
            handle.remove()
