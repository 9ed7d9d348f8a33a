"""Judges: the classifiers that decide which class or concept a generated image shows.

Forget and retained accuracy are only as meaningful as the judge, so every judge records what it is (`protocol`).
Three kinds, chosen by `eval.judge`:

- ``digits``: the package's `DigitsClassifier`; its "not a digit" output is the prediction -1 (no label).
- ``image-classification``: any transformers `AutoModelForImageClassification` (e.g. an ImageNet ResNet or ViT
  for DiT; DiT's class ids are the classifier's ImageNet ids).
- ``clip``: zero-shot CLIP: the label whose text embedding (of `template` filled with the label) has the highest
  cosine similarity with the image embedding.

All judges take images (N, C, H, W) as floats in [0, 1]. Preprocessing runs in torch on the judge's device through
the model's own (torchvision-backend) image processor, batched, with rescaling off because inputs are already in
[0, 1]. Weights are only loaded from safetensors and no remote code is run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..assets import weights_sha256
from ..errors import UserError

CLIP_TEMPLATE = "a photo of {label}"
PROCESSOR_KEYS = ("do_resize", "size", "resample", "crop_pct", "do_center_crop", "crop_size", "do_normalize",
                  "image_mean", "image_std")


class Judge:
    """Base of all judges: batched prediction on the judge's device, predictions returned on the CPU.

    Attributes:
        labels: label names; predictions index into this list (-1: none of the labels).
        feature_extractor: `nn.Module` mapping images (N, C, H, W) in [0, 1] to features (N, d) for FID, with
            attribute `num_features` = d; None if the judge has none.
    """

    kind = ""
    batch_size = 256
    feature_extractor = None

    def __init__(self, labels, source: str, device="cpu"):
        self.labels, self.source, self.device = list(labels), source, torch.device(device)

    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, L + 1) over the labels and, last, "none of them" (0 for judges that always pick one)."""
        raise NotImplementedError

    def _predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Label indices (N,), -1 for "none of them": the most probable column of `_probabilities`."""
        best = self._probabilities(images).argmax(-1)
        return torch.where(best == len(self.labels), -1, best)

    def _batches(self, images: torch.Tensor, fn) -> list:
        return [fn(images[i:i + self.batch_size].to(self.device)).cpu() for i in range(0, len(images), self.batch_size)]

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.LongTensor:
        """Label indices (N,) on the CPU of images (N, C, H, W) in [0, 1]; -1 where the judge sees none of them."""
        preds = [p.long() for p in self._batches(images, self._predict_batch)]
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L + 1) on the CPU: the judge's probability of each label and, last, of none of them (the verdict of
        `predict` as one-hot for a judge without probabilities)."""
        try:
            probs = [p.float() for p in self._batches(images, self._probabilities)]
        except NotImplementedError:
            verdicts = self.predict(images)
            return torch.nn.functional.one_hot(torch.where(verdicts < 0, len(self.labels), verdicts),
                                               len(self.labels) + 1).float()
        return torch.cat(probs) if probs else torch.empty(0, len(self.labels) + 1)

    def protocol(self) -> dict:
        """JSON-able description: kind, source, weight digest, what "recognised" means, features."""
        features = self.feature_extractor
        return {"kind": self.kind, "source": self.source, **weights_record(self.source),
                "num_labels": len(self.labels),
                "feature_dim": int(features.num_features) if features is not None else None}


def weights_record(source: str) -> dict:
    """{"weights_sha256": digest of the safetensors files} for a local folder or an already cached Hub id."""
    folder = source
    if not Path(source).is_dir():
        try:  # only the local cache: never downloads
            from huggingface_hub import snapshot_download

            folder = snapshot_download(source, local_files_only=True)
        except Exception:  # noqa: BLE001 - a digest is a record, its absence is not an error
            return {"weights_sha256": None}
    return {"weights_sha256": weights_sha256(folder)}


class DigitsJudge(Judge):
    """The embedded `DigitsClassifier` (or a folder of one); its reject output ("not a digit") predicts -1.

    Features for FID: the classifier's penultimate activations (`PenultimateFeatures`, d = channels[-1]).
    """

    kind = "digits"
    batch_size = 1024

    def __init__(self, classifier, source: str, device="cpu"):
        from ..data.digits import DIGIT_NAMES
        from ..models.digits_classifier import PenultimateFeatures

        num_classes = classifier.config.num_classes
        names = list(DIGIT_NAMES) + [f"class {i}" for i in range(len(DIGIT_NAMES), num_classes)]
        super().__init__(names[:num_classes], source, device)
        self.classifier = classifier.to(self.device).eval()
        self.feature_extractor = PenultimateFeatures(self.classifier)

    def _probabilities(self, images):
        probs = self.classifier(images).softmax(-1)  # (N, 10 + reject output, if any)
        none = probs[:, len(self.labels):].sum(-1, keepdim=True)
        return torch.cat([probs[:, :len(self.labels)], none], dim=1)

    def protocol(self) -> dict:
        return {**super().protocol(), "classifier_reject_output": bool(self.classifier.config.reject_class),
                "recognised_means": "classifier argmax == the target class (a 'not a digit' output never counts)",
                "labels": self.labels, "features": "classifier-penultimate"}


