"""Class names for a model's output: given on the command line or in a file, checked against the output's width."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, clone


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines and surrounding spaces ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtonnxError(f"{path}: no such labels file") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise FtonnxError(f"{path}: not a UTF-8 text file of class names, one per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise FtonnxError(f"{path}: no class names in it")
    return names


def with_labels(model: onnx.ModelProto, labels: list[str] | None = None,
                labels_file: str | os.PathLike | None = None) -> onnx.ModelProto:
    """A copy of `model` whose metadata names its classes; the count must match its (N, K) output."""
    if labels is not None and labels_file is not None:
        raise FtonnxError("give --labels or --labels-file, not both")
    names = read_labels_file(labels_file) if labels_file is not None else labels
    if names is None:
        return model
    if len(set(names)) != len(names):
        raise FtonnxError(f"class names repeat: {', '.join(sorted({n for n in names if names.count(n) > 1})[:5])}")
    index = GraphIndex(model)
    widths = [s[1] for s in (index.shapes.get(o) for o in index.outputs) if s and len(s) == 2]
    if widths and isinstance(widths[0], int) and widths[0] != len(names):
        raise FtonnxError(f"{len(names)} class names for an output of {widths[0]} classes")
    return metadata.update(clone(model), labels=list(names))
