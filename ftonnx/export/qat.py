"""The int8 side of quantisation-aware training (`--qat`): the calibration a run starts from, the int8 prefix
that computes its activation cache, and the int8 export with the scales it trained.

- `calibrate_qat`: ONNX Runtime's quantiser prepared on the model to train and calibrated on its training
  images as `ftonnx export --int8` calibrates them (`Quantizer`, minmax over up to 300 images), or given the
  ranges a run stored when it started (resuming). The int8 model it makes then, without bias correction
  (training adapts to the rounding itself, and the export must compute what training computed), is the
  blueprint: where it quantises is where training fake-quantises (`ftonnx.graph.qdqplan`, checked against
  the model's own tensor names), and its frozen prefix computes the cached activations (`int8_prefix`), so
  the trainable suffix trains on what the int8 model will feed it.
- `quantize_qat`: the trained float model quantised with the run's ranges (its calibrated ones, the learned
  ones where training learned them), no bias correction and nothing kept in float. Graph outputs, which
  training leaves in float, get the extremes the trained model reaches on the calibration images (a mean
  of batch extremes would clip the largest logits, and nothing after an output absorbs that); weights are
  quantised from the trained weights as training fake-quantised them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.quantize import Int8Result, Quantizer, ranges_from_json, ranges_to_json
from ftonnx.graph.fakequant import check_plan
from ftonnx.graph.index import GraphIndex, assign, is_onnx_op
from ftonnx.graph.qdqplan import QuantPlan, read_plan
from ftonnx.runtime import image_input, inference_session

METHOD = "minmax"  # the export's default calibration, which QAT's ranges must match


@dataclass
class QatCalibration:
    """Where the int8 model quantises (`plan`), every activation's calibrated range, the int8 model they make
    (`blueprint`), and how many images were calibrated on."""

    plan: QuantPlan
    ranges: dict[str, list[float]]
    blueprint: onnx.ModelProto
    images: int

    def record(self) -> dict[str, Any]:
        """What RUN/quantisation.json holds from the start: enough to rebuild the blueprint when resuming."""
        return {"method": METHOD, "images": self.images, "calibrated": self.ranges}


def calibrate_qat(model: onnx.ModelProto, batches: Iterable[np.ndarray] | None, stored: dict[str, Any] | None = None,
                  *, workdir: str | os.PathLike | None = None) -> QatCalibration:
    """The calibration of `model` for quantisation-aware training, on `batches` (the model's input), or from a
    run's stored record (`QatCalibration.record`)."""
    ranges = ranges_from_json(stored["calibrated"]) if stored else None
    with Quantizer(model, None if stored else batches, METHOD, workdir=workdir, ranges=ranges) as quantizer:
        blueprint = quantizer.quantize([], bias_correction=False)
        calibrated = ranges_to_json(quantizer.ranges)
        images = stored["images"] if stored else quantizer.images
    plan = read_plan(blueprint)
    check_plan(plan, model)
    return QatCalibration(plan, calibrated, blueprint, images)


def _dequantised(index: GraphIndex, tensor: str) -> str:
    """The tensor the int8 model's readers of `tensor` read: its DequantizeLinear's output, or itself."""
    for q in index.consumers(tensor):
        if is_onnx_op(q, "QuantizeLinear"):
            return next(d.output[0] for d in index.consumers(q.output[0]) if is_onnx_op(d, "DequantizeLinear"))
    return tensor


def int8_prefix(calibration: QatCalibration, cut: list[str]) -> onnx.ModelProto:
    """The blueprint from its input to the boundary tensors `cut` as its suffix reads them (dequantised int8),
    under their own names, with the preprocessing in its metadata (as `ftonnx.graph.split` gives a prefix)."""
    index = GraphIndex(calibration.blueprint)
    read = {t: _dequantised(index, t) for t in cut}
    prefix = index.extract(index.inputs, list(read.values()))
    names = {t: index.fresh(t, "float") for t, r in read.items() if r != t}
    names.update({r: t for t, r in read.items() if r != t})
    for node in prefix.graph.node:
        assign(node.input, [names.get(i, i) for i in node.input])
        assign(node.output, [names.get(o, o) for o in node.output])
    for output in prefix.graph.output:
        output.name = names.get(output.name, output.name)
    meta = metadata.read(calibration.blueprint)
    return metadata.write(prefix, metadata.Meta(preprocess=meta.preprocess, source=meta.source,
                                                extra={"boundary": list(cut)}))


def output_ranges(model: onnx.ModelProto, batches: Iterable[np.ndarray]) -> tuple[dict[str, list[float]], int]:
    """({graph output: [lowest, highest]} over every image of `batches`, the image count): an output's extremes
    rather than a mean of batch extremes, as nothing after an output absorbs what its range clips."""
    session = inference_session(model)
    names, feed = [o.name for o in model.graph.output], image_input(session)[0]
    lowest, highest, images = {}, {}, 0
    for x in batches:
        for name, value in zip(names, session.run(names, {feed: x})):
            lowest[name] = min(lowest.get(name, np.inf), float(value.min()))
            highest[name] = max(highest.get(name, -np.inf), float(value.max()))
        images += len(x)
    if not images:
        raise FtonnxError("int8 quantisation failed: no calibration image could be decoded")
    return {name: [lowest[name], highest[name]] for name in names}, images


def quantize_qat(model: onnx.ModelProto, batches: Iterable[np.ndarray], qat: dict[str, list[float]], *,
                 keep_float: Iterable[str] = (), workdir: str | os.PathLike | None = None) -> Int8Result:
    """The trained `model` in int8 with the ranges `qat` of its run (RUN/quantisation.json's "ranges"), the
    graph outputs' ranges their extremes on `batches`; nodes `keep_float` in float."""
    outputs, images = output_ranges(model, batches)
    ranges = ranges_from_json({**outputs, **qat})
    with Quantizer(model, None, METHOD, workdir=workdir, ranges=ranges) as quantizer:
        try:
            quantised = quantizer.quantize(list(keep_float), bias_correction=False)
        except FtonnxError as exc:
            raise FtonnxError(f"{exc} (the run's QAT ranges do not fit its model; was RUN/model.onnx replaced?)") \
                from None
    return Int8Result(quantised, "extremes", images, list(keep_float), scales="qat", bias_correction=False,
                      qat_tensors=len(qat))
