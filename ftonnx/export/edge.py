"""Export a finetuned RUN folder, or any classifier's ONNX file, for edge deployment: float, int8 and fp16
models, their ORT-format twins, on-device training artifacts, and a report of size, latency and accuracy
per variant.

Everything is built in a hidden staging folder beside the output, which then replaces the output
whole (`ExportFolder`): a failure leaves nothing half-written there, and a re-export leaves none of the
previous export's files behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from ftonnx import folders, metadata
from ftonnx.data import Dataset, Loader, check_classes, discover, image_files
from ftonnx.errors import FtonnxError
from ftonnx.export.fp16 import convert_fp16
from ftonnx.export.ondevice import build_on_device
from ftonnx.export.ort_format import convert_ort
from ftonnx.export.quantize import quantize_int8
from ftonnx.export.report import measure
from ftonnx.files import disk_full
from ftonnx.graph.index import GraphIndex, value_shape
from ftonnx.graph.io import load_model, save_model
from ftonnx.graph.validate import check_untrusted
from ftonnx.preprocess import PreprocessFlags
from ftonnx.preprocess.use import preprocess_for
from ftonnx.train.run import RunFolder

FILES = {"float": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
ON_DEVICE = "on_device"
REPORT = "report.json"
CALIBRATION_BATCH = 16
KIND = "export"  # the marker's kind: OUT/.ftonnx-export


def read_run(run_dir: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The inference model of a RUN folder and the `discover` arguments of its data, checked."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise FtonnxError(f"{run}: no such run folder")
    model = load_model(run.model_path)
    check_untrusted(model, str(run.model_path))
    outputs = {o.name for o in model.graph.output}
    if not {"logits", "probabilities"} <= outputs:
        raise FtonnxError(f"{run.model_path}: outputs {', '.join(sorted(outputs))}; expected logits and "
                          "probabilities (the inference model ftonnx finetune writes)")
    meta = metadata.read(model)
    if not meta.labels or meta.preprocess is None:
        raise FtonnxError(f"{run.model_path}: the metadata lacks labels or preprocessing")
    inputs = GraphIndex(model).inputs
    if len(inputs) != 1:
        raise FtonnxError(f"{run.model_path}: {len(inputs)} inputs; an image classifier has one")
    meta.preprocess.check_input(value_shape(next(i for i in model.graph.input if i.name == inputs[0])), inputs[0])
    return model, run.read_record().data_args


@dataclass
class ExportSource:
    """What an export starts from: the float model (preprocessing in its metadata), the images int8 is
    calibrated on, labelled images the report measures accuracy on, where it came from, and the folders
    those images come from (which the output must keep apart from)."""

    model: onnx.ModelProto
    calibration: Dataset | None
    val: Dataset | None
    origin: dict[str, str]
    data: list[str | None] = field(default_factory=list)


def _images(folder: str) -> Dataset:
    """Every image under `folder` (labels unused): calibration needs no classes."""
    return Dataset([(f, 0) for f in image_files([folder])], ["-"])


def run_source(run_dir: str | os.PathLike, calib: str | None = None) -> ExportSource:
    """A RUN folder's model; calibration on its training images (or `calib`), accuracy on its val images."""
    model, data_args = read_run(run_dir)
    try:
        train, val = discover(**data_args)
    except TypeError as exc:
        raise FtonnxError(f"{RunFolder(run_dir).config_path}: data_args do not fit ftonnx.data.discover "
                          f"({exc})") from None
    if val is not None:
        check_classes(metadata.read(model).labels, val.classes)
    return ExportSource(model, _images(calib) if calib else train, val, {"run": str(Path(run_dir).absolute())},
                        [data_args.get("data"), data_args.get("val"), calib])


