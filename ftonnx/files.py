"""Files other than models, written so that a reader never sees half of one: through a temporary file (named
with TEMP_PREFIX, so that a later process holding the folder can delete what a killed one left) and a
rename; a full disk is one line saying how much was needed."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from ftonnx.errors import FtonnxError

TEMP_PREFIX = ".ftonnx-tmp-"  # temporary files, staging folders and spill files: a later process may delete them
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename; a full disk is an
    FtonnxError saying how much was needed, and leaves `path` as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_full(exc, path, len(data)) or exc
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


def disk_full(exc: OSError, path: Path, need: int) -> FtonnxError | None:
    """The one line for a write of about `need` bytes to `path` that failed for want of space; None when
    `exc` is another failure."""
    if exc.errno not in DISK_FULL:
        return None
    try:
        free = size(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "unknown"
    return FtonnxError(f"{path}: no space left to write it ({exc.strerror}): it needs about {size(need)}, "
                       f"{free} free; nothing was half-written")


def size(nbytes: int) -> str:
    """A byte count for people: 1.5 KiB, 12.3 MiB, 2.0 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes / 1024:.1f} KiB"
