"""The training loop on ONNX Runtime's training API: epochs of steps, validation, checkpoints, export.

Batches arrive as (dict[input name -> array], int64 labels) from factories, so the same loop trains
on decoded images or on cached activations. Everything random (data order, augmentation, dropout
masks) depends on (seed, epoch, step) only, and ORT's step is deterministic on a fixed thread count,
so a run killed mid-epoch and resumed from its last checkpoint ends with bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.export.inference import export_inference
from ftonnx.train import checkpoint
from ftonnx.train.artifacts import OPTIMIZERS, build_artifacts, read_manifest
from ftonnx.train.freeze import trainable_parameters
from ftonnx.train.prepare import draw_mask
from ftonnx.train.probe import check_training_step, needs_probe
from ftonnx.train.progress import Progress, log
from ftonnx.train.schedule import SCHEDULES, default_lr, default_warmup_epochs, learning_rate

Batch = tuple[dict[str, np.ndarray], np.ndarray]
BatchFactory = Callable[[int], Iterable[Batch]]
ValFactory = Callable[[], Iterable[Batch]]
LABELS = "labels"
CONFIG = "config.json"
DEVICES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    """Training options; everything here is JSON-serialisable and stored in RUN/config.json."""

    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None  # None: schedule.default_lr (1e-3 head only, 1e-4 when the backbone trains)
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: 1e-4 with adamw, 0 with sgd
    schedule: str = "cosine"
    warmup_epochs: int | None = None  # None: one epoch when epochs > 1 (schedule.default_warmup_epochs)
    freeze: str = "backbone"
    augment: bool | None = None  # None: on when a backbone parameter trains
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    no_cache: bool = False  # train through the whole graph even when the frozen part is a prefix
    cache_mem: int | None = None  # bytes of activations kept in memory; None: cache.default_mem_limit()
    cache_views: int = 1  # augmented views cached per training image (> 1 implies augmentation)

    def validate(self) -> None:
        """Raise FtonnxError on an option out of range, before any work."""
        if self.epochs < 1:
            raise FtonnxError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise FtonnxError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise FtonnxError(f"--lr must be a positive number, not {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise FtonnxError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise FtonnxError(f"--weight-decay must be >= 0, not {self.weight_decay}")
        if self.optimizer == "sgd" and self.weight_decay:
            raise FtonnxError("ORT's SGD has no weight decay: use --optimizer adamw or --weight-decay 0")
        if self.schedule not in SCHEDULES:
            raise FtonnxError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise FtonnxError(f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), not {self.warmup_epochs}")
        if self.device not in DEVICES:
            raise FtonnxError(f"unknown device {self.device!r}; use one of {', '.join(DEVICES)}")
        if self.cache_mem is not None and self.cache_mem < 1:
            raise FtonnxError(f"--cache-mem must be at least 1 byte, not {self.cache_mem}")
        if self.cache_views < 1:
            raise FtonnxError(f"--cache-views must be at least 1, not {self.cache_views}")
        if self.cache_views > 1 and self.no_cache:
            raise FtonnxError("--cache-views caches augmented views, which --no-cache turns off; drop one of them")
        if self.cache_views > 1 and self.augment is False:
            raise FtonnxError("--cache-views caches augmented views, which --no-augment turns off; drop one of them")

    @property
    def warmup(self) -> int:
        """Warmup epochs, the default resolved."""
        return default_warmup_epochs(self.epochs) if self.warmup_epochs is None else self.warmup_epochs

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """Where the run is and how it went; `best` is the metrics line of the best epoch."""

    run_dir: Path
    model_path: Path
    best: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)


def check_device(device: str) -> None:
    """Fail early when `device` cannot be used by the installed ONNX Runtime."""
    if device not in DEVICES:
        raise FtonnxError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise FtonnxError("--device cuda needs ONNX Runtime's CUDA training build: pip install 'ftonnx[cuda]' "
                              "(onnxruntime-training==1.19.2 in place of onnxruntime-training-cpu)")


def _better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher val top-1 wins, ties go to the lower val loss; without validation, the lower train loss."""
    if best is None:
        return True
    if record["val_top1"] is None:
        return record["train_loss"] < best["train_loss"]
    return (record["val_top1"], -record["val_loss"]) > (best["val_top1"], -best["val_loss"])


