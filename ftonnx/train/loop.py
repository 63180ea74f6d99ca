"""The training loop on ONNX Runtime's training API: epochs of steps, validation, checkpoints; it returns
the best epoch's weights, and the caller decides what to export.

Batches come from a `Batches` source, so the same loop trains on decoded images or on cached
activations. Everything random (data order, augmentation, dropout masks) depends on (seed, epoch,
step) only, and ORT's step is deterministic on a fixed thread count, so a run killed mid-epoch and
resumed from its last checkpoint ends with bit-identical weights.

Early stopping (`patience` > 0): after each epoch, when the monitored validation value has not
improved on its best for `patience` epochs, the run stops; the metrics line and the `last` sidecar
say why, and resuming such a run trains no further. The best checkpoint is kept as always.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ftonnx import folders
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.qdqplan import QuantPlan
from ftonnx.graph.reparam import fold
from ftonnx.progress import Progress, log
from ftonnx.train.artifacts import Artifacts, build_artifacts
from ftonnx.train.batches import Batches
from ftonnx.train.config import TrainConfig
from ftonnx.train.delta import channel_attention
from ftonnx.train.probe import check_training_step, needs_probe
from ftonnx.train.qat import scale_gain
from ftonnx.train.run import KIND, RunFolder, RunRecord
from ftonnx.train.schedule import learning_rate
from ftonnx.train.session import TrainingSession, threads_for
from ftonnx.train.strategy import plan_strategy


@dataclass
class TrainResult:
    """Where the run is and how it went: `best` is the metrics line of the best epoch, `weights` the
    trained parameters' values at that epoch; `stopped` says why the run stopped early (None when it ran
    its epochs); `model_path` is set once a model is exported, `report_path` once its report is written."""

    run_dir: Path
    best: dict[str, Any]
    weights: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    model_path: Path | None = None
    stopped: str | None = None
    report_path: Path | None = None


def _better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher val top-1 wins, ties go to the lower val loss; without validation, the lower train loss."""
    if best is None:
        return True
    if record["val_top1"] is None:
        return record["train_loss"] < best["train_loss"]
    return (record["val_top1"], -record["val_loss"]) > (best["val_top1"], -best["val_loss"])


def _session(model: onnx.ModelProto, batches: Batches, run: RunFolder, config: TrainConfig, trainable: list[str],
             last: dict[str, Any] | None, qat: QuantPlan | None) -> TrainingSession:
    """The training session of the run: artifacts built (and a risky first step probed) for a fresh run,
    reused from the last checkpoint when resuming with the same options."""
    artifacts = Artifacts(run.artifacts)
    manifest = artifacts.manifest()
    if last is None or manifest is None:
        folders.claim(run.path, KIND, "--out")
        strategy = plan_strategy(model, config, trainable)
        if strategy.layers:
            strategy.objective.attention = channel_attention(model, strategy.layers, batches)
        build_artifacts(model, trainable, artifacts.folder, optimizer=config.optimizer,
                        weight_decay=config.weight_decay, strategy=strategy, qat=qat,
                        scale_gain=scale_gain(config.lr))
        if needs_probe(artifacts):
            check_training_step(artifacts, *next(iter(batches.epoch(0))))
    elif (manifest["trainable"] != trainable or manifest.get("optimizer") != config.optimizer
          or bool(manifest.get("qat")) != (qat is not None)):
        raise FtonnxError(f"{run} was trained with other --freeze/--optimizer/--qat options; resume with the same")
    try:
        return TrainingSession(artifacts, run.checkpoint_path(last) if last else artifacts.checkpoint, config.device,
                               threads=threads_for(model))
    except Exception as exc:  # ORT's RuntimeError on a damaged training, eval or optimizer model
        raise FtonnxError(f"{artifacts.folder}: ONNX Runtime cannot load it ({first_line(exc).split(' : ')[-1]}); "
                          f"remove {artifacts.folder} and resume again to build it anew") from None


