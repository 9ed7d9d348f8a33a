"""FID: torchmetrics' Frechet distance on any feature extractor, and the FID Inception v3 loaded safely."""

from __future__ import annotations

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from ..distributed import sum_over_processes


class FID:
    """FID of generated images against fixed real images (real statistics computed once, kept across resets).

    The torchmetrics states are sums (features, outer products, counts; `dist_reduce_fx="sum"`) and `compute()`
    sums them over processes when torch.distributed is initialised. So in a distributed run each process passes
    its share of the real images and of the generated ones, and every process must call it (a collective).

    Args:
        extractor: `nn.Module` mapping images (N, C, H, W) in [0, 1] to features (N, d), with `num_features`.
        real_images: (N, C, H, W) in [0, 1]: this process's share.
    """

    def __init__(self, extractor, real_images: torch.Tensor, batch_size: int = 1024):
        self.batch_size = batch_size
        self.metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False, normalize=True)
        self.metric.to(next(extractor.parameters()).device)
        self.num_real = int(sum_over_processes(torch.tensor(len(real_images))))  # over all processes
        self._update(real_images, real=True)

    @torch.inference_mode()  # the extractor's weights require grad: without this every update builds a graph
    def _update(self, images, real: bool):
        device = self.metric.device
        for i in range(0, len(images), self.batch_size):
            self.metric.update(images[i:i + self.batch_size].to(device), real=real)

    @torch.inference_mode()
    def __call__(self, fake_images: torch.Tensor) -> float:
        """FID of all processes' generated images (this process's share: `fake_images` (N, C, H, W))."""
        self.metric.reset()
        self._update(fake_images, real=False)
        return float(self.metric.compute())


def check_inception_weights(weights_path) -> None:
    """Refuse a missing FID Inception weights file (runs call it before any training)."""
    from pathlib import Path

    from ..errors import UserError

    if not Path(weights_path or "").is_file():
        raise UserError(f"eval.inception_weights {weights_path!r} is not a file; give the local FID Inception "
                        "weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")


def inception_extractor(weights_path: str):
    """The FID Inception v3 (2048-d pool features) from a local weights file: torchmetrics' network (torch-fidelity's
    port, TF1-style resize to 299) loading pytorch-fid's weights file, which holds the same network's weights (a
    .safetensors copy works too). Images (N, C, H, W) in [0, 1] (1 channel is repeated) are quantised to uint8 as
    torchmetrics does.

    torch-fidelity unpickles the file it is given with `weights_only=False`, so it never sees the user's file: the
    tensors are read here with `weights_only=True` (or safetensors) and handed over in a file written here.
    """
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file
    from torchmetrics.image.fid import NoTrainInceptionV3

    from ..errors import UserError

    check_inception_weights(weights_path)
    try:
        state = load_file(weights_path) if weights_path.endswith(".safetensors") else \
            torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable or code-carrying file is the same user error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"eval.inception_weights {weights_path!r} is not a plain tensor weights file "
                        f"(torch.load weights_only=True refused it: {reason})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"eval.inception_weights {weights_path!r} holds no state dict of tensors")
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "inception.pth"
        torch.save({str(k): v for k, v in state.items()}, plain)  # tensors only: all that torch-fidelity unpickles
        try:
            network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                         feature_extractor_weights_path=str(plain))
        except RuntimeError as error:  # load_state_dict: missing / unexpected keys or wrong shapes
            raise UserError(f"eval.inception_weights {weights_path!r} are not FID Inception v3 weights "
                            f"({str(error).splitlines()[0].strip()})") from None

    class Inception(torch.nn.Module):
        num_features = 2048

        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, images):
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
            return self.net((images * 255).byte()).double()

    return Inception()