def preprocess(processor, images: torch.Tensor) -> torch.Tensor:
    """Pixel values (N, 3, h, w) for a transformers model from images (N, C, H, W) in [0, 1], on their device.

    Uses the model's torchvision-backend image processor (resize, crop, normalise per its config) with rescaling
    off; grey images are repeated to RGB.
    """
    images = images.float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return processor(images=images, do_rescale=False, return_tensors="pt",
                     input_data_format="channels_first")["pixel_values"].to(images.device)


def processor_record(processor) -> dict:
    config = processor.to_dict()
    return {"processor": type(processor).__name__, **{k: config[k] for k in PROCESSOR_KEYS if k in config}}


class HeadInputFeatures(nn.Module):
    """FID features of an image classifier: the input of its `classifier` head (the pooled penultimate output).

    Images (N, C, H, W) in [0, 1] -> features (N, d), float64.
    """

    def __init__(self, model, processor, num_features: int):
        super().__init__()
        self.model, self.processor, self.num_features = model, processor, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        captured = []
        hook = self.model.classifier.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.model(pixel_values=preprocess(self.processor, images))
        finally:
            hook.remove()
        return captured[0].flatten(1).double()


def head_input_features(model, processor):
    """`HeadInputFeatures` when the model has a `classifier` head with a linear layer, else None."""
    head = getattr(model, "classifier", None)
    linear = next((m for m in head.modules() if isinstance(m, nn.Linear)), None) if head is not None else None
    return HeadInputFeatures(model, processor, linear.in_features) if linear is not None else None


class ImageClassificationJudge(Judge):
    """A transformers image classifier; labels are its `config.id2label`, predictions its argmax (never -1)."""

    kind = "image-classification"

    def __init__(self, model, processor, source: str, device="cpu"):
        id2label = model.config.id2label
        super().__init__([id2label[i] for i in range(len(id2label))], source, device)
        self.model, self.processor = model.to(self.device).eval(), processor
        self.feature_extractor = head_input_features(self.model, processor)

    def _probabilities(self, images):
        probs = self.model(pixel_values=preprocess(self.processor, images)).logits.float().softmax(-1)
        return torch.cat([probs, torch.zeros_like(probs[:, :1])], dim=1)

    def protocol(self) -> dict:
        return {**super().protocol(), "architecture": (self.model.config.architectures or [None])[0],
                "recognised_means": "classifier argmax == the target class id (class-conditional models use the "
                                    "classifier's ids, e.g. ImageNet-1k for DiT)",
                "preprocessing": processor_record(self.processor),
                "features": "input of the classifier head (pooled penultimate)" if self.feature_extractor else None}


def pooled(output) -> torch.Tensor:
    """The projected embedding from `CLIPModel.get_*_features` (a tensor, or an output with `pooler_output`)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class CLIPImageFeatures(nn.Module):
    """CLIP image embeddings (projected, not normalised): images (N, C, H, W) in [0, 1] -> (N, projection_dim)."""

    def __init__(self, model, processor):
        super().__init__()
        self.model, self.processor = model, processor
        self.num_features = model.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_image_features(pixel_values=preprocess(self.processor, images)))


class CLIPJudge(Judge):
    """Zero-shot CLIP: the label whose text embedding of `template.format(label=...)` is most cosine-similar to
    the image embedding. Every image gets one of the labels (never -1), so give labels for what else it may show.
    """

    kind = "clip"

    def __init__(self, model, tokenizer, processor, labels, source: str, template: str = CLIP_TEMPLATE,
                 device="cpu"):
        if not labels:
            raise UserError("eval.judge=clip needs eval.labels, the zero-shot label texts (e.g. [nudity, clothed])")
        super().__init__(labels, source, device)
        self.model, self.processor, self.template = model.to(self.device).eval(), processor, template
        self.feature_extractor = CLIPImageFeatures(self.model, processor)
        self.texts = [template.format(label=label) for label in self.labels]
        max_length = model.config.text_config.max_position_embeddings
        tokens = tokenizer(self.texts, padding="max_length", truncation=True, max_length=max_length,
                           return_tensors="pt").to(self.device)
        with torch.inference_mode():
            text = pooled(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                       attention_mask=tokens.get("attention_mask")))
        self.text_embeddings = nn.functional.normalize(text.float(), dim=-1)  # (L, d)

    def similarities(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """CLIP logits (N, L) of image embeddings (N, d): logit_scale x cosine similarity with the label texts."""
        image = nn.functional.normalize(image_embeddings.float().to(self.device), dim=-1)
        return self.model.logit_scale.exp().float() * (image @ self.text_embeddings.T)

    def assign(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Label indices (N,) of image embeddings (N, d): argmax of cosine similarity with the label texts."""
        return self.similarities(image_embeddings).argmax(-1)

    def _probabilities(self, images):
        probs = self.similarities(self.feature_extractor(images)).softmax(-1)  # CLIP's zero-shot softmax
        return torch.cat([probs, torch.zeros_like(probs[:, :1])], dim=1)

    def protocol(self) -> dict:
        return {**super().protocol(), "labels": self.labels, "template": self.template, "label_texts": self.texts,
                "recognised_means": "argmax over labels of the cosine similarity between the CLIP image embedding "
                                    "and the text embedding of template.format(label) == the target's label",
                "preprocessing": processor_record(self.processor), "features": "CLIP image embeddings (projected)"}


