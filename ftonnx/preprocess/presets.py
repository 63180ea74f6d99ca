"""The preprocessing conventions models are trained with, and what a user may say about them.

A model without ftonnx metadata needs its preprocessing from the user: a preset (`imagenet`,
`inception`, `caffe`, `unit`, `raw`; `auto` chooses one by evidence) and overrides (`--size`,
`--resize`, `--mean`, `--std`, `--bgr`, `--gray`, `--nhwc`). Means and standard deviations are
kept in 0-255 pixel units; values copied from model cards in 0-1 units are recognised and scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftonnx.errors import FtonnxError

CROP = 0.875  # the centre crop of the presets: 224 of 256, as torchvision, timm, Paddle and TF evaluate


@dataclass(frozen=True)
class Preset:
    """One convention: normalisation in 0-255 units and channel order."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    about: str = ""


PRESETS: dict[str, Preset] = {
    "imagenet": Preset((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB",
                       "mean 0.485/0.456/0.406, std 0.229/0.224/0.225 of 255 (torchvision, timm, Paddle)"),
    "inception": Preset((127.5,) * 3, (127.5,) * 3, "RGB",
                        "(x - 127.5) / 127.5 (TF/Keras MobileNet, EfficientNet-Lite)"),
    "caffe": Preset((103.939, 116.779, 123.68), (1.0,) * 3, "BGR", "BGR, the ImageNet mean subtracted, no std"),
    "unit": Preset((0.0,) * 3, (255.0,) * 3, "RGB", "x / 255"),
    "raw": Preset((0.0,) * 3, (1.0,) * 3, "RGB", "pixels 0-255 unchanged"),
}
AUTO = "auto"


@dataclass(frozen=True)
class PreprocessFlags:
    """What the command line says about preprocessing; None or False where it says nothing.
    `mean` and `std` are in 0-255 units (see `pixel_units`)."""

    preset: str | None = None
    size: tuple[int, int] | None = None
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False
    gray: bool = False
    nhwc: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in (*PRESETS, AUTO):
            raise FtonnxError(f"unknown preprocessing preset {self.preset!r}; use one of "
                              f"{', '.join([*PRESETS, AUTO])}")
        if self.bgr and self.gray:
            raise FtonnxError("--bgr and --gray contradict each other; a grayscale input has one channel")
        if self.size is not None and min(self.size) < 1:
            raise FtonnxError(f"--size must be positive, not {self.size}")
        if self.resize is not None and self.resize < 1:
            raise FtonnxError(f"--resize must be positive, not {self.resize}")

    @property
    def given(self) -> bool:
        """Whether the command line says anything about preprocessing."""
        return self != PreprocessFlags()


def pixel_units(values: list[float], what: str) -> tuple[float, ...]:
    """`--mean`/`--std` values in 0-255 units: all in [0, 1] means 0-1 units (scaled by 255), all above 1
    means 0-255 units. A std of exactly 1 is refused as ambiguous (x / 255, or pixels unchanged?)."""
    if len(values) not in (1, 3):
        raise FtonnxError(f"--{what} takes one value or three (one per channel), not {len(values)}")
    if what == "std" and any(v <= 0 for v in values):
        raise FtonnxError(f"--std must be positive, not {', '.join(map(str, values))}")
    if what == "mean" and any(v < 0 for v in values):
        raise FtonnxError(f"--mean must not be negative, not {', '.join(map(str, values))}")
    nonzero = [v for v in values if v != 0]
    unit_range = bool(nonzero) and all(v <= 1 for v in nonzero)
    if not unit_range and any(v <= 1 for v in nonzero):
        raise FtonnxError(f"--{what} {', '.join(map(str, values))} mixes 0-1 and 0-255 units; give all in one")
    if what == "std" and unit_range and 1.0 in values:
        raise FtonnxError("--std 1 is ambiguous: for x / 255 give --std 255 (or --preprocess unit), for pixels "
                          "unchanged use --preprocess raw")
    return tuple(v * 255 if unit_range else float(v) for v in values)
