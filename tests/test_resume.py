"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.train.config import TrainConfig

from helpers import ArrayBatches, build_tiny_model, train_and_export

TESTS = Path(__file__).resolve().parent
EPOCHS, STEPS, BATCH = 3, 4, 6
KILL_AT = (1, 2)  # (epoch, batch): the second epoch's third batch


class _Batches:
    """A fixed shuffle per epoch; with `marker`, the batch at KILL_AT touches it and waits to be killed."""

    def __init__(self, x: np.ndarray, y: np.ndarray, marker: str | None) -> None:
        self.x, self.y, self.marker = x, y, marker

    def __len__(self) -> int:
        return STEPS

    def epoch(self, epoch: int):
        order = np.random.default_rng([7, epoch]).permutation(len(self.y))
        for i in range(STEPS):
            if self.marker and (epoch, i) == KILL_AT:
                Path(self.marker).touch()
                time.sleep(120)
            idx = order[i * BATCH:(i + 1) * BATCH]
            yield {"input": self.x[idx]}, self.y[idx]


def run_tiny(run_dir: str, marker: str | None = None, resume: bool = False) -> None:
    """Train the tiny model with a dropout head, all parameters trainable; with `marker`, stop at KILL_AT
    (after touching `marker`) and wait there to be killed."""
    model = add_head(cut(build_tiny_model(), "/pool/GlobalAveragePool"), 3, dropout=0.3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS * BATCH, 3, 32, 32)).astype(np.float32)
    y = np.arange(STEPS * BATCH) % 3
    config = TrainConfig(epochs=EPOCHS, freeze="none", lr=0.01, resume=resume)
    train_and_export(model, _Batches(x, y, marker), ArrayBatches(x, y, len(y)), Path(run_dir), config)


def child(run_dir: Path, marker: Path | None = None, resume: bool = False) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from test_resume import run_tiny; "
            f"run_tiny({str(run_dir)!r}, {str(marker) if marker else None!r}, {resume})")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def last_parameters(run_dir: Path) -> dict[str, np.ndarray]:
    from onnxruntime.training.api import CheckpointState

    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    state = CheckpointState.load_checkpoint(str(run_dir / "checkpoints" / last["checkpoint"]))
    names = [t.name for t in onnx.load(str(run_dir / "model.onnx")).graph.initializer]
    return {n: np.array(state.parameters[n].data) for n in names if n.startswith(("conv", "head.fc"))}


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run_tiny(str(reference))

    killed, marker = tmp_path / "killed", tmp_path / "at-kill-point"
    proc = child(killed, marker)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "child never reached the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "checkpoints" / "last.json").read_text())["epoch"] == KILL_AT[0]
    assert not (killed / "model.onnx").exists()

    resumed = child(killed, resume=True)
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"resuming {killed} after epoch {KILL_AT[0]}/{EPOCHS}" in stderr

    assert [r["epoch"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    ours, theirs = last_parameters(killed), last_parameters(reference)
    assert len(ours) == 6
    for name in theirs:
        assert np.array_equal(ours[name], theirs[name]), name
    assert (killed / "model.onnx").read_bytes() == (reference / "model.onnx").read_bytes()