def train(model: onnx.ModelProto, batches: Batches, val: Batches | None, run_dir: str | os.PathLike,
          config: TrainConfig, trainable: list[str], record: RunRecord | None = None,
          qat: QuantPlan | None = None) -> TrainResult:
    """Train parameters `trainable` of `model` (output `logits`) on `batches`, validate on `val` each epoch,
    keep best and last checkpoints and metrics in `run_dir`; returns the best epoch's weights.

    `config` is resolved (`TrainConfig.resolved`); with `config.resume` the run continues from its last
    checkpoint. `record` (default: the options alone) becomes RUN/config.json when a fresh run starts.
    With `qat` (where the int8 model quantises), training and validation run with fake quantisation there.
    """
    if not config.is_resolved:
        raise ValueError("train() needs a resolved config: TrainConfig.resolved(...)")
    if config.patience and val is None:
        raise FtonnxError("--patience stops on validation results: give validation images")
    run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    last = run.check_start(config.resume)
    session = _session(model, batches, run, config, trainable, last, qat)
    if last is None:
        run.write_record(record or RunRecord(config, {}))
    done, stopped = (last["epoch"], last.get("stopped")) if last else (0, None)
    run.truncate_metrics(done)
    history = run.read_metrics()
    if last:
        log(f"{run} stopped early after epoch {done}: {stopped}; nothing left to train" if stopped else
            f"resuming {run} after epoch {done}/{config.epochs}")
    best = last["best"] if last else None
    for epoch in range(done, done if stopped else config.epochs):
        metrics = _epoch(session, batches, val, epoch, config)
        metrics["best"] = _better(metrics, best)
        best = metrics if metrics["best"] else best
        history.append(metrics)
        stopped = early_stop(history, config)
        metrics.update({"stopped": stopped} if stopped else {})
        run.append_metrics(metrics)
        run.save_checkpoint(session.state, epoch=epoch + 1, step=metrics["step"], best=best, is_best=metrics["best"],
                            stopped=stopped)
        log(_summary(metrics, config.epochs))
        if stopped:
            log(f"stopping early after epoch {epoch + 1}: {stopped}")
            break
    return TrainResult(run.path, best, best_weights(run, trainable), run.read_metrics(), trainable, stopped=stopped)


def early_stop(history: list[dict[str, Any]], config: TrainConfig) -> str | None:
    """Why to stop after the last epoch of `history`: `config.monitor` has not beaten its best (lower
    val_loss, higher val_top1; a tie is no improvement) for `config.patience` epochs; None to go on."""
    if not config.patience:
        return None
    sign = 1.0 if config.monitor == "val_loss" else -1.0
    values = [sign * r[config.monitor] for r in history]
    at = values.index(min(values))
    waited = len(values) - 1 - at
    if waited < config.patience:
        return None
    return (f"no better {config.monitor} for {waited} epochs (best {history[at][config.monitor]:.4f} "
            f"at epoch {history[at]['epoch']})")


def _epoch(session: TrainingSession, batches: Batches, val: Batches | None, epoch: int,
           config: TrainConfig) -> dict[str, Any]:
    """Train one epoch and validate; returns its metrics line (without `best`)."""
    start = time.monotonic()
    steps = len(batches)
    loss_sum, count, step, lr = 0.0, 0, epoch * steps, config.lr
    with Progress(steps, f"epoch {epoch + 1}/{config.epochs}", unit="batch") as bar:
        for i, (inputs, labels) in enumerate(batches.epoch(epoch)):
            step = epoch * steps + i
            lr = learning_rate(step, base_lr=config.lr, total_steps=steps * config.epochs,
                               warmup_steps=config.warmup_epochs * steps, schedule=config.schedule)
            loss = session.step(inputs, labels, lr, np.random.default_rng([config.seed, epoch, i]))
            if not math.isfinite(loss):
                raise FtonnxError(f"training diverged (loss {loss} at epoch {epoch + 1}, step {i + 1}); lower --lr")
            loss_sum += loss * len(labels)
            count += len(labels)
            bar.update(1, loss=loss)
    if not count:
        raise FtonnxError("the training set yielded no images")
    train_time = time.monotonic() - start
    val_loss, val_top1 = session.evaluate(val.epoch(0), "validation") if val is not None else (None, None)
    return {"epoch": epoch + 1, "step": step + 1, "lr": lr, "train_loss": loss_sum / count,
            "val_loss": val_loss, "val_top1": val_top1, "images": count,
            "images_per_s": count / max(train_time, 1e-9), "seconds": time.monotonic() - start}


def _summary(record: dict[str, Any], epochs: int) -> str:
    """The one line an epoch leaves on stderr."""
    text = f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"
    if record["val_top1"] is not None:
        text += f", val loss {record['val_loss']:.4f}, val top-1 {record['val_top1']:.4f}"
    text += f", {record['images_per_s']:.1f} img/s, {record['seconds']:.0f} s"
    return text + (" (best)" if record["best"] else "")


def best_weights(run_dir: str | os.PathLike, names: list[str], which: str = "best") -> dict[str, np.ndarray]:
    """The values of parameters `names` in the run's `best` (or `last`) checkpoint, those trained as
    w0 + s * delta folded back (see `ftonnx.train.strategy`)."""
    from onnxruntime.training.api import CheckpointState

    run = RunFolder(run_dir)
    sidecar = run.sidecar(which)
    if sidecar is None:
        raise FtonnxError(f"{run}: no {which} checkpoint; has an epoch completed?")
    state = CheckpointState.load_checkpoint(str(run.checkpoint_path(sidecar)))
    folds = (Artifacts(run.artifacts).manifest() or {}).get("reparametrised", {})

    def value(name: str) -> np.ndarray:
        w = np.array(state.parameters[name].data)
        f = folds.get(name)
        return w if f is None else fold(w, np.array(state.parameters[f["delta"]].data), f["scale"])

    return {name: value(name) for name in names}
