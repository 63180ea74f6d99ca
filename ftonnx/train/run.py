"""The run folder and its one owner: where everything in RUN/ lives, the typed record of how the run
started (config.json), checkpoints and their sidecars, the metrics, and the checks that keep a run from
being overwritten, mixed with another or resumed with other options.

RUN/ is ftonnx's own (`ftonnx.folders`): `.ftonnx-run` marks it, `.lock` holds one training at a time;
ftonnx refuses a non-empty folder without the marker and any symbolic link where its files go.

A kill at any instant leaves a consistent folder: RUN/checkpoints/epoch-NNNN.ckpt are ORT checkpoints
with optimizer state, each written (temp file, rename) before the sidecar (last.json, best.json) that
names it with the epoch, the global step and the best result so far; files no sidecar names are deleted
afterwards. RUN/metrics.jsonl gets one JSON line per epoch, each line a single append; on resume, lines
of epochs after the last checkpoint are dropped, and so is a line a kill tore. Temporary files carry
`files.TEMP_PREFIX` and are deleted by the next training in the folder. A damaged last.json or last
checkpoint is resumed from the best one; what cannot be resumed is one line saying what is damaged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ftonnx import folders
from ftonnx.data import discover
from ftonnx.errors import FtonnxError, first_line
from ftonnx.files import TEMP_PREFIX, disk_full, size, write_text_atomic
from ftonnx.progress import log
from ftonnx.train.config import TrainConfig

KIND = "run"
_CHECKPOINT = re.compile(r"epoch-\d{4,}\.ckpt")
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


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


def _record_problem(raw: Any) -> str | None:
    """What makes a parsed config.json unusable (a wrong type, an unknown data argument), or None."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data_args"), dict):
        return "no \"data_args\" entry saying where the training data is"
    for option in dataclasses.fields(TrainConfig):
        allowed = tuple(t for part in str(option.type).split("|") for t in _TYPES.get(part.strip(), (object,)))
        value = raw.get(option.name, option.default)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            return f"{option.name} is {json.dumps(value)}"
    unknown = sorted(set(raw["data_args"]) - set(inspect.signature(discover).parameters))
    given = [raw["data_args"].get(key) for key in ("data", "table")]
    if unknown or not any(isinstance(value, str) for value in given):
        return f"data_args do not fit ftonnx.data.discover ({', '.join(unknown) or 'no data folder or table'})"
    return None