def model_source(path: str | os.PathLike, *, calib: str | None = None, data: str | None = None,
                 preprocess: PreprocessFlags | None = None) -> ExportSource:
    """Any classifier's ONNX file: preprocessing from its metadata or `preprocess`, calibration on the images
    under `calib`, accuracy on the labelled folder `data` (its classes must be the model's labels)."""
    from ftonnx.graph import load

    model = load(path)
    calibration = _images(calib) if calib else None
    val = None
    if data:
        train, held_out = discover(data)
        val = held_out or train
        labels = metadata.read(model).labels
        if not labels:
            raise FtonnxError(f"{path}: no class labels to measure accuracy with; add them with "
                              "`ftonnx meta MODEL --labels ...`, or drop --data")
        check_classes(labels, val.classes)
    chosen = preprocess_for(model, preprocess, calibration or val)
    return ExportSource(metadata.update(model, preprocess=chosen), calibration, val,
                        {"model": str(Path(path).absolute())}, [calib, data])


def calibration_batches(images: Dataset, preprocess: metadata.Preprocess, count: int) -> Iterator[np.ndarray]:
    """Batches of `count` images drawn at random (seed 0), as the model's input."""
    pick = sorted(np.random.default_rng(0).permutation(len(images.samples))[:count])
    subset = dataclasses.replace(images, samples=[images.samples[i] for i in pick])
    return (x for x, _ in Loader(subset, preprocess, batch_size=CALIBRATION_BATCH).epoch(0))


def _first_image(dataset: Dataset, preprocess: metadata.Preprocess) -> np.ndarray:
    """One decoded image as a batch of 1, the input of the latency runs."""
    first = dataclasses.replace(dataset, samples=dataset.samples[:8])
    x, _ = next(Loader(first, preprocess, batch_size=8).epoch(0))
    return x[:1]


class ExportFolder:
    """OUT/, the export folder's one owner: ftonnx's own (`.ftonnx-export` lists the files it wrote), held by
    one export at a time (`.lock`), built whole in a staging folder beside it and swapped in, so that it
    never mixes two exports. A folder holding anything ftonnx did not write there is refused."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path).absolute()
        self.path = Path(os.path.realpath(path)) if path.is_symlink() else path  # the folder a link names

    def check(self) -> None:
        """FtonnxError before any work when OUT cannot become (or stay) an ftonnx export."""
        if not self.path.parent.is_dir():
            raise FtonnxError(f"{self.path}: folder {self.path.parent} does not exist")
        folders.check_claimable(self.path, KIND, "-o")
        if folders.is_owned(self.path, KIND):
            written = set(folders.read_marker(self.path, KIND).get("files", []))
            others = sorted(e.name for e in self.path.iterdir()
                            if e.name not in written | {folders.LOCK, folders.marker(self.path, KIND).name})
            if others:
                raise FtonnxError(f"{self.path}: holds {', '.join(others[:3])}, which the earlier export did not "
                                  "write; move it away or choose another -o")

    @contextlib.contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold OUT for one export: created or adopted (marker), locked, staging left by killed exports
        removed; when the block fails, what this export created is removed again."""
        existed = self.path.exists()
        created = folders.claim(self.path, KIND, "-o")
        try:
            with folders.Lock(self.path, "-o"):
                folders.remove_leftovers(self.path.parent, self._prefix)
                yield
        except BaseException:
            if created:
                for entry in (self.path / folders.LOCK, folders.marker(self.path, KIND)):
                    folders.remove(entry)
                if not existed:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()
            raise
        finally:
            folders.remove_leftovers(self.path.parent, self._prefix)

    @property
    def _prefix(self) -> str:
        return f".ftonnx-export-{self.path.name}."

    def stage(self) -> Path:
        """A new, empty staging folder beside OUT (on the same file system, so that the swap is a rename)."""
        return Path(tempfile.mkdtemp(prefix=self._prefix, dir=self.path.parent))

    def replace(self, stage: Path) -> None:
        """Make the finished `stage` OUT, with its marker listing what it holds; the earlier OUT goes whole."""
        folders.write_marker(stage, KIND, files=sorted(e.name for e in stage.iterdir()))
        old = self.stage()
        try:
            os.rename(self.path, old)
            os.rename(stage, self.path)
        except OSError as exc:
            raise FtonnxError(f"{self.path}: cannot replace it ({exc.strerror or exc})") from None
        folders.remove(old)


