"""Copy a pretrained model's parameters into another network by name and shape (PaddleClas's way of
loading a 1000-class checkpoint into a 102-class network: the classifier's weights do not fit and stay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import FLOAT_TYPES, clone


@dataclass
class TransplantReport:
    """What happened to each floating-point parameter of the source."""

    copied: list[str] = field(default_factory=list)
    dropped: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # name, source shape, target shape
    unplaced: list[str] = field(default_factory=list)  # in the source, absent from the target

    def lines(self) -> list[str]:
        """Human-readable summary, one line per dropped or unplaced parameter."""
        out = [f"copied {len(self.copied)} parameters"]
        out += [f"dropped (shape differs): {name} {tuple(src)} -> {tuple(dst)}" for name, src, dst in self.dropped]
        out += [f"not placed (no parameter of that name in the target): {name}" for name in self.unplaced]
        return out


def transplant(src: onnx.ModelProto, dst: onnx.ModelProto) -> tuple[onnx.ModelProto, TransplantReport]:
    """Return a copy of `dst` whose parameters take `src`'s values where name, shape and type match.

    Raises FtonnxError when nothing matches (wrong pair of models, or names from different exporters).
    """
    source = {t.name: t for t in src.graph.initializer if t.data_type in FLOAT_TYPES}
    out = clone(dst)
    report = TransplantReport()
    targets = {t.name for t in out.graph.initializer}
    for tensor in out.graph.initializer:
        pretrained = source.get(tensor.name)
        if pretrained is None or tensor.data_type not in FLOAT_TYPES:
            continue
        if list(pretrained.dims) != list(tensor.dims) or pretrained.data_type != tensor.data_type:
            report.dropped.append((tensor.name, list(pretrained.dims), list(tensor.dims)))
            continue
        tensor.CopyFrom(pretrained)
        report.copied.append(tensor.name)
    report.unplaced = [name for name in source if name not in targets]
    if not report.copied:
        raise FtonnxError(f"no parameter of the pretrained model matches the target by name and shape "
                          f"({len(source)} pretrained, {len(report.dropped)} with the right name but another shape)")
    return out, report
