"""Training artifacts for on-device personalisation: the head trains, the backbone stays frozen.

ONNX Runtime's training API (C, C++, Java, Swift, Python) loads them on the device: the training,
eval and optimizer models and the checkpoint, built as ftonnx builds its own (`build_artifacts`:
cross entropy on `logits`, AdamW, BatchNormalization frozen; `ftonnx.json` lists any Dropout mask
inputs). `Module.export_model_for_inferencing(path, ["logits"])` turns the trained state back into
an inference model; the training and eval models carry the labels and preprocessing metadata, and
so does that model.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.ort_format import convert_ort
from ftonnx.train.artifacts import build_artifacts

TRAINING, EVAL, OPTIMIZER, CHECKPOINT = "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"


def logits_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` from its inputs to `logits` only (the Softmax output dropped), metadata kept."""
    if "logits" not in [o.name for o in model.graph.output]:
        raise FtonnxError("the model has no `logits` output; export a model that ftonnx finetuned")
    inferred = onnx.shape_inference.infer_shapes(model)
    base = onnx.utils.Extractor(inferred).extract_model([i.name for i in model.graph.input], ["logits"])
    return metadata.copy(model, base)


def build_on_device(model: onnx.ModelProto, out_dir: str | os.PathLike, *, ort_format: bool = False) -> Path:
    """Write the training artifacts of the inference `model` (its metadata's head_params trainable)
    into `out_dir`, plus .ort twins of the three models when `ort_format`; returns the folder."""
    head = metadata.read(model).head_params
    if not head:
        raise FtonnxError("the model's metadata names no head parameters; export a model that ftonnx finetuned")
    out_dir = build_artifacts(logits_model(model), list(head), out_dir)
    for name in (TRAINING, EVAL):
        path = out_dir / name
        onnx.save_model(metadata.copy(model, onnx.load(str(path))), str(path))
    if ort_format:
        for name in (TRAINING, EVAL, OPTIMIZER):
            convert_ort(out_dir / name)
    return out_dir
