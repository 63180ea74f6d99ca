"""The preprocessing a command uses for a model, and where each of its values came from.

Sources, strongest first: the command line (an override, then a preset), the model's ftonnx
metadata, its static input shape (layout, channels, height and width), a default. A flag that
contradicts a static input shape is refused; what stays unknown is listed with the flag that gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.metadata import Preprocess
from ftonnx.preprocess.presets import AUTO, CROP, PRESETS, PreprocessFlags

FIELDS = ("layout", "channel_order", "size", "resize", "mean", "std")
_PRESET_NAMES = "|".join(PRESETS)


@dataclass(frozen=True)
class InputFacts:
    """What the model's image input shape says: layout, channel count, and (H, W) when static."""

    name: str
    shape: list
    layout: str | None = None
    channels: int | None = None
    size: tuple[int, int] | None = None


def facts_from_shape(name: str, shape: list) -> InputFacts:
    """Read an image input's static dims: (N, C, H, W) with C 1 or 3 is NCHW, (N, H, W, C) NHWC."""
    shape = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(shape) != 4:
        return InputFacts(name, shape)
    for layout, c, (h, w) in (("NCHW", shape[1], shape[2:]), ("NHWC", shape[3], shape[1:3])):
        if c in (1, 3):
            return InputFacts(name, shape, layout, c, (h, w) if h and w else None)
    return InputFacts(name, shape)


def input_facts(model: onnx.ModelProto) -> InputFacts:
    """The facts of the model's one image input."""
    index = GraphIndex(model)
    if len(index.inputs) != 1:
        raise FtonnxError(f"the model has {len(index.inputs)} inputs ({', '.join(index.inputs)}); "
                          "an image classifier has one")
    return facts_from_shape(index.inputs[0], index.shapes.get(index.inputs[0]) or [])


@dataclass
class Resolution:
    """The preprocessing, field by field, with its sources; `preprocess` is None while a field is missing."""

    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    facts: InputFacts | None = None

    @property
    def missing(self) -> list[str]:
        return [f for f in FIELDS if f not in self.values]

    @property
    def preprocess(self) -> Preprocess | None:
        return None if self.missing else Preprocess(**self.values)  # type: ignore[arg-type]

    def require(self) -> Preprocess:
        """The preprocessing, or one line saying what is missing and which flag gives it."""
        if "size" in self.missing:
            raise FtonnxError(f"the model's input {self.facts.name!r} has dynamic height and width "
                              f"{_shape(self.facts.shape)}: pass --size H[,W]")
        if self.missing:
            raise FtonnxError(f"the model's metadata has no preprocessing ({', '.join(self.missing)} unknown): "
                              f"pass --preprocess {_PRESET_NAMES}|auto (see ftonnx inspect MODEL)")
        return self.preprocess  # type: ignore[return-value]

    def set(self, name: str, value: object, source: str) -> None:
        self.values[name], self.sources[name] = value, source


def _shape(shape: list) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def resolve(model: onnx.ModelProto, flags: PreprocessFlags | None = None) -> Resolution:
    """The preprocessing `model` takes under `flags` (`--preprocess auto` leaves the normalisation to
    `ftonnx.preprocess.auto.choose`)."""
    return resolve_facts(input_facts(model), metadata.read(model).preprocess, flags)


def resolve_facts(facts: InputFacts, stored: Preprocess | None, flags: PreprocessFlags | None = None) -> Resolution:
    """`resolve` from an input's facts and the stored preprocessing (for a session, e.g. of an .ort file)."""
    flags = flags or PreprocessFlags()
    preset_name = None if flags.preset == AUTO else flags.preset
    preset = PRESETS.get(preset_name) if preset_name else None
    r = Resolution(facts=facts)
    _layout_and_channels(r, flags, facts, stored, preset, preset_name)
    _size(r, flags, facts, stored)
    _normalisation(r, flags, stored, preset, preset_name)
    return r


