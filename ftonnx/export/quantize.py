"""Static int8 quantisation with ONNX Runtime's tools: QDQ format, per-channel int8 weights, uint8
activations whose ranges are calibrated on typical images, and the weights' bias corrected.

The API, which quantisation-aware training reuses:
- `Quantizer(model, batches, method)`: the model prepared once for ORT's quantiser (opset lifted to 13,
  ORT's pre-processing) and calibrated once: each activation's range by MinMax, Percentile or Entropy,
  and the mean input of each Conv and Gemm.
- `Quantizer.quantize(keep_float)`: a QDQ model, as often as wanted (the ranges are reused), with the
  nodes named in `keep_float` left in float; `ranges=` takes ranges from elsewhere (e.g. training).
- `quantize_int8(model, batches, ...)`: both, with `keep_float="auto"` choosing the nodes by measured
  error (`ftonnx.export.keep_float`); an `Int8Result`.

Calibration: `minmax` (the default) takes for each activation the mean over the calibration batches of
each batch's minimum and maximum (ORT's MinMax with CalibMovingAverage). The global extremes widen
with every image added, coarsening every step, while the batch mean settles, so more images help: on
four EfficientNet-Lite0 finetunes (bias corrected), global MinMax drifted up to 10 % more on 245 images
than on 100, the batch mean up to 15 % less. `percentile` clips each range at the 99.999th percentile
of its values, `entropy` picks the range that loses least information; both build histograms of every
activation, batch by batch, and take about three times as long.

Bias correction: rounding a Conv's or Gemm's weights shifts the mean of each output channel by
(dequantized - float weights) x (mean input); subtracting that shift from the bias, measured on the
calibration images, removes most of the drift int8 leaves (on EfficientNet-Lite0 finetunes, the mean
probability difference from the float model falls by about 40 %).

The Softmax stays in float: quantising its output would round every probability to a multiple of
1/255 and buys nothing. Channels whose weights are all zero (BatchNorm folded with a zero scale, as in
EfficientNet-Lite0) get a zero per-channel scale, and ORT's quantiser then casts bias / 0 to int32
with a numpy RuntimeWarning; that warning is silenced, as the report measures every int8 model.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.data import Dataset, Loader
from ftonnx.errors import FtonnxError, first_line
from ftonnx.export.bias import BiasCorrection, unshare_biases
from ftonnx.files import TEMP_PREFIX
from ftonnx.graph.io import save_model
from ftonnx.graph.normalize import lift_opset

METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_BATCH = 16
KEEP_FLOAT_OPS = ("Softmax",)
QDQ_MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)
CALIBRATION_CAP = 300  # default: every calibration image up to this many
CHECK_IMAGES = 64  # images keep_float="auto" measures the int8 model's drift on


@dataclass
class Int8Result:
    """A quantised model and how it was made: calibration method and image count, the nodes left in float
    besides the Softmax, (auto) what the choice of those nodes measured, whose activation scales it has
    ("calibrated", or "qat": those of quantisation-aware training, for `qat_tensors` tensors) and whether its
    biases were corrected."""

    model: onnx.ModelProto
    method: str
    images: int
    keep_float: list[str]
    search: dict[str, Any] | None = field(default=None)
    scales: str = "calibrated"
    bias_correction: bool = True
    qat_tensors: int = 0

    def summary(self) -> dict[str, Any]:
        """The report's entry: everything but the model."""
        return {"method": self.method, "images": self.images, "keep_float": self.keep_float,
                "bias_correction": self.bias_correction, "search": self.search, "scales": self.scales,
                "qat_tensors": self.qat_tensors}


