"""What a run keeps on disk, written so that a kill at any instant leaves a consistent run folder.

RUN/checkpoints/epoch-NNNN.ckpt are ORT checkpoints with optimizer state. The sidecars last.json
and best.json name one of them with the epoch, the global step and the best result so far; a
checkpoint is written (temp file, rename) before the sidecar that names it, and files no sidecar
names are deleted afterwards. RUN/metrics.jsonl gets one JSON line per epoch, each line a single
append; on resume, lines of epochs after the last checkpoint are dropped.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_sidecar(run_dir: str | os.PathLike, which: str = "last") -> dict[str, Any] | None:
    """The `last` or `best` sidecar of a run, or None when there is none yet."""
    path = Path(run_dir) / CHECKPOINTS / f"{which}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_path(run_dir: str | os.PathLike, sidecar: dict[str, Any]) -> Path:
    """The checkpoint file a sidecar names."""
    return Path(run_dir) / CHECKPOINTS / sidecar["checkpoint"]


def save(state: Any, run_dir: str | os.PathLike, *, epoch: int, step: int, best: dict[str, Any],
         is_best: bool) -> dict[str, Any]:
    """Save `state` (a CheckpointState) as epoch `epoch`'s checkpoint; update the sidecars; returns `last`."""
    from onnxruntime.training.api import CheckpointState

    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}.ckpt"
    tmp = folder / f".{name}.tmp"
    CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
    os.replace(tmp, folder / name)
    sidecar = {"epoch": epoch, "step": step, "checkpoint": name, "best": best}
    if is_best:
        write_text_atomic(folder / "best.json", json.dumps(sidecar, indent=1))
    write_text_atomic(folder / "last.json", json.dumps(sidecar, indent=1))
    named = {s["checkpoint"] for s in (read_sidecar(run_dir, "last"), read_sidecar(run_dir, "best")) if s}
    for stale in folder.glob("*.ckpt"):
        if stale.name not in named:
            stale.unlink()
    return sidecar


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to RUN/metrics.jsonl with a single write (a kill cannot split it)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(Path(run_dir) / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete lines of RUN/metrics.jsonl (none when it does not exist)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | os.PathLike, epochs: int) -> None:
    """Keep only the lines of epochs 1..`epochs` (those a resumed run will not repeat)."""
    path = Path(run_dir) / METRICS
    if path.is_file():
        kept = [r for r in read_metrics(run_dir) if r["epoch"] <= epochs]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