class RunFolder:
    """RUN/: model.onnx, config.json, metrics.jsonl, artifacts/, checkpoints/, cache/ (spill files), export/,
    quantisation.json (`--qat`), and ftonnx's marker and lock; the report: report.html with its pictures
    curves.png and confusion.png (`ftonnx eval --report DIR` names its files the same way)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.model_path = self.path / "model.onnx"
        self.metrics_path = self.path / "metrics.jsonl"
        self.artifacts = self.path / "artifacts"
        self.checkpoints = self.path / "checkpoints"
        self.cache_dir = self.path / "cache"
        self.export_dir = self.path / "export"
        self.report_path = self.path / "report.html"
        self.curves_path = self.path / "curves.png"
        self.confusion_path = self.path / "confusion.png"
        self.quantisation_path = self.path / "quantisation.json"
        self.entries = (self.config_path, self.model_path, self.metrics_path, self.artifacts, self.checkpoints,
                        self.cache_dir, self.export_dir, self.report_path, self.curves_path, self.confusion_path,
                        self.quantisation_path, self.path / folders.LOCK, folders.marker(self.path, KIND))
        self._resume_from: dict[str, Any] | None = None  # found once by `claimed`, reused by the loop

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # the record
    def read_record(self) -> RunRecord:
        """RUN/config.json, checked: it must say where the training data is, with options of the right types."""
        try:
            raw = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise FtonnxError(f"{self.config_path}: no such file; is {self.path} a folder that ftonnx finetune "
                              "wrote?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FtonnxError(f"{self.config_path}: damaged, not valid JSON ({exc})") from None
        if problem := _record_problem(raw):
            raise FtonnxError(f"{self.config_path}: damaged: {problem}")
        return RunRecord.from_json(raw)

    def write_record(self, record: RunRecord) -> None:
        write_text_atomic(self.config_path, json.dumps(record.to_json(), indent=1))

    # quantisation-aware training
    def read_quantisation(self) -> dict[str, Any] | None:
        """RUN/quantisation.json (a `--qat` run's calibration, and once trained its "ranges"), checked; None when
        the run has none."""
        try:
            raw = json.loads(self.quantisation_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise FtonnxError(f"{self.quantisation_path}: damaged ({first_line(exc)})") from None
        if not isinstance(raw, dict) or not all(_ranges(raw.get(k)) for k in ("calibrated", "ranges") if k in raw) \
                or "calibrated" not in raw or not _whole(raw.get("images")):
            raise FtonnxError(f"{self.quantisation_path}: damaged (not the record ftonnx writes)")
        return raw

    def write_quantisation(self, record: dict[str, Any]) -> None:
        write_text_atomic(self.quantisation_path, json.dumps(record, indent=1))

    # starting and resuming
    def resume_record(self) -> RunRecord:
        """The record of the run to resume."""
        if not self.config_path.is_file():
            raise FtonnxError(f"{self.path}: no config.json to resume from; run without --resume")
        return self.read_record()

    @property
    def started(self) -> bool:
        """Whether a first checkpoint was written (a later run must --resume, not start over)."""
        return any((self.checkpoints / f"{which}.json").exists() for which in ("last", "best"))

    def check_start(self, resume: bool) -> dict[str, Any] | None:
        """The sidecar to resume from (None for a fresh run); refuses a folder that is not ftonnx's own, a
        symbolic link where a run file goes, overwriting a run, and resuming none."""
        folders.check_claimable(self.path, KIND, "--out")
        for entry in self.entries:
            if entry.is_symlink():
                raise FtonnxError(f"{entry}: is a symbolic link; ftonnx does not write through links in a run folder")
        if resume and not self.started:
            raise FtonnxError(f"{self.path}: no checkpoint to resume from; run without --resume")
        if not resume and self.started:
            raise FtonnxError(f"{self.path} already holds a training run; pass --resume to continue it or choose "
                              "another --out")
        if resume and self._resume_from is None:
            self._resume_from = self.resume_point()
        return self._resume_from if resume else None

    @contextlib.contextmanager
    def claimed(self, resume: bool) -> Iterator[folders.Lock]:
        """Hold the folder for one training: checked (`check_start`), created or adopted with its marker,
        locked, cleared of what killed runs left. When the block fails before a first checkpoint, what this
        start created is removed again; temporary files go at the end, and the lock is released."""
        existed = self.path.exists()
        self.check_start(resume)
        created = folders.claim(self.path, KIND, "--out")
        with folders.Lock(self.path, "--out") as lock:
            if lock.stale and lock.stale != str(os.getpid()):
                log(f"{self.path}: taking over from pid {lock.stale}, which ended without releasing it")
            self.remove_leftovers()
            try:
                yield lock
            except BaseException:
                if created and not self.started:
                    self._remove_created(existed)
                raise
            finally:
                self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Delete the temporary files, staging folders and spill files of killed runs (TEMP_PREFIX only)."""
        for folder in (self.path, self.checkpoints, self.cache_dir):
            folders.remove_leftovers(folder)

    def _remove_created(self, existed: bool) -> None:
        """Remove what a start that failed before its first checkpoint wrote; the folder too, if it made it."""
        for entry in self.entries:
            folders.remove(entry)
        self.remove_leftovers()
        if not existed:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    # checkpoints
    def sidecar(self, which: str = "last") -> dict[str, Any] | None:
        """The `last` or `best` sidecar, or None when there is none (or it is damaged)."""
        try:
            return self._sidecar(which)
        except FtonnxError:
            return None

    def _sidecar(self, which: str) -> dict[str, Any] | None:
        """The sidecar, checked: FtonnxError saying what is damaged; None when there is none."""
        path = self.checkpoints / f"{which}.json"
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FtonnxError(f"{path} is damaged ({first_line(exc)})") from None
        if not (isinstance(raw, dict) and all(_whole(raw.get(k)) for k in ("epoch", "step"))
                and isinstance(raw.get("best"), dict) and _CHECKPOINT.fullmatch(str(raw.get("checkpoint")))):
            raise FtonnxError(f"{path} is damaged (not a sidecar ftonnx writes)")
        if not self.checkpoint_path(raw).is_file():
            raise FtonnxError(f"{path} names {raw['checkpoint']}, which is missing")
        return raw

    def resume_point(self) -> dict[str, Any]:
        """The sidecar to resume from: `last`, or `best` when last.json or its checkpoint is damaged; FtonnxError
        saying what is damaged when neither can be resumed."""
        problems = []
        for which in ("last", "best"):
            try:
                sidecar = self._sidecar(which)
                if sidecar is None:
                    raise FtonnxError(f"no {which}.json")
                _load_checkpoint(self.checkpoint_path(sidecar))
            except FtonnxError as exc:
                problems.append(str(exc))
                continue
            if problems:
                log(f"{problems[0]}; resuming from the best checkpoint (epoch {sidecar['epoch']}) instead")
            elif self.sidecar("best") is None:
                self._repair_best(sidecar)
            return sidecar
        raise FtonnxError(f"cannot resume {self.path}: {'; '.join(problems)}; start a new run with another --out")

    def _repair_best(self, last: dict[str, Any]) -> None:
        """Rewrite a damaged best.json from what last.json records of the best epoch (or last itself)."""
        best = last["best"]
        name = f"epoch-{best.get('epoch', 0):04d}.ckpt" if _whole(best.get("epoch")) else ""
        sidecar = {**last, "epoch": best["epoch"], "step": best.get("step", last["step"]), "checkpoint": name} \
            if name and (self.checkpoints / name).is_file() else last
        log(f"{self.checkpoints / 'best.json'} is damaged; rewritten from last.json (epoch {sidecar['epoch']})")
        write_text_atomic(self.checkpoints / "best.json", json.dumps(sidecar, indent=1))

    def checkpoint_path(self, sidecar: dict[str, Any]) -> Path:
        """The checkpoint file a sidecar names."""
        return self.checkpoints / sidecar["checkpoint"]

    def save_checkpoint(self, state: Any, *, epoch: int, step: int, best: dict[str, Any],
                        is_best: bool, stopped: str | None = None) -> dict[str, Any]:
        """Save `state` (a CheckpointState) as epoch `epoch`'s checkpoint; update the sidecars (`stopped`: why
        the run stops early after this epoch); returns `last`."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}.ckpt"
        _save_checkpoint(state, self.checkpoints / name, self._checkpoint_estimate)
        sidecar = {"epoch": epoch, "step": step, "checkpoint": name, "best": best}
        if is_best:
            write_text_atomic(self.checkpoints / "best.json", json.dumps(sidecar, indent=1))
        sidecar.update({"stopped": stopped} if stopped else {})
        write_text_atomic(self.checkpoints / "last.json", json.dumps(sidecar, indent=1))
        kept_best = None if is_best else self.sidecar("best")
        named = {name, *([kept_best["checkpoint"]] if kept_best else [])}
        for stale in self.checkpoints.glob("*.ckpt"):
            if stale.name not in named and _CHECKPOINT.fullmatch(stale.name):
                stale.unlink()
        return sidecar

    def _checkpoint_estimate(self) -> int:
        """About how many bytes a checkpoint takes: the last one's size, else three times the initial state's
        (the parameters and AdamW's two moments)."""
        last = self.sidecar("last")
        if last is not None:
            return self.checkpoint_path(last).stat().st_size
        initial = self.artifacts / "checkpoint"
        return 3 * initial.stat().st_size if initial.is_file() else 0

    # metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to RUN/metrics.jsonl with a single write (a kill cannot split it)."""
        line = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            raise disk_full(exc, self.metrics_path, len(line)) or exc

    def read_metrics(self) -> list[dict[str, Any]]:
        """The intact lines of RUN/metrics.jsonl (none when it does not exist): a line torn by a kill or a full
        disk, or otherwise damaged, is left out."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and _whole(record.get("epoch")):
                records.append(record)
        return records

    def truncate_metrics(self, epochs: int) -> None:
        """Keep only the intact lines of epochs 1..`epochs` (those a resumed run will not repeat)."""
        if self.metrics_path.is_file():
            kept = [r for r in self.read_metrics() if r["epoch"] <= epochs]
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ranges(value: Any) -> bool:
    """Whether `value` is {tensor: [lowest, highest]} with lowest <= highest."""
    return isinstance(value, dict) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
        and r[0] <= r[1] for r in value.values())


def _load_checkpoint(path: Path) -> Any:
    """ORT's CheckpointState of `path`; FtonnxError when the file is damaged."""
    from onnxruntime.training.api import CheckpointState

    try:
        return CheckpointState.load_checkpoint(str(path))
    except Exception as exc:  # ORT raises RuntimeError with its source location first
        raise FtonnxError(f"{path} is damaged ({first_line(exc).split(' : ')[-1][:200]})") from None


def _save_checkpoint(state: Any, path: Path, estimate: Callable[[], int]) -> None:
    """Write `state` to `path` through a temporary file; a failure (a full disk) leaves nothing behind and
    says how much space a checkpoint takes (`estimate()`)."""
    from onnxruntime.training.api import CheckpointState

    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    try:
        CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
        os.replace(tmp, path)
    except Exception as exc:  # ORT reports a failed write as RuntimeError, the rename as OSError
        need = max(estimate(), tmp.stat().st_size if tmp.exists() else 0)
        folders.remove(tmp)
        free = size(shutil.disk_usage(path.parent).free)
        raise FtonnxError(f"{path}: could not save the checkpoint ({first_line(exc).split(' : ')[-1][:200]}); it "
                          f"needs about {size(need)}, {free} free; the last checkpoint is intact") from None