def _prepare(model: onnx.ModelProto, folder: Path) -> Path:
    """ORT's pre-processing (shape inference, graph optimisation) for quantisation, into folder/prepared.onnx.
    Its symbolic shape inference fails on some graphs with dynamic height and width (the dynamo
    exporter's); onnx's own shape inference then does. Unnamed nodes are named (the quantiser excludes
    nodes by name)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared = folder / "float.onnx", folder / "prepared.onnx"
    onnx.save_model(lift_opset(model, QDQ_MIN_OPSET), str(source))
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception:  # symbolic_shape_infer raises assorted errors on shapes it cannot follow
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    result = onnx.load(str(prepared))
    for i, node in enumerate(result.graph.node):
        node.name = node.name or f"ftonnx.node.{i}.{node.op_type}"
    onnx.save_model(result, str(prepared))
    return prepared


class _Feeds:
    """A CalibrationDataReader over `batches` that also hands each batch to `also` and counts the images."""

    def __init__(self, batches: Iterable[np.ndarray], input_name: str, also: Callable[[np.ndarray], None]) -> None:
        self.batches, self.input_name, self.also, self.images = iter(batches), input_name, also, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        if x is None:
            return None
        self.also(x)
        self.images += len(x)
        return {self.input_name: x}


class _OneBatch:
    """A CalibrationDataReader of one feed: histogram calibrators keep every activation of a call in memory
    and need same-shaped batches within it, so they are fed batch by batch."""

    def __init__(self, feed: dict[str, np.ndarray] | None) -> None:
        self.feed = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self.feed = self.feed, None
        return feed


def _calibrator(prepared: Path, folder: Path, method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    chosen = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[method]
    options = {"symmetric": False}  # uint8 activations: both ends of the range
    if method == "minmax":  # one collect_data over every batch: the mean of the batches' extremes
        options["moving_average"] = True
    return create_calibrator(prepared, list(set(QDQRegistry) | set(QLinearOpsRegistry)),
                             augmented_model_path=str(folder / "augmented.onnx"), calibrate_method=chosen,
                             extra_options=options)


class _FirstImages:
    """The batches of `batches`, passed on while the first `count` images are kept (auto's check set)."""

    def __init__(self, batches: Iterable[np.ndarray], count: int) -> None:
        self.batches, self.count, self.kept = batches, count, []

    def __iter__(self):
        held = 0
        for x in self.batches:
            if held < self.count:
                self.kept.append(x[:self.count - held])
                held += len(self.kept[-1])
            yield x

    def images(self) -> np.ndarray:
        return np.concatenate(self.kept)


class Quantizer:
    """A float model prepared for ORT's QDQ quantiser and calibrated on `batches` (float32 inputs) with
    `method`; `quantize` then makes QDQ models from it, as often as wanted. Call `close` (or use `with`)
    to remove its temporary files. With `ranges` (e.g. `ranges_from_json` of stored ones) and no batches,
    nothing is calibrated: those ranges are used, and there is no bias correction."""

    def __init__(self, model: onnx.ModelProto, batches: Iterable[np.ndarray] | None, method: str = "minmax", *,
                 workdir: str | os.PathLike | None = None, ranges: Any = None) -> None:
        if (batches is None) == (ranges is None):
            raise ValueError("Quantizer takes calibration batches or ranges, one of them")
        if method not in METHODS:
            raise FtonnxError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
        if len(model.graph.input) != 1:
            raise FtonnxError(f"int8 calibration needs a model with one input, not {len(model.graph.input)}")
        self.source, self.method = model, method
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}int8-", dir=workdir)
        folder = Path(self._tmp.name)
        self.prepared = _prepare(model, folder)
        self.float_model = unshare_biases(onnx.load(str(self.prepared)))
        self.input_name = model.graph.input[0].name
        if batches is None:
            self.ranges, self.images, self.bias = ranges, 0, None
        else:
            self.ranges, self.images, self.bias = self._calibrate(batches, folder)
        self._deltas: dict[str, np.ndarray] | None = None

    def _calibrate(self, batches: Iterable[np.ndarray], folder: Path) -> tuple[Any, int, BiasCorrection]:
        """Activation ranges, the number of images and the Conv/Gemm input means, in one pass over `batches`."""
        calibrator = _calibrator(self.prepared, folder, self.method)
        bias = BiasCorrection(self.float_model)
        feeds = _Feeds(batches, self.input_name, lambda x: bias.add(x, self.input_name))
        try:
            if self.method == "minmax":
                calibrator.collect_data(feeds)
            else:
                while (feed := feeds.get_next()) is not None:
                    calibrator.collect_data(_OneBatch(feed))
            return calibrator.compute_data(), feeds.images, bias
        except Exception as exc:  # ORT's calibrators raise ValueError, RuntimeError, onnx errors...
            if not feeds.images:
                raise FtonnxError("int8 quantisation failed: no calibration image could be decoded") from None
            if isinstance(exc, FtonnxError):
                raise
            raise FtonnxError(f"int8 calibration failed: {first_line(exc)}") from None

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "Quantizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node_names(self) -> list[str]:
        """The nodes of the prepared model, the names `keep_float` takes."""
        return [n.name for n in self.float_model.graph.node]

    def quantize(self, keep_float: Iterable[str] = (), *, bias_correction: bool = True,
                 ranges: Any = None) -> onnx.ModelProto:
        """A QDQ model with the nodes `keep_float` (and every Softmax) in float, its metadata the source's."""
        keep = [*keep_float, *(n.name for n in self.float_model.graph.node if n.op_type in KEEP_FLOAT_OPS)]
        unknown = sorted(set(keep) - set(self.node_names()))
        if unknown:
            raise FtonnxError(f"no node named {unknown[0]!r} to keep in float; the quantised graph's nodes are "
                              f"listed by `ftonnx inspect`")
        model = self.float_model
        if bias_correction and self.bias is None:
            raise FtonnxError("int8 bias correction needs calibration images; these ranges came without them")
        if bias_correction:
            if self._deltas is None:
                self._deltas = self.bias.deltas(self._run(self.float_model, [], ranges))
            model = self.bias.corrected({k: v for k, v in self._deltas.items() if k not in keep})
        return metadata.copy(self.source, self._run(model, keep, ranges))

    def _run(self, model: onnx.ModelProto, keep: list[str], ranges: Any) -> onnx.ModelProto:
        """ORT's QDQ quantiser on `model` with these ranges, `keep` excluded."""
        from onnxruntime.quantization import QuantType
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
        from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        path = Path(self._tmp.name) / "to_quantize.onnx"
        onnx.save_model(model, str(path))
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
                quantizer = QDQQuantizer(load_model_with_shape_infer(path), True, False, QuantType.QInt8,
                                         QuantType.QUInt8, ranges or self.ranges, [], keep,
                                         list(set(QDQRegistry) | set(QLinearOpsRegistry)), {})
                quantizer.quantize_model()
                quantizer.model.topological_sort()  # the quantiser appends its nodes; saving it would sort them
        except Exception as exc:  # ORT's quantiser raises ValueError, RuntimeError, onnx errors...
            raise FtonnxError(f"int8 quantisation failed: {first_line(exc)}") from None
        return quantizer.model.model


