"""Learning-rate schedules, evaluated per step: linear warmup, then cosine decay or a constant rate.

Warmup eases the first updates of a pretrained network; cosine decay ends near zero at the last step.
"""

from __future__ import annotations

import math

from ftonnx.errors import FtonnxError

SCHEDULES = ("cosine", "constant")


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
