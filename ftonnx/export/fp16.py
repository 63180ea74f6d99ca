"""Float16 weights and compute, float32 inputs and outputs kept so that callers do not change."""

from __future__ import annotations

import os

import onnx

from ftonnx import metadata
from ftonnx.graph.index import clone
from ftonnx.graph.io import save_model


def convert_fp16(model: onnx.ModelProto, path: str | os.PathLike) -> onnx.ModelProto:
    """Convert `model` to float16 with ONNX Runtime's converter (casts at the inputs and outputs),
    keep its metadata and save it to `path`; returns the converted model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(clone(model), keep_io_types=True)
    metadata.copy(model, half)
    save_model(half, path)
    return half
