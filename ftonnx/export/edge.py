"""Export a finetuned RUN folder, or any classifier's ONNX file, for edge deployment: float, int8 and fp16
models, each also fed uint8 pixels and with fixed shapes when asked, their ORT-format twins, on-device
training artifacts (whole graph, and the head alone on stored features), and a report of size, latency,
accuracy and accelerator coverage per variant.

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
from ftonnx.export.ondevice import build_on_device, build_on_device_head, step_costs
from ftonnx.export.qat import quantize_qat
from ftonnx.export.quantize import CALIBRATION_CAP, METHODS, Int8Result, calibration_batches, quantize_int8
from ftonnx.export.report import measure
from ftonnx.export.variants import Forms, write_forms
from ftonnx.files import disk_full
from ftonnx.graph.index import GraphIndex, value_shape
from ftonnx.graph.io import load_model
from ftonnx.graph.validate import check_untrusted
from ftonnx.preprocess import PreprocessFlags
from ftonnx.preprocess.use import preprocess_for
from ftonnx.train.run import RunFolder

ON_DEVICE = "on_device"
ON_DEVICE_HEAD = "on_device_head"
REPORT = "report.json"
KIND = "export"  # the marker's kind: OUT/.ftonnx-export
STEP_BATCH = 32  # images in the on-device training step measured both ways


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
    calibrated on, labelled images the report measures accuracy on, where it came from, the folders
    those images come from (which the output must keep apart from), and the activation ranges of a run
    trained with `--qat` ({tensor: [lowest, highest]}), which int8 then quantises with."""

    model: onnx.ModelProto
    calibration: Dataset | None
    val: Dataset | None
    origin: dict[str, str]
    data: list[str | None] = field(default_factory=list)
    qat: dict[str, list[float]] | None = None


def _images(folder: str) -> Dataset:
    """Every image under `folder` (labels unused): calibration needs no classes."""
    return Dataset([(f, 0) for f in image_files([folder])], ["-"])


def run_source(run_dir: str | os.PathLike, calib: str | None = None) -> ExportSource:
    """A RUN folder's model; calibration on its training images (or `calib`), accuracy on its val images; the
    ranges of a `--qat` run."""
    model, data_args = read_run(run_dir)
    quantisation = RunFolder(run_dir).read_quantisation()
    if quantisation is not None and "ranges" not in quantisation:
        raise FtonnxError(f"{run_dir}: a --qat run whose training has not finished; resume it first")
    try:
        train, val = discover(**data_args)
    except TypeError as exc:
        raise FtonnxError(f"{RunFolder(run_dir).config_path}: data_args do not fit ftonnx.data.discover "
                          f"({exc})") from None
    if val is not None:
        check_classes(metadata.read(model).labels, val.classes)
    return ExportSource(model, _images(calib) if calib else train, val, {"run": str(Path(run_dir).absolute())},
                        [data_args.get("data"), data_args.get("val"), calib],
                        quantisation["ranges"] if quantisation else None)


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


