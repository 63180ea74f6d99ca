"""Export a finetuned RUN folder for edge deployment: float, int8 and fp16 models, their ORT-format
twins, on-device training artifacts, and a report of size, latency and accuracy per variant.

Everything is built in a hidden folder beside the output and moved in at the end, so a failure
leaves nothing half-written at the output path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.data import Dataset, Loader, check_classes, discover
from ftonnx.errors import FtonnxError
from ftonnx.export.fp16 import convert_fp16
from ftonnx.export.ondevice import build_on_device
from ftonnx.export.ort_format import convert_ort
from ftonnx.export.quantize import quantize_int8
from ftonnx.export.report import measure
from ftonnx.graph.io import load_model
from ftonnx.train.run import RunFolder

FILES = {"float": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
ON_DEVICE = "on_device"
REPORT = "report.json"
CALIBRATION_BATCH = 16


def read_run(run_dir: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The inference model of a RUN folder and the `discover` arguments of its data, checked."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise FtonnxError(f"{run}: no such run folder")
    model = load_model(run.model_path)
    outputs = {o.name for o in model.graph.output}
    if not {"logits", "probabilities"} <= outputs:
        raise FtonnxError(f"{run.model_path}: outputs {', '.join(sorted(outputs))}; expected logits and "
                          "probabilities (the inference model ftonnx finetune writes)")
    meta = metadata.read(model)
    if not meta.labels or meta.preprocess is None:
        raise FtonnxError(f"{run.model_path}: the metadata lacks labels or preprocessing")
    return model, run.read_record().data_args


def calibration_batches(train: Dataset, preprocess: metadata.Preprocess, count: int) -> Iterator[np.ndarray]:
    """Batches of `count` training images drawn at random (seed 0), as the model's input."""
    pick = sorted(np.random.default_rng(0).permutation(len(train.samples))[:count])
    subset = dataclasses.replace(train, samples=[train.samples[i] for i in pick])
    return (x for x, _ in Loader(subset, preprocess, batch_size=CALIBRATION_BATCH).epoch(0))


def _first_image(dataset: Dataset, preprocess: metadata.Preprocess) -> np.ndarray:
    """One decoded image as a batch of 1, the input of the latency runs."""
    first = dataclasses.replace(dataset, samples=dataset.samples[:8])
    x, _ = next(Loader(first, preprocess, batch_size=8).epoch(0))
    return x[:1]


def _publish(stage: Path, out_dir: Path) -> None:
    """Move everything in `stage` into `out_dir`, replacing entries of the same name."""
    out_dir.mkdir(exist_ok=True)
    for entry in stage.iterdir():
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def _variants(run: Path, model: onnx.ModelProto, stage: Path, train: Dataset, *, int8: bool, fp16: bool,
              ort: bool, calib: int, say: Callable[[str], None]) -> dict[str, Path]:
    """Write the float model and the variants asked for into `stage`; returns name -> file."""
    preprocess = metadata.read(model).preprocess
    variants = {"float": stage / FILES["float"]}
    shutil.copyfile(RunFolder(run).model_path, variants["float"])
    if int8:
        say(f"int8: calibrating on {min(calib, len(train.samples))} training images")
        variants["int8"] = stage / FILES["int8"]
        quantize_int8(model, variants["int8"], calibration_batches(train, preprocess, calib))
    if fp16:
        say("fp16: converting")
        variants["fp16"] = stage / FILES["fp16"]
        convert_fp16(model, variants["fp16"])
    if ort:
        say("ort: converting each variant to ORT format")
        variants.update({f"{name}.ort": convert_ort(path) for name, path in list(variants.items())})
    return variants


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, int8: bool = False, fp16: bool = False,
               ort: bool = False, on_device: bool = False, calib: int = 100, threads: int = 1, runs: int = 50,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export RUN's model into `out_dir` as the variants asked for and write `out_dir/report.json`;
    returns the report (`ftonnx.export.report.measure`'s, plus the run, calibration count and
    on-device files). Latency: batch 1, `threads` intra-op threads, median of `runs` runs."""
    say = progress or (lambda message: None)
    run, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FtonnxError(f"{out_dir}: exists and is not a folder")
    if not out_dir.absolute().parent.is_dir():
        raise FtonnxError(f"{out_dir}: folder {out_dir.absolute().parent} does not exist")
    if calib < 1 or threads < 1 or runs < 1:
        raise FtonnxError(f"--calib, threads and runs must be at least 1, not {calib}, {threads}, {runs}")
    model, data_args = read_run(run)
    meta = metadata.read(model)
    try:
        train, val = discover(**data_args)
    except TypeError as exc:
        raise FtonnxError(f"{RunFolder(run).config_path}: data_args do not fit ftonnx.data.discover ({exc})") from None
    if val is not None:
        check_classes(meta.labels, val.classes)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.absolute().parent))
    try:
        variants = _variants(run, model, stage, train, int8=int8, fp16=fp16, ort=ort, calib=calib, say=say)
        if on_device:
            say("on-device: generating training artifacts")
            build_on_device(model, stage / ON_DEVICE, ort_format=ort)
        say(f"report: latency on {threads} thread(s)" + (f", accuracy on {len(val.samples)} val images" if val else ""))
        report = measure(variants, val, meta.preprocess, _first_image(val or train, meta.preprocess),
                         threads=threads, runs=runs)
        report.update(run=str(run.absolute()), calibration_images=min(calib, len(train.samples)) if int8 else 0,
                      on_device=sorted(p.name for p in (stage / ON_DEVICE).iterdir()) if on_device else None)
        (stage / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        _publish(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report
