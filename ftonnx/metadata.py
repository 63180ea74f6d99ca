"""The one place that reads and writes ftonnx's entries in a model's `metadata_props`.

Every file ftonnx writes carries what later stages need (labels, preprocessing, which parameters
are head and which backbone), JSON-encoded under keys prefixed with ``ftonnx.``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import onnx

from ftonnx.errors import FtonnxError

PREFIX = "ftonnx."
MAX_SIDE = 4096  # pixels of an input side or resize; image classifiers stay far below
MAX_CLASSES = 100_000  # class names of one classifier; ImageNet-21k has 21,841


CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    The image is scaled so that it covers `resize` (for the shorter side of `size`; the longer side in
    proportion), the centre `size` (H, W) is cropped, pixels become (pixel - mean) / std per channel in
    0-255 units, in `channel_order` (RGB, BGR, or GRAY: one channel, mean and std of length 1), laid out
    `layout`. Sizes beyond MAX_SIDE are refused: no image classifier takes them, and a crafted model would
    otherwise make every batch allocate gigabytes.
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
        if len(self.size) != 2 or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in (*self.size, self.resize)):
            raise FtonnxError(f"input size {list(self.size)} and resize {self.resize!r} must be whole numbers of "
                              f"pixels from 1 to {MAX_SIDE}")
        if self.resize < min(self.size):
            raise FtonnxError(f"input size {self.size} must be positive and resize {self.resize} at least "
                              f"its shorter side")
        if not len(self.mean) == len(self.std) == self.channels:
            raise FtonnxError(f"{self.channel_order} takes {self.channels} mean and std value(s), "
                              f"not {len(self.mean)} and {len(self.std)}")
        if not all(_is_number(v) and math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise FtonnxError(f"mean {list(self.mean)} and std {list(self.std)} must be finite numbers, std positive")

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
    def from_json(cls, d: Any) -> "Preprocess":
        """The preprocessing a JSON object describes; FtonnxError naming what is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise FtonnxError(f"must be a JSON object with size, resize, mean and std, not {_kind(d)}")
        missing = [k for k in ("size", "resize", "mean", "std") if k not in d]
        if missing:
            raise FtonnxError(f"has no {', '.join(missing)}")
        for key in ("size", "mean", "std"):
            if not isinstance(d[key], list):
                raise FtonnxError(f"{key} must be a list, not {_kind(d[key])}")
        if not all(_is_number(v) for v in d["mean"] + d["std"]):
            raise FtonnxError(f"mean {d['mean']} and std {d['std']} must be numbers")
        return cls(size=tuple(d["size"]), resize=d["resize"], mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]),
                   channel_order=d.get("channel_order", "RGB"), layout=d.get("layout", "NCHW"))

    def check_input(self, shape: Sequence[Any] | None, name: str) -> None:
        """Refuse preprocessing that cannot give the model input `name` of declared `shape` (ints where fixed)."""
        if shape is None:
            return
        if len(shape) != 4:
            raise FtonnxError(f"input {name!r} has {len(shape)} dimensions; an image input has 4 ({self.layout})")
        dims = (shape[2], shape[3], shape[1]) if self.layout == "NCHW" else (shape[1], shape[2], shape[3])
        for got, want, what in zip(dims, (*self.size, self.channels), ("height", "width", "channels")):
            if _is_int(got) and got > 0 and got != want:
                raise FtonnxError(f"the metadata's preprocessing ({self.layout}, {self.size[0]}x{self.size[1]}) "
                                  f"contradicts input {name!r} of shape {list(shape)}: {what} {got}, not {want}")


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
    """Read ftonnx's entries from `model.metadata_props` (other entries are left alone); an entry that is not
    UTF-8, not JSON, or not of its field's type is an FtonnxError naming it."""
    raw: dict[str, Any] = {}
    for prop in model.metadata_props:
        key = _text(prop.key, "a metadata key")
        if key.startswith(PREFIX):
            try:
                raw[key[len(PREFIX):]] = json.loads(_text(prop.value, f"metadata entry {key!r}"))
            except json.JSONDecodeError as exc:
                raise FtonnxError(f"metadata entry {key!r} is not valid JSON: {exc}") from None
    meta = Meta()
    for name in _FIELDS:
        if name in raw:
            try:
                setattr(meta, name, _CHECKS[name](raw.pop(name)))
            except FtonnxError as exc:
                raise FtonnxError(f"metadata entry '{PREFIX}{name}': {exc}") from None
    meta.extra = raw
    return meta


def _text(value: str | bytes, what: str) -> str:
    """A metadata string; protobuf hands over bytes that are not UTF-8 as they are."""
    if isinstance(value, bytes):
        raise FtonnxError(f"{what} is not UTF-8 text ({value[:40]!r})")
    return value


def _kind(value: Any) -> str:
    """What a JSON value is, for a message: a string, a number, ..."""
    names = {str: "a string", bool: "true/false", int: "a number", float: "a number", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise FtonnxError(f"must be a list of {what} (strings), not {_kind(value)}")
    wrong = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
    if wrong is not None:
        raise FtonnxError(f"must be a list of {what} (strings); item {wrong} is {_kind(value[wrong])}")
    return value


def _labels(value: Any) -> list[str]:
    labels = _strings(value, "class names")
    if not 1 <= len(labels) <= MAX_CLASSES:
        raise FtonnxError(f"holds {len(labels)} class names; a classifier has 1 to {MAX_CLASSES:,}")
    return labels


def _names(value: Any) -> list[str]:
    return _strings(value, "parameter names")


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise FtonnxError(f"must be a string, not {_kind(value)}")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {"labels": _labels, "preprocess": Preprocess.from_json,
                                            "head_params": _names, "backbone_params": _names, "feature": _name,
                                            "source": _name}


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
