"""The forms each exported model takes: as it is, fed uint8 pixels (`--pixels`), with fixed shapes
(`--static`), both, and their ORT-format twins (`--ort`).

Names compose: `int8.pixels.static` is the int8 model with a pixel input and fixed shapes, in
`model.int8.pixels.static.onnx`, and `int8.pixels.static.ort` its ORT-format twin. Fixed-shape
variants are converted to ORT format in the runtime style, keeping the standard ops NNAPI and CoreML
take; the others in the fixed style, every CPU optimisation applied once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.ort_format import convert_ort
from ftonnx.export.report import Variant
from ftonnx.graph.io import save_model
from ftonnx.graph.pixels import ORDERS, pixel_input
from ftonnx.graph.static import fix_shapes

PIXELS, STATIC = "pixels", "static"
FLOAT, FP16 = "float", "fp16"


@dataclass(frozen=True)
class Forms:
    """Which forms to write: pixel inputs (in `pixel_order`), fixed shapes (batch `batch`), ORT format."""

    pixels: bool = False
    pixel_order: str = "RGB"
    static: bool = False
    batch: int = 1
    ort: bool = False

    def check(self) -> None:
        """FtonnxError for values no export can use (checked before any work)."""
        if self.pixel_order not in ORDERS:
            raise FtonnxError(f"pixel order must be RGB or BGR, not {self.pixel_order!r}")
        if self.batch < 1:
            raise FtonnxError(f"the static batch must be at least 1, not {self.batch}")


def file_name(name: str, suffix: str = ".onnx") -> str:
    """The file of variant `name`: float -> model.onnx, int8.pixels.static -> model.int8.pixels.static.onnx."""
    return ".".join(["model", *(p for p in name.split(".") if p != "float")]) + suffix


def _static(model: onnx.ModelProto, batch: int, pixels: bool) -> onnx.ModelProto:
    pre = metadata.read(model).preprocess
    shape = (batch, *pre.size, pre.channels) if pixels else pre.batch_shape(batch)
    return fix_shapes(model, shape)


def _forms(name: str, model: onnx.ModelProto, forms: Forms) -> dict[str, onnx.ModelProto]:
    """Variant name -> model for one numeric variant (float, int8, fp16) in every form asked for."""
    result = {name: model}
    if forms.pixels:
        result[f"{name}.{PIXELS}"] = pixel_input(model, forms.pixel_order)
    if forms.static:
        result.update({f"{n}.{STATIC}": _static(m, forms.batch, PIXELS in n) for n, m in list(result.items())})
    return result


def write_forms(models: dict[str, onnx.ModelProto], folder: Path, forms: Forms,
                say: Callable[[str], None] = lambda message: None) -> list[Variant]:
    """Write every form of `models` (float, int8, fp16 -> model) into `folder`; the variants, in report order:
    the models as given, then their pixel, fixed-shape and pixel fixed-shape forms, then the .ort twins."""
    every: dict[str, onnx.ModelProto] = {}
    for name, model in models.items():
        every.update(_forms(name, model, forms))
    suffixes = ["", f".{PIXELS}", f".{STATIC}", f".{PIXELS}.{STATIC}"]
    order = [f"{base}{s}" for s in suffixes for base in models if f"{base}{s}" in every]
    variants = [Variant(n, save_model(every[n], folder / file_name(n)), pixels=_pixel_order(every[n])) for n in order]
    twins = {v.name: v.path for v in variants}
    variants = [dataclasses.replace(v, source=twins[FLOAT + v.name[len(FP16):]], half=True)
                if v.name.startswith(FP16) else v for v in variants]
    if forms.ort:
        say("ort: converting each variant to ORT format")
        variants += [_ort(v) for v in list(variants)]
    return variants


def _pixel_order(model: onnx.ModelProto) -> str | None:
    """The channel order of the pixels a variant takes (RGB, BGR, GRAY), None for a preprocessed input."""
    pixels = metadata.read(model).extra.get(PIXELS)
    return pixels["order"] if pixels else None


def _ort(variant: Variant) -> Variant:
    static = STATIC in variant.name.split(".")
    path = convert_ort(variant.path, style="runtime" if static else "fixed")
    return Variant(f"{variant.name}.ort", path, pixels=variant.pixels, source=variant.path,
                   level="basic" if static else "all")