class _Session:
    """ORT's Module and Optimizer over one run's artifacts, fed by name."""

    def __init__(self, art: Path, state_path: Path, device: str) -> None:
        import onnxruntime
        from onnxruntime.training import api

        onnxruntime.set_default_logger_severity(3)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 0
        self.state = api.CheckpointState.load_checkpoint(str(state_path))
        self.module = api.Module(str(art / "training_model.onnx"), self.state, str(art / "eval_model.onnx"),
                                 device=device, session_options=options)
        self.optimizer = api.Optimizer(str(art / "optimizer_model.onnx"), self.module)
        self.masks = {m["input"]: m for m in read_manifest(art)["dropout"]}
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
        loss = self.module(*self._feeds(self.train_inputs, inputs, labels, rng))[0]
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def evaluate(self, batches: Iterable[Batch], desc: str) -> tuple[float, float]:
        """Mean loss and top-1 over `batches` with the eval graph."""
        self.module.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with Progress(None, desc) as bar:
            for inputs, labels in batches:
                loss, logits = self.module(*self._feeds(self.eval_inputs, inputs, labels, None))[:2]
                loss_sum += float(loss) * len(labels)
                correct += int((np.argmax(logits, axis=1) == labels).sum())
                count += len(labels)
                bar.update(len(labels))
        if not count:
            raise FtonnxError("the validation set yielded no images")
        return loss_sum / count, correct / count


def _resolved(config: TrainConfig, model: onnx.ModelProto, trainable: list[str]) -> TrainConfig:
    """`config` with the defaults that depend on the model filled in (learning rate, weight decay)."""
    head = set(metadata.read(model).head_params)
    lr = config.lr or default_lr(any(p not in head for p in trainable), config.optimizer)
    decay = config.weight_decay if config.weight_decay is not None else (1e-4 if config.optimizer == "adamw" else 0.0)
    return dataclasses.replace(config, lr=lr, weight_decay=decay)


def _steps(batches_factory: BatchFactory, steps_per_epoch: int | None) -> int:
    """Steps per epoch, which the schedule needs before the first batch."""
    if steps_per_epoch is not None:
        return steps_per_epoch
    try:
        return len(batches_factory(0))  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("give steps_per_epoch: the batch factory's iterables have no len()") from None


