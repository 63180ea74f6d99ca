"""Evaluate a classifier on a Dataset, and predict classes for single images, with ONNX Runtime.

Works on .onnx and .ort files and on in-memory models; labels and preprocessing come from the
model's metadata (which ORT format keeps), so a finetuned model needs nothing else.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.data import Dataset, Loader, check_classes
from ftonnx.data.images import DECODE_ERRORS, decode, load_image
from ftonnx.errors import FtonnxError, first_line
from ftonnx.files import check_new_file, write_text_atomic
from ftonnx.metadata import Preprocess
from ftonnx.preprocess import PreprocessFlags, facts_from_shape, resolve_facts
from ftonnx.preprocess.use import preprocess_for
from ftonnx.progress import log
from ftonnx.runtime import fixed_batch, image_input, inference_session, run, session_metadata

PREDICT_BATCH_BYTES = 256 << 20  # input bytes of one prediction batch: a handful of huge images at most


def _session(model: str | os.PathLike | onnx.ModelProto,
             providers: Sequence[str] | None = None) -> tuple[Any, metadata.Meta]:
    """An InferenceSession for `model` (CPU unless `providers` says otherwise, checked first as a model from
    outside) and its ftonnx metadata."""
    sess = inference_session(model, providers=providers, untrusted=True)
    return sess, session_metadata(sess)


def _output(sess: Any, output: str) -> str:
    names = [o.name for o in sess.get_outputs()]
    if output not in names:
        raise FtonnxError(f"the model has no output {output!r}; its outputs: {', '.join(names)}")
    return output


def _pixel_order(sess: Any, meta: metadata.Meta) -> str | None:
    """The channel order of the uint8 pixels a model takes (an `ftonnx export --pixels` variant), else None."""
    if image_input(sess)[1] != np.uint8:
        return None
    return (meta.extra.get("pixels") or {}).get("order", "RGB")


def _fed(pixels: np.ndarray, order: str | None) -> np.ndarray:
    """Decoded RGB (or gray) pixels in a pixel model's channel order; other inputs as they are."""
    return np.ascontiguousarray(pixels[..., ::-1]) if order == "BGR" else pixels


def _preprocess(given: Preprocess | None, sess: Any, meta: metadata.Meta) -> Preprocess:
    """`given`, else what the model's metadata and input shape say (one line saying what is missing); either
    way checked against the declared input (metadata may contradict it). A pixel model's input shape says
    nothing of the preprocessing inside it: its metadata does."""
    if given is None and _pixel_order(sess, meta) and meta.preprocess is not None:
        return meta.preprocess
    image = sess.get_inputs()[0]
    preprocess = given or resolve_facts(facts_from_shape(image.name, list(image.shape)), meta.preprocess).require()
    preprocess.check_input(list(image.shape), image.name)
    return preprocess


def preprocessing(model: str | os.PathLike | onnx.ModelProto, flags: PreprocessFlags | None,
                  images: Dataset | None = None) -> Preprocess | None:
    """The preprocessing `flags` give for `model` (None when they say nothing: the model's own is used);
    `auto` chooses on `images` and needs an ONNX file, not an .ort one."""
    if flags is None or not flags.given:
        return None
    if not isinstance(model, onnx.ModelProto) and Path(model).suffix == ".ort":
        if flags.preset == "auto":
            raise FtonnxError("--preprocess auto needs the .onnx model; pass a preset for an .ort file")
        sess, meta = _session(model)
        image = sess.get_inputs()[0]
        return resolve_facts(facts_from_shape(image.name, list(image.shape)), meta.preprocess, flags).require()
    from ftonnx.graph import load

    return preprocess_for(model if isinstance(model, onnx.ModelProto) else load(model), flags, images, say=log)


def run_batches(sess: Any, output: str, x: np.ndarray) -> np.ndarray:
    """`output` of a one-input session for the batch `x`, run in chunks of the model's fixed batch size when
    it has one (the last chunk padded with zeros, which are dropped again)."""
    name, dtype = image_input(sess)
    if dtype == np.uint8 and x.dtype != np.uint8:
        raise FtonnxError("the model takes uint8 pixels (an `ftonnx export --pixels` variant), not preprocessed "
                          "floats; feed it the decoded images")
    size = fixed_batch(sess)
    if size is None or size == len(x):
        return run(sess, [output], {name: x.astype(dtype, copy=False)})[0]
    chunks = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size].astype(dtype, copy=False)
        padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), dtype)])
        chunks.append(run(sess, [output], {name: padded})[0][:len(chunk)])
    return np.concatenate(chunks)


