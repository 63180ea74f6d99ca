"""Folders ftonnx owns (a run folder, an export folder): the marker that says ftonnx made one, the lock a
process holds while it writes there, the leftovers of killed processes, and the checks that come before
any long work (writable, far from the data, space enough).

The rules every owner follows: ftonnx writes into a folder only when it creates it, finds it empty, or
finds its own marker of the same kind in it; it deletes only entries it made (its temporary files and
staging folders carry `files.TEMP_PREFIX`) and never follows a symbolic link while deleting; one process at a
time holds a folder (an flock on FOLDER/.lock, which the kernel releases when the holder dies, so the
lock of a killed process is simply taken over).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from ftonnx.errors import FtonnxError
from ftonnx.files import TEMP_PREFIX, size

LOCK = ".lock"


def marker(folder: Path, kind: str) -> Path:
    """FOLDER/.ftonnx-KIND: written when ftonnx makes the folder its own."""
    return folder / f".ftonnx-{kind}"


def is_owned(folder: Path, kind: str) -> bool:
    """Whether `folder` carries ftonnx's marker of `kind` (a plain file, not a link)."""
    path = marker(folder, kind)
    return path.is_file() and not path.is_symlink()


def check_claimable(folder: Path, kind: str, what: str) -> None:
    """FtonnxError unless `folder` is absent, empty, or ftonnx's own folder of `kind` (`what` names the option)."""
    if folder.is_symlink() and not folder.exists():
        raise FtonnxError(f"{folder}: is a dangling symbolic link; {what} names a folder")
    if folder.exists() and not folder.is_dir():
        raise FtonnxError(f"{folder}: is a file; {what} names a folder")
    # list before looking for the marker: a process claiming the folder meanwhile writes its marker first, so
    # a listing that holds anything is read after that marker exists, never between it and the listing
    if folder.is_dir() and any(folder.iterdir()) and not is_owned(folder, kind):
        others = [m.name[len(".ftonnx-"):] for m in folder.glob(".ftonnx-*") if m.name != f".ftonnx-{kind}"
                  and not m.name.startswith(TEMP_PREFIX)]
        holds = f"an ftonnx {others[0]} folder" if others else "files ftonnx did not write"
        raise FtonnxError(f"{folder}: holds {holds}; ftonnx writes its {kind} only into a new or empty folder "
                          f"or an earlier {kind} of its own: choose another {what}")


def claim(folder: Path, kind: str, what: str) -> bool:
    """Make `folder` ftonnx's own folder of `kind`: create it or adopt it when empty (writing the marker), or
    accept its marker; returns whether it was created or adopted now. FtonnxError when it cannot be written."""
    check_claimable(folder, kind, what)
    if is_owned(folder, kind):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_marker(folder, kind)
    except OSError as exc:
        raise FtonnxError(f"{folder}: cannot write there ({exc.strerror or exc})") from None
    return True


def write_marker(folder: Path, kind: str, **extra: object) -> None:
    """Write FOLDER/.ftonnx-KIND (JSON: when, which ftonnx version, and `extra`)."""
    from ftonnx import __version__

    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__, **extra}
    marker(folder, kind).write_text(json.dumps(record, indent=1) + "\n")


def read_marker(folder: Path, kind: str) -> dict:
    """The marker's JSON ({} when it is damaged)."""
    try:
        record = json.loads(marker(folder, kind).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class Lock:
    """An exclusive lock on FOLDER/.lock while held, with the holder's pid written inside for others' messages.

    A second process fails at once with one line naming the holder. A holder that was killed held it
    only as long as it lived; the pid it left behind is reported as `stale` by whoever takes it over.
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.path, self.what, self.fd, self.stale = folder / LOCK, what, -1, None

    def __enter__(self) -> "Lock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise FtonnxError(f"{self.path}: cannot lock it ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            raise FtonnxError(f"{self.path.parent} is in use by another ftonnx process (pid {holder}); wait for it "
                              f"to finish or choose another {self.what}") from None
        self.stale = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no pid: only a killed holder's stays behind
        except OSError:
            pass
        os.close(self.fd)  # closing releases the flock


def remove_leftovers(folder: Path, prefix: str = TEMP_PREFIX) -> None:
    """Delete the entries of `folder` whose names start with `prefix` (a link is unlinked, never followed)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(prefix):
            remove(entry)


def remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree (rmtree never follows links inside)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def check_apart(folder: Path, data: list[str | None], what: str) -> None:
    """FtonnxError when output `folder` lies inside one of the `data` folders or holds one of them: outputs
    would become images (or classes) of the data, and cleaning the output could touch the data."""
    out = Path(os.path.realpath(folder))
    for source in filter(None, data):
        root = Path(os.path.realpath(source))
        if out == root or out.is_relative_to(root):
            raise FtonnxError(f"{what} {folder} lies inside the data folder {source}; put it elsewhere")
        if root.is_relative_to(out):
            raise FtonnxError(f"{what} {folder} holds the data folder {source}; put it elsewhere")


def check_free(folder: Path, need: int, what: str) -> None:
    """FtonnxError when the file system of `folder` has less than `need` bytes free for `what`."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise FtonnxError(f"{folder}: {size(free)} free on its disk; {what} needs about {size(need)}; free some "
                          "space or choose another folder")
