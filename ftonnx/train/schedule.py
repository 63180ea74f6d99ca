"""Learning-rate schedules, evaluated per step: linear warmup, then cosine decay or a constant rate.

Warmup eases the first updates of a pretrained network; by default it lasts one epoch when there
is more than one epoch (`default_warmup_epochs`), none for a single-epoch run. Cosine decay ends
near zero at the last step.
"""

from __future__ import annotations

import math

from ftonnx.errors import FtonnxError

SCHEDULES = ("cosine", "constant")


def default_lr(backbone_trains: bool, optimizer: str = "adamw") -> float:
    """AdamW: 1e-3 when only the head trains, 1e-4 when pretrained backbone weights train too (so that
    the first updates do not wreck the features the head relies on); SGD: ten times those."""
    lr = 1e-4 if backbone_trains else 1e-3
    return lr * 10 if optimizer == "sgd" else lr


def default_warmup_epochs(epochs: int) -> int:
    """One warmup epoch when the run has several, none for a single epoch."""
    return 1 if epochs > 1 else 0


def learning_rate(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  schedule: str = "cosine") -> float:
    """The rate for 0-based `step` of `total_steps`: linear warmup over `warmup_steps`, then `schedule`."""
    if schedule not in SCHEDULES:
        raise FtonnxError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