def class_probabilities(sess: Any, x: np.ndarray) -> np.ndarray:
    """The class probabilities a classifier session gives for batch `x`: its `probabilities` output, else its
    first output, turned into probabilities by a softmax unless it already is a distribution per row."""
    outputs = [o.name for o in sess.get_outputs()]
    out = "probabilities" if "probabilities" in outputs else outputs[0]
    scores = np.asarray(run_batches(sess, out, x), np.float64)
    if scores.ndim != 2:
        raise FtonnxError(f"output {out!r} has shape {scores.shape}; a classifier's is (batch, classes)")
    return scores if out == "probabilities" or _are_probabilities(scores) else np.exp(_log_softmax(scores))


def _are_probabilities(scores: np.ndarray) -> bool:
    """Whether each row is already a distribution (a model that ends in Softmax under another name)."""
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass
class Predictions:
    """Every evaluated image in data-set order (images that could not be decoded are left out): its path,
    its true class index and the model's probability for each class."""

    paths: list[str]
    targets: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, classes) float32


def evaluate(model: str | os.PathLike | onnx.ModelProto, dataset: Dataset, *, preprocess: Preprocess | None = None,
             batch_size: int = 32, output: str = "logits", labels: list[str] | None = None,
             providers: Sequence[str] | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Loss (mean cross entropy), top1, top5 (>= 5 classes), per-class accuracy (None for a class with no
    images), the confusion matrix [true][pred], and per class precision, recall, F1 and support with their
    macro and weighted averages (scikit-learn's; an undefined value is None and left out of the averages)
    of `model` on `dataset`, whose classes must be the model's labels. `output` holds logits, or
    probabilities when it is named `probabilities`; `progress` is called with each batch's image count."""
    return _evaluate(model, dataset, preprocess, batch_size, output, labels, providers, progress, keep=False)[0]


def evaluate_with_predictions(model: str | os.PathLike | onnx.ModelProto, dataset: Dataset, *,
                              preprocess: Preprocess | None = None, batch_size: int = 32, output: str = "logits",
                              labels: list[str] | None = None, providers: Sequence[str] | None = None,
                              progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], Predictions]:
    """`evaluate`'s metrics and each image's probabilities (for confusion pictures and lists of mistakes)."""
    return _evaluate(model, dataset, preprocess, batch_size, output, labels, providers, progress, keep=True)


def _evaluate(model: str | os.PathLike | onnx.ModelProto, dataset: Dataset, preprocess: Preprocess | None,
              batch_size: int, output: str, labels: list[str] | None, providers: Sequence[str] | None,
              progress: Callable[[int], None] | None, *, keep: bool) -> tuple[dict[str, Any], Predictions | None]:
    sess, meta = _session(model, providers)
    labels = labels or meta.labels
    if not labels:
        raise FtonnxError("the model's metadata has no class labels; pass them explicitly")
    check_classes(labels, dataset.classes)
    out = _output(sess, output)
    tally = _Tally(len(labels), keep=keep)
    order = _pixel_order(sess, meta)
    loader = Loader(dataset, _preprocess(preprocess, sess, meta), batch_size=batch_size, pixels=order is not None)
    for x, y, indices in loader.indexed_epoch(0):
        scores = np.asarray(run_batches(sess, out, _fed(x, order)), np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(labels):
            raise FtonnxError(f"output {out!r} has shape {scores.shape}; expected (batch, {len(labels)}) "
                              f"for {len(labels)} labels")
        tally.add(scores, y, indices, probabilities=out == "probabilities")
        if progress is not None:
            progress(len(y))
    result = tally.result(labels)
    if not keep:
        return result, None
    return result, Predictions([dataset.samples[i][0] for i in tally.indices], tally.targets,
                               np.concatenate(tally.probabilities))


class _Tally:
    """Running sums of an evaluation: loss, confusion matrix, top-5 hits; the true and predicted class of
    each image, and with `keep` each image's sample index and probabilities."""

    def __init__(self, n: int, *, keep: bool) -> None:
        self.confusion = np.zeros((n, n), np.int64)
        self.loss_sum, self.top5_hits, self.count = 0.0, 0, 0
        self.keep, self.true, self.predicted = keep, [], []
        self.sample_indices: list[np.ndarray] = []
        self.probabilities: list[np.ndarray] = []

    def add(self, scores: np.ndarray, y: np.ndarray, indices: np.ndarray, *, probabilities: bool) -> None:
        logp = np.log(np.clip(scores, 1e-12, None)) if probabilities else _log_softmax(scores)
        self.loss_sum -= float(logp[np.arange(len(y)), y].sum())
        predicted = scores.argmax(axis=1)
        np.add.at(self.confusion, (y, predicted), 1)
        if scores.shape[1] >= 5:
            top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
            self.top5_hits += int((top5 == y[:, None]).any(axis=1).sum())
        self.count += len(y)
        self.true.append(y)
        self.predicted.append(predicted)
        if self.keep:
            self.sample_indices.append(indices)
            self.probabilities.append((scores if probabilities else np.exp(logp)).astype(np.float32))

    @property
    def indices(self) -> list[int]:
        return [int(i) for i in np.concatenate(self.sample_indices)]

    @property
    def targets(self) -> np.ndarray:
        return np.concatenate(self.true).astype(np.int64)

    def result(self, labels: list[str]) -> dict[str, Any]:
        if self.count == 0:
            raise FtonnxError("no image of the data set could be decoded; nothing to evaluate")
        per_class_total = self.confusion.sum(axis=1)
        result: dict[str, Any] = {
            "loss": self.loss_sum / self.count,
            "top1": float(np.trace(self.confusion)) / self.count,
            "per_class": {c: (float(self.confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
                          for i, c in enumerate(labels)},
            "confusion": self.confusion.tolist(),
            "count": self.count,
        }
        if len(labels) >= 5:
            result["top5"] = self.top5_hits / self.count
        result.update(class_metrics(self.targets, np.concatenate(self.predicted), labels))
        return result


def class_metrics(targets: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class (dicts keyed by label) and their macro and weighted
    averages, by scikit-learn. A value scikit-learn cannot define (precision of a class never predicted,
    recall of a class without images) is None, and the averages leave it out."""
    from sklearn.metrics import precision_recall_fscore_support

    def defined(values: Any) -> list[float | None]:
        return [None if v is None or np.isnan(v) else float(v) for v in np.atleast_1d(values)]

    every = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, labels=every,
                                                                     zero_division=np.nan)
    result: dict[str, Any] = {key: dict(zip(labels, defined(values)))
                              for key, values in (("precision", precision), ("recall", recall), ("f1", f1))}
    result["support"] = dict(zip(labels, (int(n) for n in support)))
    for average in ("macro", "weighted"):
        scores = precision_recall_fscore_support(targets, predicted, labels=every, average=average,
                                                 zero_division=np.nan)[:3]
        result[average] = dict(zip(("precision", "recall", "f1"), (defined(v)[0] for v in scores)))
    return result


def predict(model: str | os.PathLike | onnx.ModelProto, images: list[str], *, top: int = 5,
            preprocess: Preprocess | None = None, batch_size: int = 32,
            providers: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """The `top` most probable (class name, probability) pairs per image, most probable first."""
    if top < 1:
        raise FtonnxError(f"top must be at least 1, not {top}")
    sess, meta = _session(model, providers)
    pre, order = _preprocess(preprocess, sess, meta), _pixel_order(sess, meta)
    batch_size = max(1, min(batch_size, PREDICT_BATCH_BYTES // (4 * pre.channels * pre.size[0] * pre.size[1])))
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        probs = class_probabilities(sess, _fed(np.stack([_load(path, pre, order) for path in chunk]), order))
        labels = meta.labels if meta.labels and len(meta.labels) == probs.shape[1] else \
            [f"class_{i}" for i in range(probs.shape[1])]
        for row in probs:
            best = np.argsort(-row, kind="stable")[:top]
            results.append([(labels[i], float(row[i])) for i in best])
    return results


def write_predictions_csv(path: str | os.PathLike, images: list[str], results: list[list[tuple[str, float]]]) -> Path:
    """`path`, a new CSV file of image,label,probability rows (each image's classes, most probable first)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", "label", "probability"])
    writer.writerows([image, label, f"{p:.6f}"] for image, best in zip(images, results) for label, p in best)
    return write_text_atomic(check_new_file(path), out.getvalue())


def _load(path: str, preprocess: Preprocess, order: str | None) -> np.ndarray:
    """One image for prediction (decoded pixels for a pixel model); a clear error when it cannot be read."""
    if not Path(path).is_file():
        raise FtonnxError(f"{path}: no such image file")
    try:
        if order is not None:
            return np.asarray(decode(path, preprocess)).reshape(*preprocess.size, preprocess.channels)
        return load_image(path, preprocess)
    except DECODE_ERRORS as exc:
        reason = first_line(exc)
        raise FtonnxError(f"{path}: cannot decode the image ({reason})") from None
