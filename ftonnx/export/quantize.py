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
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.io import save_model
from ftonnx.graph.normalize import lift_opset

KEEP_FLOAT = ("Softmax",)
QDQ_MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)


class _CountingReader:
    """Feeds `batches` to `input_name` once, counting them (no batch at all is its own error)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name, self.batches, self.count = input_name, batches, 0

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        outer = self

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds: Iterator[np.ndarray] = iter(outer.batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._feeds, None)
                if batch is None:
                    return None
                outer.count += 1
                return {outer.input_name: batch}

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


def _prepared(source: Path, prepared: Path) -> None:
    """ORT's pre-processing (shape inference, graph optimisation) for quantisation. Its symbolic shape
    inference fails on some graphs with dynamic height and width (the dynamo exporter's); onnx's own shape
    inference then does."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(source), str(prepared))
    except Exception:  # symbolic_shape_infer raises assorted errors on shapes it cannot follow
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)


def quantize_int8(model: onnx.ModelProto, path: str | os.PathLike,
                  calibration: Iterable[np.ndarray]) -> onnx.ModelProto:
    """Quantise `model` to int8 (QDQ, per-channel), calibrated on the float32 input `calibration`
    batches, keep its metadata and save it to `path`; returns the quantised model. Models below opset 13
    (per-channel QDQ's floor) are converted up first."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if len(model.graph.input) != 1:
        raise FtonnxError(f"int8 calibration needs a model with one input, not {len(model.graph.input)}")
    with tempfile.TemporaryDirectory(prefix=".ftonnx-tmp-int8-", dir=Path(path).parent) as tmp:  # in the staging
        source, prepared, quantized = (Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(lift_opset(model, QDQ_MIN_OPSET), str(source))
        _prepared(source, prepared)
        keep_float = _name_kept_nodes(prepared)
        reader = _CountingReader(model.graph.input[0].name, calibration)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
                quantize_static(str(prepared), str(quantized), reader.reader(),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
        except Exception as exc:  # ORT's quantiser raises ValueError, RuntimeError, onnx errors...
            cause = "no calibration image could be decoded" if reader.count == 0 else first_line(exc)
            raise FtonnxError(f"int8 quantisation failed: {cause}") from None
        result = metadata.copy(model, onnx.load(str(quantized)))
    save_model(result, path)
    return result