def _check(flag: str, facts: InputFacts, ok: bool) -> None:
    if not ok:
        raise FtonnxError(f"{flag} contradicts the model's input {facts.name!r} {_shape(facts.shape)}")


def _layout_and_channels(r: Resolution, flags: PreprocessFlags, facts: InputFacts, stored: Preprocess | None,
                         preset, preset_name: str | None) -> None:
    if flags.nhwc:
        _check("--nhwc", facts, facts.layout in (None, "NHWC"))
        r.set("layout", "NHWC", "--nhwc")
    elif stored is not None:
        r.set("layout", stored.layout, "metadata")
    elif facts.layout:
        r.set("layout", facts.layout, "input shape")
    else:
        r.set("layout", "NCHW", "default")
    if flags.gray:
        _check("--gray", facts, facts.channels in (None, 1))
        r.set("channel_order", "GRAY", "--gray")
    elif facts.channels == 1 and (stored is None or stored.channel_order != "GRAY"):
        _check("--bgr", facts, not flags.bgr)
        r.set("channel_order", "GRAY", "input shape (one channel)")
    elif flags.bgr:
        _check("--bgr", facts, facts.channels in (None, 3))
        r.set("channel_order", "BGR", "--bgr")
    elif preset is not None:
        r.set("channel_order", preset.channel_order, f"preset {preset_name}")
    elif stored is not None:
        r.set("channel_order", stored.channel_order, "metadata")
    else:
        r.set("channel_order", "RGB", "default")


def _size(r: Resolution, flags: PreprocessFlags, facts: InputFacts, stored: Preprocess | None) -> None:
    if flags.size is not None:
        _check(f"--size {flags.size[0]},{flags.size[1]}", facts, facts.size in (None, flags.size))
        r.set("size", flags.size, "--size")
    elif stored is not None:
        r.set("size", stored.size, "metadata")
    elif facts.size is not None:
        r.set("size", facts.size, "input shape")
    if flags.resize is not None:
        r.set("resize", flags.resize, "--resize")
    elif stored is not None and "size" in r.values and stored.size == r.values["size"]:
        r.set("resize", stored.resize, "metadata")
    elif "size" in r.values:
        r.set("resize", round(min(r.values["size"]) / CROP), f"default (centre crop {CROP})")


def _normalisation(r: Resolution, flags: PreprocessFlags, stored: Preprocess | None, preset,
                   preset_name: str | None) -> None:
    order = r.values["channel_order"]
    for name in ("mean", "std"):
        given = getattr(flags, name)
        if given is not None:
            r.set(name, _per_channel(given, order, name), f"--{name}")
        elif preset is not None:
            values = getattr(preset, name)
            if {order, preset.channel_order} == {"RGB", "BGR"}:
                values = values[::-1]  # a preset's values follow its own channel order
            r.set(name, _per_channel(values, order, name), f"preset {preset_name}")
        elif stored is not None and (stored.channel_order == "GRAY") == (order == "GRAY"):
            r.set(name, getattr(stored, name), "metadata")


def _per_channel(values: tuple[float, ...], order: str, name: str) -> tuple[float, ...]:
    """One value per channel: three for RGB/BGR (one given is repeated), one for GRAY (three are averaged)."""
    if order == "GRAY":
        return (sum(values) / len(values),)
    if len(values) == 1:
        return tuple(values) * 3
    if len(values) != 3:
        raise FtonnxError(f"--{name} takes one value or three, not {len(values)}")
    return tuple(values)


def describe(r: Resolution) -> dict[str, dict[str, object]]:
    """Each field's value and source ("missing" where unknown), for `ftonnx inspect`."""
    out = {}
    for name in FIELDS:
        value = r.values.get(name)
        out[name] = {"value": list(value) if isinstance(value, tuple) else value,
                     "source": r.sources.get(name, "missing")}
    return out
