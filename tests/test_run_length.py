"""How long a run trains: `--resume --epochs N` makes a run one of N epochs, early stopping (`--patience`)
ends it when validation stops improving, keeps the best checkpoint and trains no further on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftonnx.train.schedule import learning_rate

from helpers import finetune_tiny, interrupt_cached_training

STEPS = 3  # 24 training images in batches of 8

COLOUR_IMAGES = (8, 4)  # per class, train and val (the `colours` fixture)


@pytest.fixture(scope="module")
def swapped(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colours with the validation folders of blue and green swapped: the better the model fits its
    training images, the worse its validation loss."""
    root = tmp_path_factory.mktemp("swapped")
    shutil.copytree(colours, root, dirs_exist_ok=True)
    (root / "val" / "blue").rename(root / "val" / "tmp")
    (root / "val" / "green").rename(root / "val" / "blue")
    (root / "val" / "tmp").rename(root / "val" / "green")
    return root


def finetune(tiny: Path, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return finetune_tiny(tiny, data, out, "--batch-size", 8, "--lr", 0.05, *extra)


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def sidecar(run: Path, which: str) -> dict:
    return json.loads((run / "checkpoints" / f"{which}.json").read_text())


def test_resume_with_more_epochs_extends_a_finished_run_on_the_longer_schedule(tiny_path, colours, tmp_path):
    run = tmp_path / "run"
    assert finetune(tiny_path, colours, run, "--epochs", 2)[0] == 0
    before = (run / "model.onnx").read_bytes()
    code, _, stderr = finetune(tiny_path, colours, run, "--resume")
    assert code == 0 and len(lines(run)) == 2 and (run / "model.onnx").read_bytes() == before, stderr

    code, _, stderr = finetune(tiny_path, colours, run, "--resume", "--epochs", 4)
    assert code == 0, stderr
    assert "2 -> 4 epochs" in stderr and f"resuming {run} after epoch 2/4" in stderr
    record = json.loads((run / "config.json").read_text())
    assert record["epochs"] == 4 and record["extensions"] == [{"after_epoch": 2, "from": 2, "to": 4}]
    metrics = lines(run)
    assert [r["epoch"] for r in metrics] == [1, 2, 3, 4] and sidecar(run, "last")["epoch"] == 4
    for r in metrics:  # the recorded rate is the one of each epoch's last step
        total = 2 if r["epoch"] <= 2 else 4
        assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, base_lr=0.05, total_steps=total * STEPS,
                                                      warmup_steps=STEPS))
    assert metrics[2]["lr"] > metrics[1]["lr"]  # the finished cosine had decayed to ~0; the longer one has not

    code, _, stderr = finetune(tiny_path, colours, run, "--resume", "--epochs", 3)
    assert code == 2 and "has trained 4 epochs already; --epochs must be at least 4" in stderr
    assert json.loads((run / "config.json").read_text())["epochs"] == 4


def test_resume_with_fewer_epochs_ends_an_unfinished_run_there(tiny_path, colours, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_cached_training(monkeypatch, 2)
    assert finetune(tiny_path, colours, run, "--epochs", 6)[0] == 130
    monkeypatch.undo()
    assert sidecar(run, "last")["epoch"] == 2
    code, _, stderr = finetune(tiny_path, colours, run, "--resume", "--epochs", 3)
    assert code == 0, stderr
    assert [r["epoch"] for r in lines(run)] == [1, 2, 3] and (run / "model.onnx").is_file()
    assert json.loads((run / "config.json").read_text())["extensions"] == [{"after_epoch": 2, "from": 6, "to": 3}]
    assert lines(run)[2]["lr"] == pytest.approx(learning_rate(3 * STEPS - 1, base_lr=0.05, total_steps=3 * STEPS,
                                                              warmup_steps=STEPS))


def test_early_stopping_stops_keeps_the_best_checkpoint_and_trains_no_further(tiny_path, swapped, tmp_path):
    run = tmp_path / "run"
    code, stdout, stderr = finetune(tiny_path, swapped, run, "--freeze", "none", "--epochs", 12, "--patience", 2)
    assert code == 0, stderr
    metrics = lines(run)
    losses = [r["val_loss"] for r in metrics]
    at = losses.index(min(losses))
    assert len(metrics) == at + 3 < 12  # two epochs without a better val loss after the best one
    reason = f"no better val_loss for 2 epochs (best {losses[at]:.4f} at epoch {at + 1})"
    assert metrics[-1]["stopped"] == reason and sidecar(run, "last")["stopped"] == reason
    assert f"stopping early after epoch {len(metrics)}: {reason}" in stderr
    best = max(metrics, key=lambda r: (r["val_top1"], -r["val_loss"]))
    assert sidecar(run, "best")["epoch"] == best["epoch"]
    assert f"val top-1 {best['val_top1']:.4f} (epoch {best['epoch']}" in stdout
    exported = (run / "model.onnx").read_bytes()

    code, _, stderr = finetune(tiny_path, swapped, run, "--resume")
    assert code == 0 and f"stopped early after epoch {len(metrics)}" in stderr, stderr
    assert lines(run) == metrics and (run / "model.onnx").read_bytes() == exported
    code, _, stderr = finetune(tiny_path, swapped, run, "--resume", "--epochs", 20)
    assert code == 2 and "stopped early after epoch" in stderr and "trains no further" in stderr
    assert lines(run) == metrics


@pytest.mark.parametrize("extra, message", [
    (("--class-weights", "1,2"), "--class-weights gives 2 weights for 3 classes"),
    (("--class-weights", "1,-2,3"), "'1,-2,3': use auto or positive numbers"),
    (("--delta-layers", "/relu2/Relu"), "--delta-layers needs --delta ALPHA > 0"),
    (("--delta", 1, "--freeze", "until:/relu1/Relu", "--delta-layers", "/relu1/Relu"),
     "no trainable backbone parameter comes before it"),
    (("--delta", 1, "--freeze", "none", "--delta-layers", "nosuchnode"), "no node or tensor matches 'nosuchnode'"),
    (("--label-smoothing", 1), "'--label-smoothing': 1.0 is not in the range 0<=x<1"),
    (("--monitor", "val_top5"), "'--monitor': 'val_top5' is not one of 'val_loss', 'val_top1'"),
    (("--augment", "heavy"), "'--augment': 'heavy' is not one of 'none', 'light', 'strong'"),
])
def test_bad_strategy_options_fail_cleanly_before_training(tiny_path, colours, tmp_path, extra, message):
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "run", *extra)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not (tmp_path / "run").exists()
