"""Float16 weights and compute, float32 inputs and outputs kept so that callers do not change."""

from __future__ import annotations

import os

import onnx

from ftonnx import metadata
from ftonnx.graph.index import clone
from ftonnx.graph.io import save_model


def convert_fp16(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> onnx.ModelProto:
    """Convert `model` to float16 with ONNX Runtime's converter (casts at the inputs and outputs),
    keep its metadata and save it to `path` when given; returns the converted model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    half = convert_float_to_float16(clone(model), keep_io_types=True)
    OnnxModel(half).topological_sort()  # the converter appends its input casts; shape inference wants them first
    metadata.copy(model, half)
    if path is not None:
        save_model(half, path)
    return half
