"""Loading the judge a run config names (`eval.judge`, `eval.classifier`), refusing what it cannot score with.

Each judge kind registers its loader here with `@register_judge` (`registry.JUDGES`)."""

from __future__ import annotations

from ..assets import resolve_model_path
from ..errors import UserError
from ..registry import get_judge, register_judge
from .judges import CLIPJudge, DigitsJudge, ImageClassificationJudge, Judge


def complete(loaded):
    """The model of `from_pretrained(..., output_loading_info=True)`; refuses one whose weights are not all in the
    checkpoint (e.g. a CLIP folder loaded as a classifier gets a freshly initialised, random head)."""
    model, info = loaded
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"its checkpoint lacks {len(missing)} weights of that model, e.g. {missing[0]}")
    return model


@register_judge("digits", valid="a DigitsClassifier folder (config.json + safetensors) or embedded:NAME")
def _load_digits(source, eval_cfg, device):
    from ..models.digits_classifier import DigitsClassifier

    model = complete(DigitsClassifier.from_pretrained(source, use_safetensors=True, output_loading_info=True))
    return DigitsJudge(model, source, device)


@register_judge("image-classification", valid="a transformers image-classification model folder or Hub id with "
                "safetensors weights and a preprocessor_config.json")
def _load_image_classification(source, eval_cfg, device):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = complete(AutoModelForImageClassification.from_pretrained(source, use_safetensors=True,
                                                                     output_loading_info=True))
    processor = AutoImageProcessor.from_pretrained(source, backend="torchvision")
    return ImageClassificationJudge(model, processor, source, device)


@register_judge("clip", valid="a transformers CLIPModel folder or Hub id with safetensors weights, tokenizer and "
                "preprocessor_config.json")
def _load_clip(source, eval_cfg, device):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if not eval_cfg.labels:
        raise UserError("eval.judge=clip needs eval.labels, the zero-shot label texts (e.g. [nudity, clothed])")
    model = complete(CLIPModel.from_pretrained(source, use_safetensors=True, output_loading_info=True))
    tokenizer = AutoTokenizer.from_pretrained(source)
    processor = AutoImageProcessor.from_pretrained(source, backend="torchvision")
    return CLIPJudge(model, tokenizer, processor, list(eval_cfg.labels), source, device=device)


@register_judge("nudenet", valid="nudenet (the detector inside the nudenet wheel) or a NudeNet .onnx file")
def _load_nudenet(source, eval_cfg, device):
    from .nudenet_judge import EXPOSED, NudeNetJudge

    classes = list(eval_cfg.nudenet_classes) if eval_cfg.nudenet_classes else EXPOSED
    return NudeNetJudge(source, eval_cfg.nudenet_threshold, classes, device)


def load_judge(eval_cfg, device="cpu") -> Judge:
    """The judge of `eval_cfg.judge` loaded from `eval_cfg.classifier` (local folder, embedded:NAME or Hub id).

    Raises:
        UserError: an unknown judge kind, empty clip labels, or a source that is not a model of that kind (also a
            Hub id that is not in the local cache when offline, and pickle-only weights).
    """
    kind = get_judge(eval_cfg.judge)
    # a NudeNet detector is one ONNX file (or the wheel's own), not a model folder
    source = eval_cfg.classifier if eval_cfg.judge == "nudenet" else resolve_model_path(eval_cfg.classifier)
    try:
        return kind.load(source, eval_cfg, device)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"eval.classifier {eval_cfg.classifier!r} cannot be loaded as an eval.judge="
                        f"{eval_cfg.judge} model ({reason}); valid: {kind.valid}") from None
