"""Evaluate a classifier on a Dataset, and predict classes for single images, with ONNX Runtime.

Works on .onnx and .ort files and on in-memory models; labels and preprocessing come from the
model's metadata (which ORT format keeps), so a finetuned model needs nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError, first_line
from ftonnx.metadata import Preprocess
from ftonnx.train.data import Dataset, Loader
from ftonnx.train.images import DECODE_ERRORS, load_image


def session(model: str | os.PathLike | onnx.ModelProto,
            providers: Sequence[str] | None = None) -> tuple[Any, metadata.Meta]:
    """An InferenceSession for `model` (CPU unless `providers` says otherwise) and its ftonnx metadata."""
    import onnxruntime as ort

    providers = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise FtonnxError(f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build; "
                          f"available: {', '.join(ort.get_available_providers())}")
    if isinstance(model, onnx.ModelProto):
        source, name = model.SerializeToString(), "model"
    else:
        path = Path(model)
        if not path.is_file():
            raise FtonnxError(f"{path}: no such model file")
        source, name = str(path), str(path)
    try:
        sess = ort.InferenceSession(source, providers=providers)
    except Exception as exc:  # onnxruntime's error types derive from Exception only
        reason = first_line(exc)
        raise FtonnxError(f"{name}: onnxruntime cannot load it ({reason})") from None
    props = onnx.ModelProto()
    for key, value in sess.get_modelmeta().custom_metadata_map.items():
        props.metadata_props.add(key=key, value=value)
    return sess, metadata.read(props)


def _input(sess: Any) -> tuple[str, type]:
    """The name and numpy dtype of the model's one image input."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise FtonnxError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          "an image classifier has one")
    return inputs[0].name, np.float16 if inputs[0].type == "tensor(float16)" else np.float32


def _output(sess: Any, output: str) -> str:
    names = [o.name for o in sess.get_outputs()]
    if output not in names:
        raise FtonnxError(f"the model has no output {output!r}; its outputs: {', '.join(names)}")
    return output


def _preprocess(given: Preprocess | None, meta: metadata.Meta) -> Preprocess:
    if given is not None:
        return given
    if meta.preprocess is None:
        raise FtonnxError("the model's metadata has no preprocessing; pass it explicitly")
    return meta.preprocess


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def evaluate(model: str | os.PathLike | onnx.ModelProto, dataset: Dataset, *, preprocess: Preprocess | None = None,
             batch_size: int = 32, output: str = "logits", labels: list[str] | None = None,
             providers: Sequence[str] | None = None) -> dict[str, Any]:
    """Loss (mean cross entropy), top1, top5 (>= 5 classes), per-class accuracy (None for a class with no
    images) and the confusion matrix [true][pred] of `model` on `dataset`, whose classes must be the model's
    labels. `output` holds logits, or probabilities when it is named `probabilities`."""
    sess, meta = session(model, providers)
    labels = labels or meta.labels
    if not labels:
        raise FtonnxError("the model's metadata has no class labels; pass them explicitly")
    check_classes(labels, dataset.classes)
    name, dtype = _input(sess)
    out = _output(sess, output)
    loader = Loader(dataset, _preprocess(preprocess, meta), batch_size=batch_size)
    n = len(labels)
    confusion = np.zeros((n, n), np.int64)
    loss_sum, top5_hits, count = 0.0, 0, 0
    for x, y in loader.epoch(0):
        scores = np.asarray(sess.run([out], {name: x.astype(dtype, copy=False)})[0], np.float64)
        if scores.ndim != 2 or scores.shape[1] != n:
            raise FtonnxError(f"output {out!r} has shape {scores.shape}; expected (batch, {n}) for {n} labels")
        logp = np.log(np.clip(scores, 1e-12, None)) if out == "probabilities" else _log_softmax(scores)
        loss_sum -= float(logp[np.arange(len(y)), y].sum())
        np.add.at(confusion, (y, scores.argmax(axis=1)), 1)
        if n >= 5:
            top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
            top5_hits += int((top5 == y[:, None]).any(axis=1).sum())
        count += len(y)
    if count == 0:
        raise FtonnxError("no image of the data set could be decoded; nothing to evaluate")
    per_class_total = confusion.sum(axis=1)
    result: dict[str, Any] = {
        "loss": loss_sum / count,
        "top1": float(np.trace(confusion)) / count,
        "per_class": {c: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
                      for i, c in enumerate(labels)},
        "confusion": confusion.tolist(),
        "count": count,
    }
    if n >= 5:
        result["top5"] = top5_hits / count
    return result


def check_classes(labels: list[str], classes: list[str]) -> None:
    """Raise FtonnxError saying how the model's labels and the data set's classes differ, if they do."""
    labels, classes = list(labels), list(classes)
    if labels != classes:
        raise FtonnxError(_class_mismatch(labels, classes))


def _class_mismatch(labels: list[str], classes: list[str]) -> str:
    """Say how the model's labels and the data set's classes differ."""
    only_model = [c for c in labels if c not in classes]
    only_data = [c for c in classes if c not in labels]
    if not only_model and not only_data:
        return (f"the data set's classes are the model's labels in another order (model: {', '.join(labels[:10])}; "
                f"data: {', '.join(classes[:10])})")
    parts = []
    if only_model:
        parts.append(f"only the model has {', '.join(only_model[:10])}" + (" ..." if len(only_model) > 10 else ""))
    if only_data:
        parts.append(f"only the data has {', '.join(only_data[:10])}" + (" ..." if len(only_data) > 10 else ""))
    return f"the data set's classes differ from the model's labels: {'; '.join(parts)}"


def predict(model: str | os.PathLike | onnx.ModelProto, images: list[str], *, top: int = 5,
            preprocess: Preprocess | None = None, batch_size: int = 32,
            providers: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """The `top` most probable (class name, probability) pairs per image, most probable first."""
    if top < 1:
        raise FtonnxError(f"top must be at least 1, not {top}")
    sess, meta = session(model, providers)
    pre = _preprocess(preprocess, meta)
    name, dtype = _input(sess)
    outputs = [o.name for o in sess.get_outputs()]
    out = next((o for o in ("probabilities", "logits") if o in outputs), outputs[0])
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = np.stack([_load(path, pre) for path in chunk]).astype(dtype, copy=False)
        scores = np.asarray(sess.run([out], {name: x})[0], np.float64)
        probs = scores if out == "probabilities" else np.exp(_log_softmax(scores))
        labels = meta.labels if meta.labels and len(meta.labels) == probs.shape[1] else \
            [f"class_{i}" for i in range(probs.shape[1])]
        for row in probs:
            best = np.argsort(-row, kind="stable")[:top]
            results.append([(labels[i], float(row[i])) for i in best])
    return results


def _load(path: str, preprocess: Preprocess) -> np.ndarray:
    """One image for prediction; a clear error when it cannot be read."""
    if not Path(path).is_file():
        raise FtonnxError(f"{path}: no such image file")
    try:
        return load_image(path, preprocess)
    except DECODE_ERRORS as exc:
        reason = first_line(exc)
        raise FtonnxError(f"{path}: cannot decode the image ({reason})") from None
