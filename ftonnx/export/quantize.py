"""Static int8 quantisation with ONNX Runtime's tools: QDQ format, per-channel weights, activation
ranges calibrated on training images.

The Softmax stays in float: quantising its output would round every probability to a multiple of
1/255 and buys nothing (it is a handful of operations on the logits).

Channels whose weights are all zero (BatchNorm folded with a zero scale, as in EfficientNet-Lite0)
get a zero per-channel scale, and ORT's quantiser then casts bias / 0 to int32 with a numpy
RuntimeWarning. That warning is silenced here: the report measures every int8 model's top-1 and
probability drift against the float model, which is where a real loss would show.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.io import save_model

KEEP_FLOAT = ("Softmax",)


def _reader(input_name: str, batches: Iterable[np.ndarray]):
    """A CalibrationDataReader that feeds `batches` to `input_name` once."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = ({input_name: b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return Reader()


def _name_kept_nodes(path: Path) -> list[str]:
    """Names of the nodes to leave in float, naming unnamed ones (the quantiser excludes by name).

    Excluding by op type instead (op_types_to_quantize) crashes ONNX Runtime 1.19.2's quantiser on
    a Softmax, whose output range it sets whether or not it calibrated it.
    """
    model = onnx.load(str(path))
    kept = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in KEEP_FLOAT:
            node.name = node.name or f"ftonnx.keep_float.{i}"
            kept.append(node.name)
    onnx.save_model(model, str(path))
    return kept


def quantize_int8(model: onnx.ModelProto, path: str | os.PathLike,
                  calibration: Iterable[np.ndarray]) -> onnx.ModelProto:
    """Quantise `model` to int8 (QDQ, per-channel), calibrated on the float32 input `calibration`
    batches, keep its metadata and save it to `path`; returns the quantised model."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(model.graph.input) != 1:
        raise FtonnxError(f"int8 calibration needs a model with one input, not {len(model.graph.input)}")
    with tempfile.TemporaryDirectory(prefix="ftonnx-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(model, str(source))
        quant_pre_process(str(source), str(prepared))
        keep_float = _name_kept_nodes(prepared)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
                quantize_static(str(prepared), str(quantized), _reader(model.graph.input[0].name, calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
        except ValueError as exc:
            raise FtonnxError(f"int8 calibration failed ({exc}); are there calibration images?") from None
        result = metadata.copy(model, onnx.load(str(quantized)))
    save_model(result, path)
    return result
