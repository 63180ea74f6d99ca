"""Schedules, the run folder (metrics, config, checkpoints, model), eval/training agreement and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner

from ftonnx.cli import main
from ftonnx.data import discover
from ftonnx.evaluate import evaluate
from ftonnx.train.config import TrainConfig
from ftonnx.train.schedule import learning_rate

from helpers import COLOURS, finetune_tiny

COLOUR_IMAGES = (18, 9)  # per class, train and val (the `colours` fixture)


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def finetune(tiny: Path, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return finetune_tiny(tiny, data, out, "--batch-size", 8, "--lr", 0.02, *extra)


def test_warmup_is_linear_then_cosine_decays_to_near_zero() -> None:
    def lr(step: int, schedule: str = "cosine") -> float:
        return learning_rate(step, base_lr=1.0, total_steps=110, warmup_steps=10, schedule=schedule)

    assert [lr(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr(10) == 1.0
    assert lr(60) == pytest.approx(0.5)
    assert lr(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert [lr(s, "constant") for s in (4, 10, 109)] == [0.5, 1.0, 1.0]
    assert learning_rate(0, base_lr=0.1, total_steps=10) == 0.1
    warmups = [TrainConfig(epochs=n).resolved(backbone_trains=False).warmup_epochs for n in (1, 5)]
    assert warmups == [0, 1]


def test_finetune_writes_a_complete_run_and_eval_reproduces_its_top1(tiny_path: Path, colours: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = finetune(tiny_path, colours, out, "--epochs", 3, "--hidden", 8)
    assert code == 0, stderr
    assert f"model: {out / 'model.onnx'}" in stdout

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert [r["step"] for r in lines] == [7, 14, 21]  # 54 images in batches of 8
    assert all(r["images"] == 54 and 0 <= r["val_top1"] <= 1 and r["val_loss"] > 0 for r in lines)
    assert lines[-1]["lr"] < lines[0]["lr"]  # warmup in epoch 1, cosine decay after it
    best = max(lines, key=lambda r: (r["val_top1"], -r["val_loss"]))
    assert [r["best"] for r in lines].count(True) >= 1 and lines[best["epoch"] - 1]["best"]
    assert best["val_top1"] >= 0.9
    assert f"val top-1 {best['val_top1']:.4f} (epoch {best['epoch']}" in stdout

    config = json.loads((out / "config.json").read_text())
    assert config["data_args"]["data"] == str(colours) and config["epochs"] == 3 and config["lr"] == 0.02
    sidecars = {w: json.loads((out / "checkpoints" / f"{w}.json").read_text()) for w in ("last", "best")}
    assert sidecars["last"]["epoch"] == 3 and sidecars["best"]["epoch"] == best["epoch"]
    assert (out / "checkpoints" / sidecars["best"]["checkpoint"]).is_file()

    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["ftonnx.labels"] == sorted(COLOURS) and meta["ftonnx.preprocess"]["size"] == [32, 32]
    assert meta["ftonnx.head_params"] == ["head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"]

    _, val = discover(str(colours))
    result = evaluate(out / "model.onnx", val)
    assert result["top1"] == best["val_top1"]
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    probabilities = onnxruntime.InferenceSession(str(out / "model.onnx")).run(["probabilities"], {"input": x})[0]
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_train_continues_a_headed_model_and_resume_of_a_finished_run_only_exports(
        tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert finetune(tiny_path, colours, first, "--epochs", 1)[0] == 0
    out = tmp_path / "again"
    code, stdout, stderr = run("train", first / "model.onnx", "--data", colours, "--out", out, "--epochs", 1,
                               "--freeze", "until:/relu1/Relu", "--batch-size", 8)
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["augment_used"] is True
    before = (out / "model.onnx").read_bytes()
    code, stdout, stderr = run("train", first / "model.onnx", "--data", colours, "--out", out, "--resume")
    assert code == 0, stderr
    assert "resuming" in stderr and len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "model.onnx").read_bytes() == before


def test_cuda_without_the_cuda_build_is_a_clear_error(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("the CUDA build is installed")
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "run", "--device", "cuda")
    assert code == 2
    assert stderr.strip().splitlines() == [
        "ftonnx: error: --device cuda needs ONNX Runtime's CUDA training build: pip install 'ftonnx[cuda]' "
        "(onnxruntime-training==1.19.2 in place of onnxruntime-training-cpu)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (("--freeze", "sideways"), "'--freeze': 'sideways': use backbone, none or until:SPEC"),
    (("--freeze", "until:/head/fc/Gemm"), "leaves no parameter to train"),
    (("--optimizer", "sgd", "--weight-decay", "0.1"), "ORT's SGD has no weight decay"),
    (("--warmup-epochs", "9"), "--warmup-epochs must be between 0 and --epochs"),
    (("--resume",), "no checkpoint to resume from"),
    (("--node", "nosuchnode"), "no node or tensor matches 'nosuchnode'"),
])
def test_bad_finetune_options_fail_cleanly(tiny_path: Path, colours: Path, tmp_path: Path,
                                          extra: tuple, message: str) -> None:
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "run", *extra)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run").exists()


def test_train_refuses_other_labels_and_overwriting_a_run(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    code, _, stderr = run("train", tiny_path, "--data", colours, "--out", tmp_path / "run", "--freeze", "none")
    assert code == 2 and "only the data has blue, green, red; give a head for these classes" in stderr
    assert not (tmp_path / "run").exists()
    done = tmp_path / "done"
    assert finetune(tiny_path, colours, done, "--epochs", 1)[0] == 0
    code, _, stderr = finetune(tiny_path, colours, done, "--epochs", 1)
    assert code == 2 and "already holds a training run; pass --resume" in stderr


def test_finetune_export_runs_the_edge_export_after_training(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = finetune(tiny_path, colours, out, "--epochs", 1, "--export", "int8,ort,static,pixels")
    assert code == 0, stderr
    exported = {p.name for p in (out / "export").iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort", "report.json", "model.static.onnx",
            "model.pixels.onnx", "model.int8.pixels.static.ort"} <= exported
    assert "model.fp16.onnx" not in exported
    assert f"exported: {out / 'export'}" in stdout


def test_finetune_refuses_an_unknown_export_variant_before_training(tiny_path: Path, colours: Path,
                                                                    tmp_path: Path) -> None:
    code, stdout, stderr = finetune(tiny_path, colours, tmp_path / "run", "--export", "int8,tflite")
    assert code == 2 and stderr.strip() == ("ftonnx: error: Invalid value for '--export': 'tflite' is not one of "
                                            "int8, fp16, ort, on-device, static, pixels")
    assert not (tmp_path / "run").exists()
