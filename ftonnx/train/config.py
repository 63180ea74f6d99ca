"""Training options: checked once where a run starts, defaults resolved once for the model at hand."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ftonnx.data.images import AUGMENTATIONS
from ftonnx.errors import FtonnxError
from ftonnx.runtime import DEVICES
from ftonnx.train.schedule import SCHEDULES

OPTIMIZERS = ("adamw", "sgd")
# The feature scale the default head rate suits: ImageNet backbones' pooled features (EfficientNet-Lite0: 0.41).
FEATURE_RMS = 0.4
FREEZE_POLICIES = ("backbone", "none", "until:SPEC")
MONITORS = ("val_loss", "val_top1")
DEFAULT_EPOCHS = 5


@dataclass
class TrainConfig:
    """Training options; everything here is JSON-serialisable and stored in RUN/config.json.

    None means "the default for this model", filled in by `resolved`: 5 epochs, lr 1e-3 when only the
    head trains and 1e-4 when pretrained backbone weights train too (ten times that with SGD), weight
    decay 1e-4 with AdamW (SGD has none), one warmup epoch when there are several, "light"
    augmentation when a backbone parameter trains or augmented views are cached, class weights
    "auto" turned into one weight per class. A head on small features learns slowly at 1e-3 (Adam
    moves each weight by about lr a step, so the logits move in proportion to the features): when only
    the head trains and the features' RMS is known and below FEATURE_RMS, the rate is raised by
    FEATURE_RMS / RMS. With `resume`, `epochs` None keeps the run's count and a number makes it a run
    of that many epochs.

    The finetuning strategies (see `ftonnx.train.strategy`): `backbone_lr_mult` scales the rate of
    trainable backbone parameters, `l2sp` and `delta` are the coefficients of the L2-SP and DELTA
    regularisers (`delta_layers`: node SPECs, default the feature map the head pools),
    `label_smoothing` and `class_weights` shape the cross-entropy, `patience` > 0 stops after that
    many epochs without a better `monitor`.

    `qat`: quantisation-aware training (see `ftonnx.train.qat`): the trainable part trains, and validates,
    with fake quantisation where the int8 export quantises, with scales it calibrates first.
    """

    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: int | None = None
    freeze: str = "backbone"
    augment: str | None = None  # none, light (random resized crop and flip) or strong (and colour, RandAugment)
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    no_cache: bool = False  # train through the whole graph even when the frozen part is a prefix
    cache_mem: int | None = None  # bytes of activations kept in memory; None: cache.default_mem_limit()
    cache_views: int = 1  # augmented views cached per training image (> 1 implies augmentation)
    backbone_lr_mult: float = 1.0
    l2sp: float = 0.0
    delta: float = 0.0
    delta_layers: list[str] | None = None
    label_smoothing: float = 0.0
    class_weights: str | list[float] | None = None  # "auto" (inverse class frequency) or one per class
    patience: int = 0
    monitor: str = "val_loss"
    ray: str | None = None  # compute the cache on Ray: a cluster's address, or "local" (ftonnx.cluster)
    qat: bool = False  # quantisation-aware training: fake quantisation where the int8 export quantises

    def validate(self) -> None:
        """Raise FtonnxError on an option out of range, before any work."""
        for ok, message in self._training_checks() + self._strategy_checks():
            if not ok:
                raise FtonnxError(message)

    def _training_checks(self) -> list[tuple[bool, str]]:
        epochs = self.epochs or DEFAULT_EPOCHS
        return [
            (epochs >= 1, f"--epochs must be at least 1, not {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
             f"--lr must be a positive number, not {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"),
            (self.weight_decay is None or self.weight_decay >= 0,
             f"--weight-decay must be >= 0, not {self.weight_decay}"),
            (not (self.optimizer == "sgd" and self.weight_decay),
             "ORT's SGD has no weight decay: use --optimizer adamw or --weight-decay 0"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}"),
            (self.warmup_epochs is None or 0 <= self.warmup_epochs <= epochs,
             f"--warmup-epochs must be between 0 and --epochs ({epochs}), not {self.warmup_epochs}"),
            (self.device in DEVICES, f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}"),
            (self.augment is None or self.augment in AUGMENTATIONS,
             f"unknown augmentation {self.augment!r}; use one of {', '.join(AUGMENTATIONS)}"),
            (self.cache_mem is None or self.cache_mem >= 1,
             f"--cache-mem must be at least 1 byte, not {self.cache_mem}"),
            (self.cache_views >= 1, f"--cache-views must be at least 1, not {self.cache_views}"),
            (not (self.cache_views > 1 and self.no_cache),
             "--cache-views caches augmented views, which --no-cache turns off; drop one of them"),
            (not (self.cache_views > 1 and self.augment == "none"),
             "--cache-views caches augmented views, which --no-augment (--augment none) turns off; drop one of them"),
            (self.ray is None or bool(self.ray.strip()), "--ray: give a cluster's address, or nothing for a local one"),
            (not (self.ray and self.no_cache), "--ray computes the activation cache, which --no-cache turns off; "
                                               "drop one of them"),
        ]

    def _strategy_checks(self) -> list[tuple[bool, str]]:
        weights = self.class_weights
        return [
            (self.backbone_lr_mult > 0 and math.isfinite(self.backbone_lr_mult),
             f"--backbone-lr-mult must be a positive number, not {self.backbone_lr_mult}"),
            (self.l2sp >= 0 and math.isfinite(self.l2sp), f"--l2sp must be >= 0, not {self.l2sp}"),
            (self.delta >= 0 and math.isfinite(self.delta), f"--delta must be >= 0, not {self.delta}"),
            (not (self.delta_layers and not self.delta), "--delta-layers needs --delta ALPHA > 0"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must lie in [0, 1), not {self.label_smoothing}"),
            (weights is None or weights == "auto" or (isinstance(weights, list) and len(weights) > 0 and all(
                isinstance(w, (int, float)) and w > 0 and math.isfinite(w) for w in weights)),
             f"--class-weights must be auto or positive numbers, one per class, not {weights!r}"),
            (self.patience >= 0, f"--patience must be >= 0, not {self.patience}"),
            (self.monitor in MONITORS, f"unknown --monitor {self.monitor!r}; use one of {', '.join(MONITORS)}"),
            (not (self.qat and self.device != "cpu"),
             "--qat trains on the CPU only (ONNX Runtime 1.19.2's CUDA build is not verified with fake "
             "quantisation); drop --device cuda"),
            (not (self.qat and self.optimizer != "adamw"),
             "--qat learns its activation scales with AdamW (SGD's step follows the gradient's size); "
             "drop --optimizer sgd"),
        ]

    def resolved(self, *, backbone_trains: bool, feature_rms: float | None = None,
                 class_counts: list[int] | None = None) -> "TrainConfig":
        """A copy with every None default filled in for a model whose backbone does (not) train, and whose
        head reads features of root-mean-square `feature_rms` (when known); class weights "auto" need the
        training set's `class_counts` (images per class, in class order)."""
        lr = 1e-4 if backbone_trains else 1e-3 * max(1.0, FEATURE_RMS / feature_rms if feature_rms else 1.0)
        epochs = self.epochs or DEFAULT_EPOCHS
        augment = self.augment if self.augment is not None else ("light" if backbone_trains else "none")
        return dataclasses.replace(
            self,
            epochs=epochs,
            lr=self.lr or (lr * 10 if self.optimizer == "sgd" else lr),
            weight_decay=self.weight_decay if self.weight_decay is not None else
            (1e-4 if self.optimizer == "adamw" else 0.0),
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else (1 if epochs > 1 else 0),
            augment="light" if augment == "none" and self.cache_views > 1 else augment,
            class_weights=_class_weights(self.class_weights, class_counts))

    @property
    def is_resolved(self) -> bool:
        return None not in (self.epochs, self.lr, self.weight_decay, self.warmup_epochs, self.augment) and \
            self.class_weights != "auto"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if isinstance(values.get("augment"), bool):  # runs recorded before augmentation policies
            values["augment"] = "light" if values["augment"] else "none"
        return cls(**values)


def _class_weights(weights: str | list[float] | None, counts: list[int] | None) -> list[float] | None:
    """One weight per class: "auto" is inverse frequency, N / (C * n_c), so balanced classes all get 1."""
    if weights is None or (weights != "auto" and counts is None):
        return weights if weights is None else [float(w) for w in weights]
    if counts is None:
        raise FtonnxError("--class-weights auto needs the training set's class counts")
    if weights != "auto":
        if len(weights) != len(counts):
            raise FtonnxError(f"--class-weights gives {len(weights)} weights for {len(counts)} classes")
        return [float(w) for w in weights]
    if min(counts) < 1:
        raise FtonnxError("--class-weights auto: a class has no training images")
    return [sum(counts) / (len(counts) * n) for n in counts]
