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

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.ort_format import convert_ort
from ftonnx.train.artifacts import Artifacts, build_artifacts


def build_on_device(model: onnx.ModelProto, out_dir: str | os.PathLike, *, ort_format: bool = False) -> Artifacts:
    """Write the training artifacts of the inference `model` (its metadata's head_params trainable)
    into `out_dir`, plus .ort twins of the three models when `ort_format`; returns them."""
    head = metadata.read(model).head_params
    if not head:
        raise FtonnxError("the model's metadata names no head parameters; export a model that ftonnx finetuned")
    artifacts = build_artifacts(model, list(head), out_dir)  # pruned to `logits`, the Softmax dropped
    for path in (artifacts.training_model, artifacts.eval_model):
        onnx.save_model(metadata.copy(model, onnx.load(str(path))), str(path))
    if ort_format:
        for path in (artifacts.training_model, artifacts.eval_model, artifacts.optimizer_model):
            convert_ort(path)
    return artifacts
