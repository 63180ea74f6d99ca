"""ONNX Runtime's training API over one artifacts folder: a Module and its Optimizer, fed by input name.

Besides the batch's inputs and labels, the training graph reads the Dropout masks that
`ftonnx.graph.trainable` turned into inputs; they are drawn here from the step's generator (all ones
for evaluation), so a resumed run draws the same masks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from ftonnx.errors import FtonnxError
from ftonnx.progress import Progress
from ftonnx.train.artifacts import LOGITS, Artifacts

Batch = tuple[dict[str, np.ndarray], np.ndarray]
LABELS = "labels"
SMALL_GRAPH_VALUES = 100_000  # a graph with fewer weight values than this trains on one intra-op thread


def draw_mask(spec: dict, batch: int, rng: np.random.Generator | None) -> np.ndarray:
    """A dropout mask for `batch` samples (scaled by 1/(1-ratio)); all ones when `rng` is None (eval)."""
    shape = (batch, *spec["shape"])
    if rng is None or spec["ratio"] <= 0:
        return np.ones(shape, np.float32)
    keep = rng.random(shape) >= spec["ratio"]
    return (keep / (1.0 - spec["ratio"])).astype(np.float32)


def cross_entropy_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    """The summed cross-entropy of `logits` (batch, classes) against int `labels`, in float64."""
    z = logits.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).sum())


def threads_for(model: onnx.ModelProto) -> int | None:
    """One intra-op thread for a small graph (a head trained on cached features: a second thread's wake-ups
    and spinning between steps cost more than its share of the work, and slow the checkpoint written after
    each epoch); None, every core, otherwise."""
    values = sum(math.prod(t.dims) for t in model.graph.initializer)
    return 1 if values < SMALL_GRAPH_VALUES else None


class TrainingSession:
    """ORT's Module and Optimizer over `artifacts`, starting from the checkpoint at `state_path`, on `device`
    with `threads` intra-op threads (default: every core)."""

    def __init__(self, artifacts: Artifacts, state_path: Path, device: str = "cpu", *, threads: int | None = None,
                 quiet: bool = True) -> None:
        import onnxruntime
        from onnxruntime.training import api

        if quiet:
            onnxruntime.set_default_logger_severity(3)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 0
        self.state = api.CheckpointState.load_checkpoint(str(state_path))
        self.module = api.Module(str(artifacts.training_model), self.state, str(artifacts.eval_model),
                                 device=device, session_options=options)
        self.optimizer = api.Optimizer(str(artifacts.optimizer_model), self.module)
        self.masks = {m["input"]: m for m in (artifacts.manifest() or {}).get("dropout", [])}
        self.train_inputs = self.module.input_names()
        self.module.eval()
        self.eval_inputs = self.module.input_names()

    def _feeds(self, names: list[str], inputs: dict[str, np.ndarray], labels: np.ndarray,
               rng: np.random.Generator | None) -> list[np.ndarray]:
        feeds = []
        for name in names:
            if name == LABELS:
                feeds.append(np.ascontiguousarray(labels, np.int64))
            elif name in self.masks:
                feeds.append(draw_mask(self.masks[name], len(labels), rng))
            elif name in inputs:
                feeds.append(np.ascontiguousarray(inputs[name], np.float32))
            else:
                raise FtonnxError(f"the batches have no input {name!r} (they have {', '.join(inputs)})")
        return feeds

    def step(self, inputs: dict[str, np.ndarray], labels: np.ndarray, lr: float, rng: np.random.Generator) -> float:
        """One optimizer step; returns the batch's mean loss."""
        self.module.train()
        self.optimizer.set_learning_rate(lr)
        outputs = self.module(*self._feeds(self.train_inputs, inputs, labels, rng))
        loss = outputs[0] if isinstance(outputs, (list, tuple)) else outputs  # one output comes back bare
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def evaluate(self, batches: Iterable[Batch], desc: str) -> tuple[float, float]:
        """Mean cross-entropy and top-1 over `batches` with the eval graph. The loss is plain cross-entropy
        of the logits whatever the training objective (smoothing, class weights, regularisers), so that
        validation losses compare across strategies and with `ftonnx eval`."""
        loss_sum, correct, count = 0.0, 0, 0
        with Progress(None, desc) as bar:
            for inputs, labels in batches:
                logits = self.logits(inputs, labels)
                loss_sum += cross_entropy_sum(logits, labels)
                correct += int((np.argmax(logits, axis=1) == labels).sum())
                count += len(labels)
                bar.update(len(labels))
        if not count:
            raise FtonnxError("the validation set yielded no images")
        return loss_sum / count, correct / count

    def logits(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> np.ndarray:
        """The eval graph's logits for one batch (what validation scores: with `--qat`, fake-quantised)."""
        self.module.eval()
        labels = np.zeros(len(next(iter(inputs.values()))), np.int64) if labels is None else labels
        outputs = self.module(*self._feeds(self.eval_inputs, inputs, labels, None))
        return outputs[self.module.output_names().index(LOGITS)] if isinstance(outputs, (list, tuple)) else outputs

    def weights(self, names: list[str]) -> dict[str, np.ndarray]:
        """The current values of parameters `names`."""
        return {name: np.array(self.state.parameters[name].data) for name in names}
