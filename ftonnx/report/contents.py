"""What a report page shows, gathered from a run folder (or from an evaluation) before anything is drawn:
the model's metrics and per-image probabilities on the validation set, the run's epochs and learning
rate schedule, its options, data, timing and cache, and an export's report.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftonnx.data import Dataset, discover
from ftonnx.data.dataset import ImageBytes
from ftonnx.errors import FtonnxError
from ftonnx.evaluate import Predictions, evaluate_with_predictions
from ftonnx.export.edge import REPORT
from ftonnx.metadata import Preprocess
from ftonnx.progress import Progress, log
from ftonnx.report.markup import duration, size
from ftonnx.train.config import TrainConfig
from ftonnx.train.run import RunFolder, RunRecord
from ftonnx.train.schedule import learning_rate

SCHEDULE_POINTS = 2000  # the per-step learning-rate curve is drawn through at most this many steps

Facts = list[tuple[str, Any]]


@dataclass
class History:
    """A run's epochs: the metrics lines, the best one (whose weights were exported), the learning rate
    per step (epoch position, rate) and the warmup."""

    metrics: list[dict[str, Any]]
    best: dict[str, Any]
    schedule: tuple[np.ndarray, np.ndarray]
    warmup_epochs: int
    epochs: int


@dataclass
class Contents:
    """Everything a report page shows. `result` is `ftonnx.evaluate.evaluate`'s dict for `predictions`;
    `facts` are titled tables of names and values; `history`, `export` (an export folder and its
    report.json) and `train_counts` (training images per class) belong to a run's report. `images` holds the
    encoded images of a table of bytes, by name (the thumbnails read them there rather than from files)."""

    title: str
    subtitle: list[tuple[str, Any]]
    labels: list[str]
    result: dict[str, Any]
    predictions: Predictions
    facts: list[tuple[str, Facts]] = field(default_factory=list)
    history: History | None = None
    export: tuple[str, dict[str, Any]] | None = None
    train_counts: list[int] | None = None
    images: ImageBytes | None = None


def schedule_points(config: TrainConfig, metrics: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """The run's learning rate per step from `ftonnx.train.schedule.learning_rate` and its resolved options:
    (position in epochs at the end of each step, rate). Steps per epoch come from the metrics' step count."""
    last = metrics[-1]
    per_epoch = max(1, last["step"] // last["epoch"])
    total = per_epoch * config.epochs
    steps = np.unique(np.linspace(0, total - 1, min(total, SCHEDULE_POINTS)).round().astype(int))
    rates = [learning_rate(int(s), base_lr=config.lr, total_steps=total, warmup_steps=config.warmup_epochs * per_epoch,
                           schedule=config.schedule) for s in steps]
    return (steps + 1) / per_epoch, np.array(rates)


def best_epoch(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics line of the exported weights: the last epoch that improved on every earlier one."""
    return [m for m in metrics if m.get("best")][-1]


def read_export(folder: str | os.PathLike, *, required: bool) -> tuple[str, dict[str, Any]] | None:
    """(FOLDER, its report.json) of `ftonnx export`; None when there is none and it is not `required`."""
    path = Path(folder) / REPORT
    if not path.is_file():
        if required:
            raise FtonnxError(f"{path}: no such file; --export names a folder `ftonnx export` wrote")
        return None
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FtonnxError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list):
        raise FtonnxError(f"{path}: no \"variants\" list; is it the report of `ftonnx export`?")
    return str(Path(folder).absolute()), report


def evaluated(model: str | os.PathLike, dataset: Dataset, batch_size: int,
              preprocess: Preprocess | None = None) -> tuple[dict, Predictions, float]:
    """The metrics and per-image probabilities of `model` on `dataset` (a progress bar on a terminal),
    and the seconds it took."""
    start = time.monotonic()
    with Progress(len(dataset.samples), "report: evaluating") as bar:
        result, predictions = evaluate_with_predictions(model, dataset, batch_size=batch_size, preprocess=preprocess,
                                                        progress=bar.update)
    return result, predictions, time.monotonic() - start


def finished(run: RunFolder) -> tuple[RunRecord, list[dict[str, Any]]]:
    """The run's record and metrics; FtonnxError unless it is a folder with a finished training."""
    if not run.path.is_dir():
        raise FtonnxError(f"{run}: no such run folder")
    record, metrics = run.read_record(), run.read_metrics()
    if not run.model_path.is_file() or not any(m.get("best") for m in metrics):
        raise FtonnxError(f"{run}: no finished training (model.onnx and metrics.jsonl); run ftonnx finetune first")
    return record, metrics


def run_contents(run: RunFolder, record: RunRecord, metrics: list[dict[str, Any]],
                 export_dir: str | os.PathLike | None) -> Contents:
    """A finished run's report (`record` and `metrics` as `finished` read them): RUN/model.onnx evaluated on
    the run's validation set, its epochs and options, and the export in `export_dir` (default RUN/export when
    it holds a report)."""
    export = read_export(export_dir or run.export_dir, required=export_dir is not None)
    try:
        train, val = discover(**record.data_args)
    except TypeError as exc:
        raise FtonnxError(f"{run.config_path}: data_args do not fit ftonnx.data.discover ({exc})") from None
    if val is None:
        raise FtonnxError(f"{run.config_path}: the run's data has no validation images to report on")
    log(f"report: evaluating {run.model_path} on {len(val.samples)} validation images")
    result, predictions, seconds = evaluated(run.model_path, val, record.config.batch_size)
    config = record.config
    history = History(metrics, best_epoch(metrics), schedule_points(config, metrics), config.warmup_epochs or 0,
                      config.epochs)
    counts = np.bincount([label for _, label in train.samples], minlength=len(train.classes)).tolist()
    return Contents(title=f"Run report: {run.path.absolute().name}",
                    subtitle=[("run", run.path.absolute()), ("model", run.model_path.absolute())],
                    labels=train.classes, result=result, predictions=predictions,
                    facts=_run_facts(record, metrics, (train, val), result, seconds), history=history,
                    export=export, train_counts=counts, images=val.images)


def _run_facts(record: RunRecord, metrics: list[dict[str, Any]], datasets: tuple[Dataset, Dataset],
               result: dict[str, Any], seconds: float) -> list[tuple[str, Facts]]:
    """The run's options, data, timing, activation cache and source model, as titled tables."""
    train, val = datasets
    config = record.config.to_json()
    config["cache_mem"] = size(config["cache_mem"]) if config["cache_mem"] else "default"
    args = record.data_args
    data = [("training data", args.get("list_file") or args.get("data")),
            ("validation data", args.get("val_list") or args.get("val") or
             (f"{args['val_split']:.0%} of each class, seed {args.get('seed')}" if args.get("val_split") else
              "val/ beside train/")),
            ("classes", len(train.classes)), ("training images", len(train.samples)),
            ("validation images", _decoded(val, result)), ("skipped when listing", len(train.skipped + val.skipped)),
            ("augmentation", config["augment"])]
    seconds_per_epoch = [m["seconds"] for m in metrics]
    timing = [("epochs", f"{len(metrics)} of {record.config.epochs}"),
              ("training and validation", duration(sum(seconds_per_epoch))),
              ("per epoch", duration(statistics.mean(seconds_per_epoch))),
              ("training images/s", f"{statistics.median(m['images_per_s'] for m in metrics):.1f} (median)"),
              ("activation cache built in", duration((record.cache or {}).get("seconds"))),
              ("report evaluation", f"{duration(seconds)} ({result['count'] / max(seconds, 1e-9):.1f} images/s)")]
    return [("Options", list(config.items())), ("Data", data), ("Timing", timing),
            ("Activation cache", _cache_facts(record)), ("Source", list(record.source.items()))]


def _cache_facts(record: RunRecord) -> Facts:
    cache = record.cache
    if not cache:
        return [("used", f"no: {record.no_cache_reason or 'the whole graph trained every step'}")]
    return [("used", "yes: the frozen prefix ran once per image"), ("boundary", ", ".join(cache.get("boundary", []))),
            ("views per training image", cache.get("views")), ("size", size(cache.get("bytes"))),
            ("held", "on disk (memory-mapped)" if cache.get("on_disk") else "in memory"),
            ("built in", duration(cache.get("seconds"))),
            *([("computed on", f"Ray ({'a local cluster' if cache['ray'] == 'local' else cache['ray']})")]
              if cache.get("ray") else [])]


def _decoded(dataset: Dataset, result: dict[str, Any]) -> str:
    """How many of the set's images were evaluated."""
    total = len(dataset.samples)
    return str(total) if result["count"] == total else f"{result['count']} of {total} (the rest could not be decoded)"


def eval_contents(model: str | os.PathLike, dataset: Dataset, data: dict[str, Any],
                  evaluation: tuple[dict[str, Any], Predictions, float]) -> Contents:
    """An evaluation's report: `model` on `dataset` (found by the options in `data`), from `evaluated`."""
    result, predictions, seconds = evaluation
    path = Path(model).absolute()
    facts = [("Model", [("file", path), ("size", size(path.stat().st_size))]),
             ("Data", [*data.items(), ("classes", len(dataset.classes)), ("images", _decoded(dataset, result)),
                       ("skipped when listing", len(dataset.skipped))]),
             ("Timing", [("evaluation", f"{duration(seconds)} ({result['count'] / max(seconds, 1e-9):.1f} images/s)")])]
    return Contents(f"Evaluation: {path.name}", [("model", path), ("data", data.get("data"))], dataset.classes,
                    result, predictions, facts, images=dataset.images)
