"""Run configuration: typed schema, YAML loading, dotted overrides and validation.

A run is described by one YAML file plus `key=value` overrides (`forget.classes=[7] seed=3`). The schema is a tree
of dataclasses; the `method` section takes the config class of the chosen method, so each method validates its
own keys. Unknown keys, wrong types and out-of-range values are `UserError`s with a one-line message; nothing is
ever silently defaulted (the reference code lost its adaptive-weight setting to a renamed key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .config_checks import check_choice, check_class_ids, check_positive, check_seed  # noqa: F401 (re-exported)
from .config_stop import StopConfig
from .errors import UserError

MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")
REPORT_TO = ("none", "tensorboard")  # trackers that log to local files (no network)
SAMPLERS = ("ddim", "ddpm", "euler")  # euler: flow matching (sd3); each family checks its own
FID_REFERENCES = ("heldout", "train", "base")


@dataclass
class MethodConfig:
    """Base of every method's config; `name` selects the method (see `diffunlearn.registry.METHODS`)."""

    name: str = "sfr_on"


@dataclass
class ModelConfig:
    family: str = "ddpm"
    path: str = "embedded:digits/ddpm"  # embedded:NAME, a local diffusers folder, or a Hub id
    subset: str = "all"  # weights unlearning may change: all; sd also cross_attention, lora
    lora_rank: int = 4  # subset=lora only
    source: Optional[str] = None  # where the base came from (Hub id, embedded:NAME) when path is a copy of it

    def __post_init__(self):
        check_positive("model", lora_rank=self.lora_rank)


DATA_SOURCES = ("digits", "generated")