def _first_images(dataset: Dataset | None, preprocess: metadata.Preprocess, count: int,
                  pixels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` decoded images (pixels: uint8 N,H,W,C; else the model's input) and their labels; one
    black image without a data set."""
    if dataset is None:
        shape = (1, *preprocess.size, preprocess.channels) if pixels else preprocess.batch_shape(1)
        return np.zeros(shape, np.uint8 if pixels else np.float32), np.zeros(1, np.int64)
    first = dataclasses.replace(dataset, samples=dataset.samples[:count])
    return next(Loader(first, preprocess, batch_size=count, pixels=pixels).epoch(0))


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


@dataclass(frozen=True)
class ExportOptions:
    """What `export_run` writes and measures (see its arguments)."""

    int8: bool = False
    fp16: bool = False
    on_device: bool = False
    forms: Forms = Forms()
    calib_count: int | None = None
    calib_method: str = "minmax"
    keep_float: str | tuple[str, ...] = "auto"
    threads: int = 1
    runs: int = 50

    def check(self, model: onnx.ModelProto) -> None:
        """FtonnxError for values this model cannot be exported with, before any work."""
        if (self.calib_count is not None and self.calib_count < 1) or self.threads < 1 or self.runs < 1:
            raise FtonnxError(f"--calib-count, threads and runs must be at least 1, not {self.calib_count}, "
                              f"{self.threads}, {self.runs}")
        if self.calib_method not in METHODS:
            raise FtonnxError(f"calibration method must be one of {', '.join(METHODS)}, not {self.calib_method!r}")
        self.forms.check()
        if self.forms.pixels and model.graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise FtonnxError("--pixels: the model's input is not float32 (does it take pixels already?)")
        if self.keep_float != "auto":
            names = {n.name for n in model.graph.node}
            if unknown := [n for n in self.keep_float if n not in names]:
                raise FtonnxError(f"--int8-keep-float: the model has no node named {unknown[0]!r} "
                                  "(`ftonnx inspect` lists them)")


def _int8(source: ExportSource, options: ExportOptions, say: Callable[[str], None]) -> Int8Result:
    """The int8 model: calibrated on the source's calibration images, nodes kept float as asked; a `--qat` run's
    with the scales it trained with (only its outputs' ranges calibrated), nothing kept float unless named."""
    if source.calibration is None:
        raise FtonnxError("int8 needs calibration images: pass --calib DIR (a folder of typical inputs)")
    count = min(options.calib_count or CALIBRATION_CAP, len(source.calibration.samples))
    batches = calibration_batches(source.calibration, metadata.read(source.model).preprocess, count)
    if source.qat is not None:
        say(f"int8: the QAT scales of {len(source.qat)} tensors; the outputs' ranges from {count} images")
        keep = () if options.keep_float == "auto" else options.keep_float
        return quantize_qat(source.model, batches, source.qat, keep_float=keep)
    say(f"int8: calibrating on {count} images ({options.calib_method})"
        + (", choosing the nodes to keep in float" if options.keep_float == "auto" else ""))
    result = quantize_int8(source.model, batches, method=options.calib_method, keep_float=options.keep_float)
    if result.keep_float:
        say(f"int8: kept in float: {', '.join(result.keep_float)}")
    return result


def _models(source: ExportSource, options: ExportOptions,
            say: Callable[[str], None]) -> tuple[dict[str, onnx.ModelProto], Int8Result | None]:
    """The float model and the int8 and fp16 ones asked for; the int8 result."""
    models, int8 = {"float": source.model}, None
    if options.int8:
        int8 = _int8(source, options, say)
        models["int8"] = int8.model
    if options.fp16:
        say("fp16: converting")
        models["fp16"] = convert_fp16(source.model)
    return models, int8


def export_run(source: str | os.PathLike | ExportSource, out_dir: str | os.PathLike, *, int8: bool = False,
               fp16: bool = False, ort: bool = False, on_device: bool = False, static: bool = False, batch: int = 1,
               pixels: bool = False, pixel_order: str = "RGB", calib_count: int | None = None,
               calib_method: str = "minmax", keep_float: str | tuple[str, ...] = "auto", threads: int = 1,
               runs: int = 50, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export a RUN folder's model (or an `ExportSource`, e.g. `model_source(...)`) into `out_dir` as the
    variants asked for and write `out_dir/report.json`; returns the report (`ftonnx.export.report.measure`'s,
    plus the origin, the int8 calibration and the nodes it kept in float, and the on-device files and step
    costs).

    `static`: also each variant with fixed shapes (batch `batch`, the model's input size); `pixels`: also each
    fed uint8 pixels in `pixel_order` (RGB or BGR); `calib_count` images (default: every calibration image up
    to 300) calibrated by `calib_method` (minmax, percentile, entropy); `keep_float`: "auto" or node names
    left in float. Latency: batch 1, `threads` intra-op threads, median of `runs` runs. OUT is replaced whole
    (`ExportFolder`): none of an earlier export's files stay beside the new ones; a failure leaves OUT as it
    was."""
    say = progress or (lambda message: None)
    out = ExportFolder(out_dir)
    options = ExportOptions(int8=int8, fp16=fp16, on_device=on_device,
                            forms=Forms(pixels=pixels, pixel_order=pixel_order, static=static, batch=batch, ort=ort),
                            calib_count=calib_count, calib_method=calib_method,
                            keep_float=keep_float if isinstance(keep_float, str) else tuple(keep_float),
                            threads=threads, runs=runs)
    out.check()
    source = source if isinstance(source, ExportSource) else run_source(source)
    options.check(source.model)
    folders.check_apart(out.path, source.data, "-o")
    need = _export_size(source.model, options)
    folders.check_free(out.path.parent, need, "the export")
    with out.claimed():
        stage = out.stage()
        try:
            report = _export(source, stage, options, say)
            (stage / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            out.replace(stage)
        except OSError as exc:
            raise disk_full(exc, out.path, need) or exc
        finally:
            folders.remove(stage)
    return report


def _export_size(model: onnx.ModelProto, options: ExportOptions) -> int:
    """About how many bytes the export takes: the float model, int8 (~30 %) and fp16 (~50 %) variants, their
    fixed-shape, pixel and ORT forms, two copies for each on-device form."""
    onnx_files = 1 + 0.3 * options.int8 + 0.5 * options.fp16
    forms = (1 + options.forms.static) * (1 + options.forms.pixels) * (2 if options.forms.ort else 1)
    return int(model.ByteSize() * (onnx_files * forms + 4 * options.on_device))


def _on_device(source: ExportSource, stage: Path, options: ExportOptions,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Both on-device forms and the cost of one training step each way; the report's entries."""
    say("on-device: generating training artifacts (whole graph, and the head on stored features)")
    whole = build_on_device(source.model, stage / ON_DEVICE, ort_format=options.forms.ort)
    head = build_on_device_head(source.model, stage / ON_DEVICE_HEAD, ort_format=options.forms.ort)
    preprocess = metadata.read(source.model).preprocess
    x, y = _first_images(source.val or source.calibration, preprocess, STEP_BATCH, pixels=False)
    say(f"on-device: timing one training step of {len(y)} images each way")
    steps = step_costs(whole, head, {source.model.graph.input[0].name: x}, y, threads=options.threads)
    return {"on_device": sorted(p.name for p in whole.folder.iterdir()),
            "on_device_head": sorted(p.name for p in head.folder.iterdir()), "on_device_step": steps}


def _export(source: ExportSource, stage: Path, options: ExportOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Write every variant into `stage` and measure them; the report."""
    preprocess = metadata.read(source.model).preprocess
    models, int8 = _models(source, options, say)
    variants = write_forms(models, stage, options.forms, say)
    device = _on_device(source, stage, options, say) if options.on_device else \
        {"on_device": None, "on_device_head": None, "on_device_step": None}
    val = source.val
    say(f"report: latency on {options.threads} thread(s), accelerator coverage"
        + (f", accuracy on {len(val.samples)} val images" if val else ""))
    sample = _first_images(val or source.calibration, preprocess, 1, pixels=True)[0][0]
    report = measure(variants, val, preprocess, sample, threads=options.threads, runs=options.runs)
    report.update(**source.origin, calibration_images=int8.images if int8 else 0,
                  int8=int8.summary() if int8 else None, **device)
    return report