def calibration_batches(images: Dataset, preprocess: metadata.Preprocess, count: int) -> Iterator[np.ndarray]:
    """Batches of `count` images drawn at random (seed 0), as the model's input: the images int8 is calibrated on
    (by the export, and by quantisation-aware training before it)."""
    pick = sorted(np.random.default_rng(0).permutation(len(images.samples))[:count])
    subset = dataclasses.replace(images, samples=[images.samples[i] for i in pick])
    return (x for x, _ in Loader(subset, preprocess, batch_size=CALIBRATION_BATCH).epoch(0))


def ranges_to_json(ranges: Any) -> dict[str, list[float]]:
    """A calibration's (or any) activation ranges as {tensor: [lowest, highest]}, float32 values exactly."""
    return {name: [float(np.asarray(v).reshape(())) for v in data.range_value] for name, data in ranges.items()}


def ranges_from_json(ranges: dict[str, list[float]]) -> Any:
    """The ranges ORT's quantiser takes from {tensor: [lowest, highest]}."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    return TensorsData(CalibrationMethod.MinMax, {name: TensorData(lowest=np.array(lo, np.float32),
                                                                   highest=np.array(hi, np.float32))
                                                  for name, (lo, hi) in ranges.items()})


def quantize_int8(model: onnx.ModelProto, calibration: Iterable[np.ndarray], path: str | os.PathLike | None = None, *,
                  method: str = "minmax", keep_float: Iterable[str] | str = "auto") -> Int8Result:
    """Quantise `model` to int8 (QDQ, per-channel weights, bias corrected), calibrated by `method` on the float32
    input `calibration` batches, with the nodes `keep_float` in float ("auto": the few that lose most, measured on
    the first calibration images); saved to `path` when given (its temporary files beside it meanwhile, so a
    killed export's leftovers are in the folder the next export cleans)."""
    from ftonnx.export.keep_float import choose_keep_float

    auto = isinstance(keep_float, str) and keep_float == "auto"
    if isinstance(keep_float, str) and not auto:
        raise FtonnxError(f"keep_float is 'auto' or a list of node names, not {keep_float!r}")
    check = _FirstImages(calibration, CHECK_IMAGES)
    with Quantizer(model, check, method, workdir=Path(path).parent if path is not None else None) as quantizer:
        if auto:
            kept, search = choose_keep_float(quantizer, check.images())
        else:
            kept, search = list(keep_float), None
        result = Int8Result(quantizer.quantize(kept), method, quantizer.images, kept, search)
    if path is not None:
        save_model(result.model, path)
    return result

