"""Graph surgery on ONNX models (pure onnx, no runtime); `load` is how every command reads a model."""

from __future__ import annotations

import os

import onnx

from ftonnx.graph.io import load_model
from ftonnx.graph.normalize import normalize


def load_reporting(path: str | os.PathLike) -> tuple[onnx.ModelProto, list[str]]:
    """Load and normalise a model, also returning what normalising changed (for `inspect`)."""
    return normalize(load_model(path), str(path), copy=False)


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model and bring it to the tidy form every later step expects."""
    return load_reporting(path)[0]
