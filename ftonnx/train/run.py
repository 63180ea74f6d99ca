"""The run folder and its one owner: where everything in RUN/ lives, the typed record of how the run
started (config.json), checkpoints and their sidecars, the metrics, and the checks that keep a run from
being overwritten or resumed with other options.

A kill at any instant leaves a consistent folder: RUN/checkpoints/epoch-NNNN.ckpt are ORT checkpoints
with optimizer state, each written (temp file, rename) before the sidecar (last.json, best.json) that
names it with the epoch, the global step and the best result so far; files no sidecar names are deleted
afterwards. RUN/metrics.jsonl gets one JSON line per epoch, each line a single append; on resume, lines
of epochs after the last checkpoint are dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ftonnx.errors import FtonnxError
from ftonnx.files import write_text_atomic
from ftonnx.train.config import TrainConfig


@dataclass
class RunRecord:
    """What RUN/config.json holds: the resolved options, the data (`discover` arguments), what was trained
    (`source`), whether the frozen prefix was cached (`cache`) or why not (`no_cache_reason`), and each
    change of the epoch count by `--resume --epochs N` (`extensions`: after which epoch, from and to)."""

    config: TrainConfig
    data_args: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    no_cache_reason: str | None = None
    extensions: list[dict[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.config.to_json(), "data_args": self.data_args, "source": self.source,
                "augment_used": self.config.augment not in (None, "none"), "cache": self.cache,
                "no_cache_reason": self.no_cache_reason, "extensions": self.extensions}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunRecord":
        return cls(TrainConfig.from_json(d), d["data_args"], d.get("source") or {}, d.get("cache"),
                   d.get("no_cache_reason"), d.get("extensions") or [])


class RunFolder:
    """RUN/: model.onnx, config.json, metrics.jsonl, artifacts/, checkpoints/, cache/ (spill files), export/."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.model_path = self.path / "model.onnx"
        self.metrics_path = self.path / "metrics.jsonl"
        self.artifacts = self.path / "artifacts"
        self.checkpoints = self.path / "checkpoints"
        self.cache_dir = self.path / "cache"
        self.export_dir = self.path / "export"

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # the record
    def read_record(self) -> RunRecord:
        """RUN/config.json, checked: it must say where the training data is."""
        try:
            raw = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise FtonnxError(f"{self.config_path}: no such file; is {self.path} a folder that ftonnx finetune "
                              "wrote?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FtonnxError(f"{self.config_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("data_args"), dict):
            raise FtonnxError(f"{self.config_path}: no \"data_args\" entry saying where the training data is")
        return RunRecord.from_json(raw)

    def write_record(self, record: RunRecord) -> None:
        write_text_atomic(self.config_path, json.dumps(record.to_json(), indent=1))

    # starting and resuming
    def resume_record(self) -> RunRecord:
        """The record of the run to resume."""
        if not self.config_path.is_file():
            raise FtonnxError(f"{self.path}: no config.json to resume from; run without --resume")
        return self.read_record()

    def check_start(self, resume: bool) -> dict[str, Any] | None:
        """The `last` sidecar to resume from (None for a fresh run); refuses to overwrite a run."""
        if self.path.exists() and not self.path.is_dir():
            raise FtonnxError(f"{self.path}: is a file; --out names the run folder")
        last = self.sidecar("last")
        if resume and last is None:
            raise FtonnxError(f"{self.path}: no checkpoint to resume from; run without --resume")
        if not resume and last is not None:
            raise FtonnxError(f"{self.path} already holds a training run; pass --resume to continue it or choose "
                              "another --out")
        return last

    @contextlib.contextmanager
    def removed_unless_started(self) -> Iterator[None]:
        """Remove the folder again when the block fails before a first checkpoint, if the block created it."""
        created = not self.path.exists()
        try:
            yield
        except BaseException:
            if created and self.sidecar("last") is None:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    # checkpoints
    def sidecar(self, which: str = "last") -> dict[str, Any] | None:
        """The `last` or `best` sidecar, or None when there is none yet."""
        path = self.checkpoints / f"{which}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def checkpoint_path(self, sidecar: dict[str, Any]) -> Path:
        """The checkpoint file a sidecar names."""
        return self.checkpoints / sidecar["checkpoint"]

    def save_checkpoint(self, state: Any, *, epoch: int, step: int, best: dict[str, Any],
                        is_best: bool, stopped: str | None = None) -> dict[str, Any]:
        """Save `state` (a CheckpointState) as epoch `epoch`'s checkpoint; update the sidecars (`stopped`: why
        the run stops early after this epoch); returns `last`."""
        from onnxruntime.training.api import CheckpointState

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}.ckpt"
        tmp = self.checkpoints / f".{name}.tmp"
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        os.replace(tmp, self.checkpoints / name)
        sidecar = {"epoch": epoch, "step": step, "checkpoint": name, "best": best}
        if is_best:
            write_text_atomic(self.checkpoints / "best.json", json.dumps(sidecar, indent=1))
        sidecar.update({"stopped": stopped} if stopped else {})
        write_text_atomic(self.checkpoints / "last.json", json.dumps(sidecar, indent=1))
        named = {s["checkpoint"] for s in (self.sidecar("last"), self.sidecar("best")) if s}
        for stale in self.checkpoints.glob("*.ckpt"):
            if stale.name not in named:
                stale.unlink()
        return sidecar

    # metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to RUN/metrics.jsonl with a single write (a kill cannot split it)."""
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The complete lines of RUN/metrics.jsonl (none when it does not exist)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, epochs: int) -> None:
        """Keep only the lines of epochs 1..`epochs` (those a resumed run will not repeat)."""
        if self.metrics_path.is_file():
            kept = [r for r in self.read_metrics() if r["epoch"] <= epochs]
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
