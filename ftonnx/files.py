"""Files other than models, written so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ftonnx.errors import FtonnxError


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_new_file(path: str | os.PathLike) -> Path:
    """`path` as a file ftonnx may create: its folder exists and nothing is there yet (ftonnx never
    overwrites a file it did not create)."""
    path = Path(path)
    if path.exists():
        raise FtonnxError(f"{path}: already exists; choose another name (ftonnx does not overwrite it)")
    if not path.absolute().parent.is_dir():
        raise FtonnxError(f"{path}: folder {path.absolute().parent} does not exist")
    return path