def _variants(source: ExportSource, stage: Path, *, int8: bool, fp16: bool, ort: bool, calib: int,
              say: Callable[[str], None]) -> dict[str, Path]:
    """Write the float model and the variants asked for into `stage`; returns name -> file."""
    model = source.model
    variants = {"float": save_model(model, stage / FILES["float"])}
    if int8:
        if source.calibration is None:
            raise FtonnxError("int8 needs calibration images: pass --calib DIR (a folder of typical inputs)")
        count = min(calib, len(source.calibration.samples))
        say(f"int8: calibrating on {count} images")
        variants["int8"] = stage / FILES["int8"]
        quantize_int8(model, variants["int8"],
                      calibration_batches(source.calibration, metadata.read(model).preprocess, calib))
    if fp16:
        say("fp16: converting")
        variants["fp16"] = stage / FILES["fp16"]
        convert_fp16(model, variants["fp16"])
    if ort:
        say("ort: converting each variant to ORT format")
        variants.update({f"{name}.ort": convert_ort(path) for name, path in list(variants.items())})
    return variants


def export_run(source: str | os.PathLike | ExportSource, out_dir: str | os.PathLike, *, int8: bool = False,
               fp16: bool = False, ort: bool = False, on_device: bool = False, calib_count: int = 100,
               threads: int = 1, runs: int = 50, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export a RUN folder's model (or an `ExportSource`, e.g. `model_source(...)`) into `out_dir` as the
    variants asked for and write `out_dir/report.json`; returns the report (`ftonnx.export.report.measure`'s,
    plus the origin, calibration count and on-device files). Latency: batch 1, `threads` intra-op threads,
    median of `runs` runs. OUT is replaced whole (`ExportFolder`): none of an earlier export's files stay
    beside the new ones; a failure leaves OUT as it was."""
    say = progress or (lambda message: None)
    out = ExportFolder(out_dir)
    if calib_count < 1 or threads < 1 or runs < 1:
        raise FtonnxError(f"--calib-count, threads and runs must be at least 1, not {calib_count}, {threads}, {runs}")
    out.check()
    source = source if isinstance(source, ExportSource) else run_source(source)
    folders.check_apart(out.path, source.data, "-o")
    need = _export_size(source.model, int8=int8, fp16=fp16, ort=ort, on_device=on_device)
    folders.check_free(out.path.parent, need, "the export")
    with out.claimed():
        stage = out.stage()
        try:
            report = _export(source, stage, int8=int8, fp16=fp16, ort=ort, on_device=on_device, calib=calib_count,
                             threads=threads, runs=runs, say=say)
            (stage / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            out.replace(stage)
        except OSError as exc:
            raise disk_full(exc, out.path, need) or exc
        finally:
            folders.remove(stage)
    return report


def _export_size(model: onnx.ModelProto, *, int8: bool, fp16: bool, ort: bool, on_device: bool) -> int:
    """About how many bytes the export takes: the float model, int8 (~30 %) and fp16 (~50 %) variants, their
    ORT twins, two copies for the on-device artifacts."""
    onnx_files = 1 + 0.3 * int8 + 0.5 * fp16
    return int(model.ByteSize() * (onnx_files * (2 if ort else 1) + 2 * on_device))


def _export(source: ExportSource, stage: Path, *, int8: bool, fp16: bool, ort: bool, on_device: bool, calib: int,
            threads: int, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Write every variant into `stage` and measure them; the report."""
    preprocess = metadata.read(source.model).preprocess
    variants = _variants(source, stage, int8=int8, fp16=fp16, ort=ort, calib=calib, say=say)
    if on_device:
        say("on-device: generating training artifacts")
        build_on_device(source.model, stage / ON_DEVICE, ort_format=ort)
    val = source.val
    say(f"report: latency on {threads} thread(s)" + (f", accuracy on {len(val.samples)} val images" if val else ""))
    images = val or source.calibration
    sample = _first_image(images, preprocess) if images else np.zeros(preprocess.batch_shape(1), np.float32)
    report = measure(variants, val, preprocess, sample, threads=threads, runs=runs)
    calibrated = min(calib, len(source.calibration.samples)) if int8 and source.calibration else 0
    report.update(**source.origin, calibration_images=calibrated,
                  on_device=sorted(p.name for p in (stage / ON_DEVICE).iterdir()) if on_device else None)
    return report
