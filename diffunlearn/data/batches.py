"""Labelled sets in any accepted form -> CPU mini-batches `(images, labels)` and shape checks (set digests:
`diffunlearn.data.digest`)."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import UserError

SET_FORMS = ("an (images, labels) tensor pair, a LabeledImages, a Dataset of (image, label) or "
             "{'pixel_values', 'labels'} items, or a DataLoader of such batches")


def _split_item(item, name: str):
    """One dataset item or loader batch -> (image(s), label(s))."""
    if isinstance(item, dict):
        if "pixel_values" not in item or "labels" not in item:
            raise UserError(f"{name} items are dicts with keys {sorted(item)}; expected 'pixel_values' and 'labels'")
        return item["pixel_values"], item["labels"]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise UserError(f"{name} items are {type(item).__name__}; expected (image, label) tuples or "
                    "{'pixel_values', 'labels'} dicts")


def _labels(value) -> torch.Tensor:
    labels = torch.as_tensor(value).reshape(-1)
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise UserError("labels must be integer class ids; got non-integer values")
    return labels.long()


class LabeledBatches:
    """A labelled set read in mini-batches, as many times as needed.

    A `LabeledImages` (anything with `.images` and `.labels` tensors) is read through those attributes, which hold
    the classifier's [0, 1] inputs; its `__getitem__` gives the diffusion model's [-1, 1] pixels instead.

    Args:
        data: one of `SET_FORMS`. Loaders must not shuffle-augment: every pass must see the same samples.
        batch_size: samples per mini-batch (loaders keep their own batch size).
        name: "forget" or "retain", for messages.
    """

    def __init__(self, data, batch_size: int, name: str):
        self.name, self.batch_size = name, batch_size
        self._tensors = self._dataset = self._loader = None
        if isinstance(data, torch.utils.data.DataLoader):
            self._loader = data
        elif (isinstance(data, (tuple, list)) and len(data) == 2
              and all(torch.is_tensor(t) or isinstance(t, np.ndarray) for t in data)):
            self._tensors = (torch.as_tensor(data[0]), _labels(data[1]))
        elif torch.is_tensor(getattr(data, "images", None)) and torch.is_tensor(getattr(data, "labels", None)):
            self._tensors = (data.images, _labels(data.labels))
        elif (hasattr(data, "__getitem__") and hasattr(data, "__len__")
              and not isinstance(data, (str, bytes, dict, np.ndarray)) and not torch.is_tensor(data)):
            self._dataset = data
        else:
            raise UserError(f"{name} set of type {type(data).__name__} is not supported; give {SET_FORMS}")
        if self._tensors is not None and len(self._tensors[0]) != len(self._tensors[1]):
            raise UserError(f"{name} set has {len(self._tensors[0])} images but {len(self._tensors[1])} labels")

    def __len__(self) -> int:
        if self._tensors is not None:
            return len(self._tensors[1])
        source = self._dataset if self._dataset is not None else self._loader.dataset
        try:
            return len(source)
        except TypeError:
            raise UserError(f"{self.name} set has no length (an IterableDataset?); give {SET_FORMS}") from None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._tensors is not None:
            images, labels = self._tensors
            for start in range(0, len(labels), self.batch_size):
                yield images[start:start + self.batch_size], labels[start:start + self.batch_size]
        elif self._loader is not None:
            for batch in self._loader:
                images, labels = _split_item(batch, self.name)
                yield torch.as_tensor(images), _labels(labels)
        else:
            for start in range(0, len(self._dataset), self.batch_size):
                items = [_split_item(self._dataset[i], self.name)
                         for i in range(start, min(start + self.batch_size, len(self._dataset)))]
                yield (torch.stack([torch.as_tensor(image) for image, _ in items]),
                       _labels([int(label) for _, label in items]))

    def chunks(self, max_bytes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like iterating, with batches of up to `max_bytes` of images (at least `batch_size` samples) when the set
        is in memory (tensors); else the batches."""
        if self._tensors is None:
            yield from self
            return
        images, labels = self._tensors
        size = max(self.batch_size, max_bytes // max(1, images[:1].numel() * images.element_size()))
        for start in range(0, len(labels), size):
            yield images[start:start + size], labels[start:start + size]

    def sample_shape(self) -> Optional[tuple]:
        """Shape of one image, or None for an empty set."""
        if len(self) == 0:
            return None
        if self._tensors is not None:
            return tuple(self._tensors[0].shape[1:])
        return tuple(next(iter(self))[0].shape[1:])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as (images (N, ...), labels (N,))."""
        if self._tensors is not None:
            return self._tensors
        batches = list(self)
        if not batches:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _config_value(config, *keys):
    for key in keys:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return value
    return None


def check_input_shapes(model, forget: LabeledBatches, retain: LabeledBatches) -> None:
    """Forget images must have the shape the model takes: the retain images' shape, else the model config's.

    Raises:
        UserError: naming the expected and the given shapes.
    """
    given = forget.sample_shape()
    if given is None:
        return
    expected, source = retain.sample_shape(), "the retain images"
    if expected is None:
        config = getattr(model, "config", None)
        channels = _config_value(config, "num_channels", "in_channels") if config is not None else None
        size = _config_value(config, "image_size", "sample_size") if config is not None else None
        if channels is None:
            return
        size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
        expected, source = (int(channels), *(size or ("H", "W"))), "the model config"
    matches = len(given) == len(expected) and all(e == g for e, g in zip(expected, given) if isinstance(e, int))
    if not matches:
        raise UserError(f"forget images have shape {tuple(given)} but the model takes {tuple(expected)} "
                        f"(from {source})")
