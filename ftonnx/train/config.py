"""Training options: checked once where a run starts, defaults resolved once for the model at hand."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ftonnx.errors import FtonnxError
from ftonnx.runtime import DEVICES
from ftonnx.train.schedule import SCHEDULES

OPTIMIZERS = ("adamw", "sgd")
# The feature scale the default head rate suits: ImageNet backbones' pooled features (EfficientNet-Lite0: 0.41).
FEATURE_RMS = 0.4
FREEZE_POLICIES = ("backbone", "none", "until:SPEC")


@dataclass
class TrainConfig:
    """Training options; everything here is JSON-serialisable and stored in RUN/config.json.

    None means "the default for this model", filled in by `resolved`: lr 1e-3 when only the head
    trains and 1e-4 when pretrained backbone weights train too (ten times that with SGD), weight decay
    1e-4 with AdamW (SGD has none), one warmup epoch when there are several, augmentation on when a
    backbone parameter trains or augmented views are cached. A head on small features learns slowly at
    1e-3 (Adam moves each weight by about lr a step, so the logits move in proportion to the features):
    when only the head trains and the features' RMS is known and below FEATURE_RMS, the rate is raised
    by FEATURE_RMS / RMS.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: int | None = None
    freeze: str = "backbone"
    augment: bool | None = None
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    no_cache: bool = False  # train through the whole graph even when the frozen part is a prefix
    cache_mem: int | None = None  # bytes of activations kept in memory; None: cache.default_mem_limit()
    cache_views: int = 1  # augmented views cached per training image (> 1 implies augmentation)

    def validate(self) -> None:
        """Raise FtonnxError on an option out of range, before any work."""
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, not {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
             f"--lr must be a positive number, not {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"),
            (self.weight_decay is None or self.weight_decay >= 0,
             f"--weight-decay must be >= 0, not {self.weight_decay}"),
            (not (self.optimizer == "sgd" and self.weight_decay),
             "ORT's SGD has no weight decay: use --optimizer adamw or --weight-decay 0"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}"),
            (self.warmup_epochs is None or 0 <= self.warmup_epochs <= self.epochs,
             f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), not {self.warmup_epochs}"),
            (self.device in DEVICES, f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}"),
            (self.cache_mem is None or self.cache_mem >= 1,
             f"--cache-mem must be at least 1 byte, not {self.cache_mem}"),
            (self.cache_views >= 1, f"--cache-views must be at least 1, not {self.cache_views}"),
            (not (self.cache_views > 1 and self.no_cache),
             "--cache-views caches augmented views, which --no-cache turns off; drop one of them"),
            (not (self.cache_views > 1 and self.augment is False),
             "--cache-views caches augmented views, which --no-augment turns off; drop one of them"),
        ]
        for ok, message in checks:
            if not ok:
                raise FtonnxError(message)

    def resolved(self, *, backbone_trains: bool, feature_rms: float | None = None) -> "TrainConfig":
        """A copy with every None default filled in for a model whose backbone does (not) train, and whose
        head reads features of root-mean-square `feature_rms` (when known)."""
        lr = 1e-4 if backbone_trains else 1e-3 * max(1.0, FEATURE_RMS / feature_rms if feature_rms else 1.0)
        return dataclasses.replace(
            self,
            lr=self.lr or (lr * 10 if self.optimizer == "sgd" else lr),
            weight_decay=self.weight_decay if self.weight_decay is not None else
            (1e-4 if self.optimizer == "adamw" else 0.0),
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else (1 if self.epochs > 1 else 0),
            augment=(self.augment if self.augment is not None else backbone_trains) or self.cache_views > 1)

    @property
    def is_resolved(self) -> bool:
        return None not in (self.lr, self.weight_decay, self.warmup_epochs, self.augment)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