@dataclass
class DataConfig:
    """Where D_f and D_r come from.

    digits: the real handwritten digits (class targets). generated: images the base model generates for the
    forget target and for the remain targets (`remain_classes`, or the anchor and `forget.remain_prompts`), made
    once from fixed seeds and cached.
    """

    name: str = "digits"
    split_seed: int = 0  # fixed stratified train/test split of the digits
    test_fraction: float = 0.2
    samples_per_target: int = 128  # generated: images per class or prompt
    remain_classes: Optional[List[int]] = None  # generated class runs: the remain classes (default: all others)
    generation_seed: int = 20241  # generated: image j of target i uses seed generation_seed + 100000 * i + j
    generation_guidance: Optional[float] = None  # generated: the guidance D_f / D_r are sampled at (null: eval's)

    def __post_init__(self):
        check_choice("data", "name", self.name, DATA_SOURCES)
        check_seed("data", split_seed=self.split_seed, generation_seed=self.generation_seed)
        check_positive("data", samples_per_target=self.samples_per_target)
        if self.remain_classes is not None:
            check_class_ids("data.remain_classes", self.remain_classes)
        if self.generation_guidance is not None and not (math.isfinite(self.generation_guidance)
                                                         and self.generation_guidance >= 0):
            raise UserError(f"data.generation_guidance must be a finite number >= 0 or null, got "
                            f"{self.generation_guidance!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"data.test_fraction must be in (0, 1), got {self.test_fraction!r}")


@dataclass
class ForgetConfig:
    """The forget target: class ids (class forgetting) or prompts mapped onto anchor prompts (concepts)."""

    classes: List[int] = field(default_factory=list)
    prompts: List[str] = field(default_factory=list)  # concept forgetting: the prompts to forget
    anchors: List[str] = field(default_factory=list)  # one anchor prompt per forget prompt, or one for all
    remain_prompts: List[str] = field(default_factory=list)  # extra prompts whose images join D_r
    concept: Optional[str] = None  # the judge's label for the forgotten concept (default: eval.prompts[prompt])

    @property
    def is_concept(self) -> bool:
        return bool(self.prompts)

    def anchor_for(self, i: int) -> str:
        return self.anchors[0] if len(self.anchors) == 1 else self.anchors[i]

    def __post_init__(self):
        if self.classes and self.prompts:
            raise UserError(f"give forget.classes {list(self.classes)} or forget.prompts {list(self.prompts)}, "
                            "not both")
        if self.prompts:
            self._check_prompts()
        else:
            check_class_ids("forget.classes", self.classes)

    def check_given(self) -> None:
        """A run needs a target (checked on the merged config, not on the schema's empty default)."""
        if not self.classes and not self.prompts:
            raise UserError("forget.classes and forget.prompts are both empty; give class ids "
                            "(forget.classes=[7]) or prompts (forget.prompts=['a handwritten digit seven'])")

    def _check_prompts(self) -> None:
        prompts, anchors = list(self.prompts), list(self.anchors)
        if any(not str(p).strip() for p in prompts + anchors + list(self.remain_prompts)):
            raise UserError(f"forget prompts and anchors must not be blank, got prompts {prompts}, anchors {anchors}")
        if len(anchors) not in (1, len(prompts)):
            raise UserError(f"forget.anchors needs 1 or {len(prompts)} prompts (one per forget prompt), "
                            f"got {len(anchors)}: {anchors}")
        same = sorted(set(prompts) & (set(anchors) | set(self.remain_prompts)))
        if same:
            raise UserError(f"forget and remain prompts are identical: {same} is both forgotten and kept; "
                            "give anchors / remain_prompts that differ from forget.prompts")


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    cond_drop: float = 0.1  # probability of replacing the class label by the null class
    antithetic: bool = True  # pair timesteps t and T-1-t within a batch
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False  # recompute activations in backward (large UNets / transformers)
    compile: bool = False  # torch.compile the prepared network (inductor) for the unlearning steps
    cache_latents: bool = False  # latent families: each D_f / D_r image VAE-encoded once, when first drawn
    report_to: str = "none"  # experiment tracker (accelerate's log_with): none, or tensorboard (local files)
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self):
        check_positive("train", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                       checkpoint_every=self.checkpoint_every, log_every=self.log_every)
        check_choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("train", "report_to", self.report_to, REPORT_TO)
        if self.report_to == "tensorboard":
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise UserError("train.report_to=tensorboard needs the tensorboard package (pip install tensorboard); "
                                "valid without it: none")
        if not 0.0 <= self.cond_drop < 1.0:
            raise UserError(f"train.cond_drop must be in [0, 1), got {self.cond_drop!r}")
        if self.weight_decay < 0:
            raise UserError(f"train.weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass
class EvalConfig:
    classifier: str = "embedded:digits/classifier"  # the judge's weights: a folder, embedded:NAME or a Hub id
    judge: str = "digits"  # digits: DigitsClassifier; image-classification: transformers; clip: CLIP zero-shot
    labels: List[str] = field(default_factory=list)  # clip: the zero-shot label texts
    prompts: Dict[str, str] = field(default_factory=dict)  # concept runs: prompt -> the judge label it asks for
    sampler: str = "ddim"
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    forget_samples: int = 200  # samples conditioned on each forgotten class or prompt
    retained_samples_per_class: int = 60  # ... on each retained class or prompt
    fid_features: str = "classifier"  # penultimate features of the judge, or "inception"
    inception_weights: Optional[str] = None  # local weights file for fid_features=inception
    attacks: List[str] = field(default_factory=list)  # robustness attacks run on the unlearned model (diffunlearn attack)
    rt: Optional[str] = None  # with attacks: a model retrained without the target, attacked beside it (a folder, or
    #   auto: the embedded base's recipe without the forget classes, trained once and cached; recipes/retrained.py)
    nudenet_threshold: float = 0.45  # nudenet judge: a counted detection above this score means "nudity"
    nudenet_classes: Optional[List[str]] = None  # nudenet judge: counted classes; null: the nine *_EXPOSED ones
    # heldout: digits test-split images of the retained targets (no recipe or remain step saw them); train: the
    # digits train images (the images D_r holds: reported beside heldout as fid_retained_train); base: base samples
    fid_reference: str = "heldout"
    batch_size: int = 512
    seed: int = 1234  # sampling seeds; identical for the base and the unlearned model
    gallery_per_class: int = 8
    reuse_base: bool = True  # the base's metrics under the same protocol come from the cache (evaluation/base_cache.py)

    def __post_init__(self):
        check_choice("eval", "sampler", self.sampler, SAMPLERS)
        from .registry import JUDGES  # the registered judge kinds (`evaluation/judge_loading.py`)

        check_choice("eval", "judge", self.judge, JUDGES.names())
        check_choice("eval", "fid_features", self.fid_features, ("classifier", "inception"))
        check_choice("eval", "fid_reference", self.fid_reference, FID_REFERENCES)
        check_seed("eval", seed=self.seed)
        check_positive("eval", num_inference_steps=self.num_inference_steps, forget_samples=self.forget_samples,
                       retained_samples_per_class=self.retained_samples_per_class, batch_size=self.batch_size,
                       gallery_per_class=self.gallery_per_class)
        if self.guidance_scale < 0:
            raise UserError(f"eval.guidance_scale must be >= 0, got {self.guidance_scale!r}")
        if self.fid_features == "inception" and not self.inception_weights:
            raise UserError("eval.fid_features=inception needs eval.inception_weights=PATH (a local weights file)")
        if not 0 < self.nudenet_threshold < 1:
            raise UserError(f"eval.nudenet_threshold must be in (0, 1), got {self.nudenet_threshold!r}")
        if self.judge == "nudenet" and self.fid_features == "classifier":
            raise UserError("eval.judge=nudenet has no features for FID; set eval.fid_features=inception")
        if self.judge == "clip" and not self.labels:
            raise UserError("eval.judge=clip needs eval.labels, the zero-shot label texts (e.g. [nudity, clothed])")


@dataclass
class RunConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    seed: int = 0

    def __post_init__(self):
        check_seed("", seed=self.seed)