def check_run_dir(run_dir: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """The `last` sidecar to resume from (None for a fresh run); refuses to overwrite a run."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FtonnxError(f"{run_dir}: is a file; --out names the run folder")
    last = checkpoint.read_sidecar(run_dir, "last")
    if config.resume and last is None:
        raise FtonnxError(f"{run_dir}: no checkpoint to resume from; run without --resume")
    if not config.resume and last is not None:
        raise FtonnxError(f"{run_dir} already holds a training run; pass --resume to continue it or choose another --out")
    return last


def train(model: onnx.ModelProto, batches_factory: BatchFactory, val_factory: ValFactory | None,
          run_dir: str | os.PathLike, config: TrainConfig, *, steps_per_epoch: int | None = None,
          run_info: dict[str, Any] | None = None, trainable: list[str] | None = None,
          export_graph: onnx.ModelProto | None = None) -> TrainResult:
    """Train `model` (output `logits`) on `batches_factory(epoch)`, validate on `val_factory()` each epoch,
    keep best and last checkpoints and metrics in `run_dir`, and export RUN/model.onnx with the best weights.

    `steps_per_epoch` is needed when the factory's iterables have no len(); `run_info` (e.g. "data_args")
    goes into RUN/config.json beside the options, written when a fresh run starts. `trainable` defaults
    to `config.freeze` applied to `model`; `export_graph` (default `model`) is the graph RUN/model.onnx
    is made of, e.g. the whole network when `model` is the suffix trained on cached activations.
    """
    config.validate()
    check_device(config.device)
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        last = check_run_dir(run_dir, config)
        trainable = trainable if trainable is not None else trainable_parameters(model, config.freeze)
        config = _resolved(config, model, trainable)
        steps = _steps(batches_factory, steps_per_epoch)
        run_dir.mkdir(parents=True, exist_ok=True)
        art = run_dir / "artifacts"
        manifest = read_manifest(art)
        if last is None or manifest is None:
            build_artifacts(model, trainable, art, optimizer=config.optimizer, weight_decay=config.weight_decay)
            if needs_probe(art / "training_model.onnx"):
                inputs, labels = next(iter(batches_factory(0)))
                masks = {m["input"]: draw_mask(m, len(labels), np.random.default_rng(0))
                         for m in read_manifest(art)["dropout"]}
                check_training_step(art, {**inputs, **masks}, labels)
        elif manifest["trainable"] != trainable or manifest["optimizer"] != config.optimizer:
            raise FtonnxError(f"{run_dir} was trained with other --freeze/--optimizer options; resume with the same")
        session = _Session(art, checkpoint.checkpoint_path(run_dir, last) if last else art / "checkpoint",
                           config.device)
        if last is None:
            checkpoint.write_text_atomic(run_dir / CONFIG, json.dumps({**config.to_json(), **(run_info or {})}, indent=1))
    except FtonnxError:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    checkpoint.truncate_metrics(run_dir, last["epoch"] if last else 0)
    if last:
        log(f"resuming {run_dir} after epoch {last['epoch']}/{config.epochs}")
    best = last["best"] if last else None
    for epoch in range(last["epoch"] if last else 0, config.epochs):
        record = _epoch(session, batches_factory, val_factory, epoch, steps, config)
        record["best"] = _better(record, best)
        best = record if record["best"] else best
        checkpoint.append_metrics(run_dir, record)
        checkpoint.save(session.state, run_dir, epoch=epoch + 1, step=record["step"], best=best,
                        is_best=record["best"])
        log(_summary(record, config.epochs))
    model_path = _export(model if export_graph is None else export_graph, run_dir, trainable, best)
    return TrainResult(run_dir, model_path, best, checkpoint.read_metrics(run_dir), trainable)


def _epoch(session: _Session, batches_factory: BatchFactory, val_factory: ValFactory | None, epoch: int,
           steps: int, config: TrainConfig) -> dict[str, Any]:
    """Train one epoch and validate; returns its metrics line (without `best`)."""
    start = time.monotonic()
    loss_sum, count, step, lr = 0.0, 0, epoch * steps, config.lr
    total = steps * config.epochs
    with Progress(steps, f"epoch {epoch + 1}/{config.epochs}", unit="batch") as bar:
        for i, (inputs, labels) in enumerate(batches_factory(epoch)):
            step = epoch * steps + i
            lr = learning_rate(step, base_lr=config.lr, total_steps=total, warmup_steps=config.warmup * steps,
                               schedule=config.schedule)
            loss = session.step(inputs, labels, lr, np.random.default_rng([config.seed, epoch, i]))
            if not math.isfinite(loss):
                raise FtonnxError(f"training diverged (loss {loss} at epoch {epoch + 1}, step {i + 1}); lower --lr")
            loss_sum += loss * len(labels)
            count += len(labels)
            bar.update(1, loss=loss)
    if not count:
        raise FtonnxError("the training set yielded no images")
    train_time = time.monotonic() - start
    val_loss, val_top1 = (session.evaluate(val_factory(), "validation") if val_factory else (None, None))
    return {"epoch": epoch + 1, "step": step + 1, "lr": lr, "train_loss": loss_sum / count,
            "val_loss": val_loss, "val_top1": val_top1, "images": count,
            "images_per_s": count / max(train_time, 1e-9), "seconds": time.monotonic() - start}


def _summary(record: dict[str, Any], epochs: int) -> str:
    """The one line an epoch leaves on stderr."""
    text = f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"
    if record["val_top1"] is not None:
        text += f", val loss {record['val_loss']:.4f}, val top-1 {record['val_top1']:.4f}"
    return text + f", {record['images_per_s']:.1f} img/s, {record['seconds']:.0f} s" + (" (best)" if record["best"] else "")


def best_weights(run_dir: str | os.PathLike, names: list[str]) -> dict[str, np.ndarray]:
    """The values of parameters `names` in the run's best checkpoint."""
    from onnxruntime.training.api import CheckpointState

    sidecar = checkpoint.read_sidecar(run_dir, "best")
    if sidecar is None:
        raise FtonnxError(f"{run_dir}: no best checkpoint; has an epoch completed?")
    state = CheckpointState.load_checkpoint(str(checkpoint.checkpoint_path(run_dir, sidecar)))
    return {name: np.array(state.parameters[name].data) for name in names}


def _export(model: onnx.ModelProto, run_dir: Path, trainable: list[str], best: dict[str, Any]) -> Path:
    """RUN/model.onnx: the input graph with the best epoch's weights and a `probabilities` output."""
    trained = {k: best[k] for k in ("epoch", "val_top1", "val_loss", "train_loss")}
    return export_inference(model, best_weights(run_dir, trainable), run_dir / "model.onnx", trained=trained)
