"""The report of a run or an evaluation: report.html, one self-contained page (pictures and thumbnails
embedded, nothing loaded from the network, no script), and its two pictures as PNG files beside it,
curves.png (loss, top-1, learning rate per epoch) and confusion.png.

    write_run_report("run")                       # RUN/report.html; every training run calls it
    write_eval_report("dir", "model.onnx", val, data={"data": "images/val"})

The predictions come from evaluating the exported model (`ftonnx.evaluate`) on the validation set, so
the page shows what the model file does. matplotlib draws the pictures; it comes with the `report` extra,
and `require` says so in one line when it is missing. It is imported only while a report is written.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from ftonnx.data import Dataset
from ftonnx.errors import FtonnxError
from ftonnx.files import write_bytes_atomic, write_text_atomic
from ftonnx.metadata import Preprocess
from ftonnx.progress import log
from ftonnx.train.run import RunFolder

INSTALL = "pip install 'ftonnx[report]'"


def available() -> bool:
    """Whether the report's plotting library is installed (without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def require() -> None:
    """Fail with the one line that says how to get the report, before any long work."""
    if not available():
        raise FtonnxError(f"the report page needs matplotlib: {INSTALL}")


def write_run_report(run_dir: str | os.PathLike, *, export_dir: str | os.PathLike | None = None) -> Path:
    """Write RUN/report.html, RUN/curves.png and RUN/confusion.png for a finished run: RUN/model.onnx
    evaluated on the run's validation set, its epochs, options, data, timing and cache, and the export in
    `export_dir` (default: RUN/export when it holds a report.json). Returns the page's path."""
    from ftonnx.report.contents import finished, run_contents

    run = RunFolder(run_dir)
    record, metrics = finished(run)  # what the user named is checked first, then what is installed
    require()
    start = time.monotonic()
    path = _write(run, run_contents(run, record, metrics, export_dir))
    log(f"report: {path} ({time.monotonic() - start:.1f} s)")
    return path


def write_eval_report(out_dir: str | os.PathLike, model: str | os.PathLike, dataset: Dataset, *,
                      data: str | os.PathLike, list_file: str | os.PathLike | None = None,
                      batch_size: int = 32, preprocess: Preprocess | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate `model` on `dataset` (found in folder `data`, with `list_file` if given; `preprocess`, when
    given, instead of the model's own) and write OUT/report.html and OUT/confusion.png (OUT is created).
    Returns the page's path and the metrics (`ftonnx.evaluate.evaluate`'s)."""
    from ftonnx.report.contents import eval_contents, evaluated

    require()
    folder = RunFolder(out_dir)
    if folder.path.exists() and not folder.path.is_dir():
        raise FtonnxError(f"{folder}: exists and is not a folder")
    if not folder.path.absolute().parent.is_dir():
        raise FtonnxError(f"{folder}: folder {folder.path.absolute().parent} does not exist")
    source = {"data": Path(data).absolute(), **({"list file": Path(list_file).absolute()} if list_file else {})}
    contents = eval_contents(model, dataset, source, evaluated(model, dataset, batch_size, preprocess))
    return _write(folder, contents), contents.result


def _write(folder: RunFolder, contents: Any) -> Path:
    """Draw the pictures, build the page, and write the three files (each atomically); a picture this
    report has no data for (curves of an evaluation) is removed rather than left from an earlier one."""
    import numpy as np

    from ftonnx.report import figures, page

    history = contents.history
    curves = None if history is None else figures.curves(history.metrics, history.schedule, best=history.best,
                                                         warmup_epochs=history.warmup_epochs, epochs=history.epochs)
    confusion, box = figures.confusion(np.array(contents.result["confusion"]), contents.labels)
    html = page.render(contents, curves, confusion, box)
    folder.path.mkdir(exist_ok=True)
    if curves is None:
        folder.curves_path.unlink(missing_ok=True)
    else:
        write_bytes_atomic(folder.curves_path, curves)
    write_bytes_atomic(folder.confusion_path, confusion)
    return write_text_atomic(folder.report_path, html)
