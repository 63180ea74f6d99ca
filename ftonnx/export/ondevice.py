"""Training artifacts for on-device personalisation: the head trains, the backbone stays frozen.

ONNX Runtime's training API (C, C++, Java, Swift, Python) loads them on the device: the training,
eval and optimizer models and the checkpoint, built as ftonnx builds its own (`build_artifacts`:
cross entropy on `logits`, AdamW, BatchNormalization frozen; `ftonnx.json` lists any Dropout mask
inputs). `Module.export_model_for_inferencing(path, ["logits"])` turns the trained state back into
an inference model; the training and eval models carry the labels and preprocessing metadata, and
so does that model.

Two forms:
- `on_device/` (`build_on_device`): the whole graph; every step runs the frozen backbone forward too.
- `on_device_head/` (`build_on_device_head`): the frozen feature extractor (`features.onnx`, the graph up
  to the tensors the head reads) and training artifacts for the head alone, fed those features. An app
  computes an image's features once, stores them, and trains the head on stored features: a step costs
  the head's arithmetic, not the backbone's. `ftonnx.json` names the extractor and the feature inputs.
  The head trained there equals the whole graph's after the same steps (the backbone is frozen either
  way); to predict, run the extractor, then the head's eval model or the model it exports.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.ort_format import convert_ort
from ftonnx.graph.io import save_model
from ftonnx.graph.split import boundary, split
from ftonnx.runtime import inference_session
from ftonnx.train.artifacts import Artifacts, build_artifacts
from ftonnx.train.session import TrainingSession

FEATURES = "features.onnx"


def _head_params(model: onnx.ModelProto) -> list[str]:
    head = metadata.read(model).head_params
    if not head:
        raise FtonnxError("the model's metadata names no head parameters; export a model that ftonnx finetuned")
    return list(head)


def _finish(model: onnx.ModelProto, artifacts: Artifacts, ort_format: bool) -> Artifacts:
    """Give the training and eval models `model`'s metadata; .ort twins of the three models when asked."""
    for path in (artifacts.training_model, artifacts.eval_model):
        onnx.save_model(metadata.copy(model, onnx.load(str(path))), str(path))
    if ort_format:
        for path in (artifacts.training_model, artifacts.eval_model, artifacts.optimizer_model):
            convert_ort(path)
    return artifacts


def build_on_device(model: onnx.ModelProto, out_dir: str | os.PathLike, *, ort_format: bool = False) -> Artifacts:
    """Write the training artifacts of the inference `model` (its metadata's head_params trainable)
    into `out_dir`, plus .ort twins of the three models when `ort_format`; returns them."""
    artifacts = build_artifacts(model, _head_params(model), out_dir)  # pruned to `logits`, the Softmax dropped
    return _finish(model, artifacts, ort_format)


def build_on_device_head(model: onnx.ModelProto, out_dir: str | os.PathLike, *,
                         ort_format: bool = False) -> Artifacts:
    """Write `out_dir/features.onnx` (the frozen part of the inference `model` up to what its head reads) and
    training artifacts for the head alone on those features (plus .ort twins when `ort_format`); returns
    the artifacts, whose manifest adds `features` and `feature_inputs`."""
    head = _head_params(model)
    cut = boundary(model, head)
    features, suffix = split(model, cut)
    artifacts = _finish(model, build_artifacts(suffix, head, out_dir), ort_format)
    metadata.update(features, labels=metadata.read(model).labels)
    extractor = save_model(features, artifacts.folder / FEATURES)
    if ort_format:
        convert_ort(extractor)
    manifest = {**artifacts.manifest(), "features": FEATURES, "feature_inputs": cut}
    artifacts.manifest_path.write_text(json.dumps(manifest, indent=1))
    return artifacts


def step_ms(artifacts: Artifacts, inputs: dict[str, np.ndarray], labels: np.ndarray, *, runs: int = 5,
            threads: int = 1) -> float:
    """Median wall time in milliseconds of one training step (forward, backward, optimizer) of `artifacts`
    on this batch, after one untimed step, with `threads` intra-op threads. The steps change only the
    in-memory state; the checkpoint on disk stays as it was."""
    session = TrainingSession(artifacts, artifacts.checkpoint, threads=threads)
    rng = np.random.default_rng(0)
    session.step(inputs, labels, 1e-3, rng)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.step(inputs, labels, 1e-3, rng)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def features_of(folder: str | os.PathLike, x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """What `on_device_head/features.onnx` computes for the model inputs `x` (feature name -> array), and the
    milliseconds that took (the session made beforehand)."""
    session = inference_session(Path(folder) / FEATURES)
    names = [o.name for o in session.get_outputs()]
    start = time.perf_counter()
    values = session.run(names, {session.get_inputs()[0].name: x})
    return dict(zip(names, values)), 1000 * (time.perf_counter() - start)


def step_costs(whole: Artifacts, head: Artifacts, inputs: dict[str, np.ndarray], labels: np.ndarray, *,
               threads: int = 1) -> dict[str, Any]:
    """One on-device training step on the batch `inputs` (model input name -> images) both ways, in ms:
    through the whole graph, and on the head alone fed stored features (plus computing those features once)."""
    features, once = features_of(head.folder, next(iter(inputs.values())))
    whole_ms = step_ms(whole, inputs, labels, threads=threads)
    head_ms = step_ms(head, features, labels, threads=threads)
    return {"batch": len(labels), "threads": threads, "whole_graph_ms": whole_ms, "head_ms": head_ms,
            "features_once_ms": once, "speedup": whole_ms / head_ms}
