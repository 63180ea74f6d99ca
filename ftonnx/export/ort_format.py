"""The ORT format (.ort) that ONNX Runtime Mobile loads, made by ONNX Runtime's own converter."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from ftonnx.errors import FtonnxError, first_line

STYLES = ("fixed", "runtime")


def convert_ort(path: str | os.PathLike, *, style: str = "fixed") -> Path:
    """Convert the ONNX file `path` to `<stem>.ort` beside it, plus the `<stem>.required_operators.config`
    that a reduced ONNX Runtime Mobile build takes; returns the .ort path.

    "fixed" applies every portable graph optimisation once, here (no x86-only layouts), so the device does
    not redo them on each load; its fused ops (FusedConv...) run on the CPU only. "runtime" applies the
    basic ones and records the rest for the CPU to apply at load, keeping standard ops that NNAPI and
    CoreML can take: what ONNX Runtime recommends for those accelerators, and what static variants use.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    if style not in STYLES:
        raise FtonnxError(f"ORT format style must be one of {', '.join(STYLES)}, not {style!r}")
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs each config at INFO
    path = Path(path)
    chosen = OptimizationStyle.Runtime if style == "runtime" else OptimizationStyle.Fixed
    with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates on stdout
        try:
            convert_onnx_models_to_ort(path, optimization_styles=[chosen])
        except Exception as exc:  # the converter raises bare Exceptions as well as ORT's own types
            reason = first_line(exc)
            raise FtonnxError(f"{path}: ORT format conversion failed ({reason})") from None
    if style == "runtime":  # named <stem>.with_runtime_opt.ort by the converter
        for made, wanted in ((".with_runtime_opt.ort", ".ort"),
                             (".required_operators.with_runtime_opt.config", ".required_operators.config")):
            os.replace(path.with_suffix(made), path.with_suffix(wanted))
    return path.with_suffix(".ort")
