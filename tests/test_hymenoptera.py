"""The issue's bar on real images: EfficientNet-Lite0 finetuned on hymenoptera with ftonnx's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ftonnx.cli import main
from ftonnx.data import discover
from ftonnx.evaluate import evaluate
from ftonnx.graph import load
from ftonnx.train.loop import best_weights

pytestmark = pytest.mark.slow
LATE_BLOCK = "/_blocks.14/Add"


def finetune(pretrained: Path, data: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["finetune", str(pretrained), "--node", "AvgPool", "--data", str(data),
                                       "--out", str(out), *extra])
    assert result.exit_code == 0, result.stderr
    return result.stderr


def test_default_finetune_reaches_093_and_eval_reports_the_same_top1(zoo_model_path: Path, hymenoptera: Path,
                                                                     tmp_path: Path) -> None:
    log = finetune(zoo_model_path, hymenoptera, tmp_path / "run")
    assert "activation cache: frozen prefix computed once for 245+153 images" in log
    trained = load(tmp_path / "run" / "model.onnx")
    _, val = discover(str(hymenoptera))
    report = evaluate(trained, val)
    best = [line for line in log.splitlines() if line.endswith("(best)")][-1]
    assert report["top1"] >= 0.93
    assert f"val top-1 {report['top1']:.4f}" in best and f"val loss {report['loss']:.4f}" in best


def test_late_block_finetune_trains_only_after_the_block_and_reaches_090(zoo_model_path: Path, hymenoptera: Path,
                                                                       tmp_path: Path) -> None:
    log = finetune(zoo_model_path, hymenoptera, tmp_path / "run", "--freeze", f"until:{LATE_BLOCK}",
                   "--no-augment", "--epochs", "3")
    assert "activation cache: frozen prefix computed once" in log
    before, after = load(zoo_model_path), load(tmp_path / "run" / "model.onnx")
    original = {t.name: t for t in before.graph.initializer}
    trained = {t.name: t for t in after.graph.initializer}
    changed = {name for name in original if name in trained and trained[name].raw_data != original[name].raw_data}
    assert changed and all(name.startswith(("_blocks.15.", "_conv_head", "_bn1")) for name in changed)
    _, val = discover(str(hymenoptera))
    assert evaluate(after, val)["top1"] >= 0.90
    assert set(best_weights(tmp_path / "run", sorted(changed))) == changed
