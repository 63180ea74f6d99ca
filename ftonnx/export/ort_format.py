"""The ORT format (.ort) that ONNX Runtime Mobile loads, made by ONNX Runtime's own converter."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from ftonnx.errors import FtonnxError, first_line


def convert_ort(path: str | os.PathLike) -> Path:
    """Convert the ONNX file `path` to `<stem>.ort` beside it, plus the `<stem>.required_operators.config`
    that a reduced ONNX Runtime Mobile build takes; returns the .ort path.

    Graph optimisations are applied once, here ("fixed" style, the portable set without x86-only
    layouts), so the device does not redo them on every load.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # it logs each config at INFO
    path = Path(path)
    with contextlib.redirect_stdout(io.StringIO()):  # the converter narrates on stdout
        try:
            convert_onnx_models_to_ort(path, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:  # the converter raises bare Exceptions as well as ORT's own types
            reason = first_line(exc)
            raise FtonnxError(f"{path}: ORT format conversion failed ({reason})") from None
    return path.with_suffix(".ort")
