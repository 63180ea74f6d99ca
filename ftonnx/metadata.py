"""The one place that reads and writes ftonnx's entries in a model's `metadata_props`.

Every file ftonnx writes carries what later stages need (labels, preprocessing, which parameters
are head and which backbone), JSON-encoded under keys prefixed with ``ftonnx.``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from ftonnx.errors import FtonnxError

PREFIX = "ftonnx."


CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    The image is scaled so that it covers `resize` (for the shorter side of `size`; the longer side in
    proportion), the centre `size` (H, W) is cropped, pixels become (pixel - mean) / std per channel in
    0-255 units, in `channel_order` (RGB, BGR, or GRAY: one channel, mean and std of length 1), laid out
    `layout`.
    """

    size: tuple[int, int] = (224, 224)
    resize: int = 256
    mean: tuple[float, ...] = (127.0, 127.0, 127.0)
    std: tuple[float, ...] = (128.0, 128.0, 128.0)
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise FtonnxError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, not {self.channel_order!r}")
        if self.layout not in LAYOUTS:
            raise FtonnxError(f"layout must be NCHW or NHWC, not {self.layout!r}")
        if min(self.size) < 1 or self.resize < min(self.size):
            raise FtonnxError(f"input size {self.size} must be positive and resize {self.resize} at least "
                              f"its shorter side")
        if not len(self.mean) == len(self.std) == self.channels:
            raise FtonnxError(f"{self.channel_order} takes {self.channels} mean and std value(s), "
                              f"not {len(self.mean)} and {len(self.std)}")
        if min(self.std) <= 0:
            raise FtonnxError(f"std must be positive, not {self.std}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    def batch_shape(self, n: int) -> tuple[int, int, int, int]:
        """The input tensor's shape for `n` images."""
        h, w = self.size
        return (n, self.channels, h, w) if self.layout == "NCHW" else (n, h, w, self.channels)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(
            size=tuple(d["size"]),
            resize=int(d["resize"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            channel_order=d.get("channel_order", "RGB"),
            layout=d.get("layout", "NCHW"),
        )


@dataclass
class Meta:
    """ftonnx's view of a model's metadata; absent entries are None or empty."""

    labels: list[str] | None = None
    preprocess: Preprocess | None = None
    head_params: list[str] = field(default_factory=list)
    backbone_params: list[str] = field(default_factory=list)
    feature: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels else None


_FIELDS = ("labels", "preprocess", "head_params", "backbone_params", "feature", "source")


def read(model: onnx.ModelProto) -> Meta:
    """Read ftonnx's entries from `model.metadata_props` (other entries are left alone)."""
    raw: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(PREFIX):
            try:
                raw[prop.key[len(PREFIX):]] = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise FtonnxError(f"metadata entry {prop.key!r} is not valid JSON: {exc}") from None
    meta = Meta()
    for name in _FIELDS:
        if name in raw:
            value = raw.pop(name)
            setattr(meta, name, Preprocess.from_json(value) if name == "preprocess" else value)
    meta.extra = raw
    return meta


def write(model: onnx.ModelProto, meta: Meta) -> onnx.ModelProto:
    """Replace ftonnx's entries in `model.metadata_props` with `meta` (in place; returns model)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    values: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(meta, name)
        if value is None or value == []:
            continue
        values[name] = value.to_json() if isinstance(value, Preprocess) else value
    values.update(meta.extra)
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    for key, value in values.items():
        model.metadata_props.add(key=PREFIX + key, value=json.dumps(value))
    return model


def update(model: onnx.ModelProto, **changes: Any) -> onnx.ModelProto:
    """Change some of ftonnx's entries, keeping the others."""
    meta = read(model)
    for name, value in changes.items():
        if name in _FIELDS:
            setattr(meta, name, value)
        else:
            meta.extra[name] = value
    return write(model, meta)


def clear(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove every metadata_props entry (ftonnx's and others'); returns model."""
    del model.metadata_props[:]
    return model


def copy(src: onnx.ModelProto, dst: onnx.ModelProto) -> onnx.ModelProto:
    """Give `dst` all of `src`'s metadata_props (ftonnx's and others'), e.g. after a runtime export."""
    clear(dst)
    for prop in src.metadata_props:
        dst.metadata_props.add(key=prop.key, value=prop.value)
    return dst
