"""Models shaped like other exporters' go the whole way: inspect, cut (auto), finetune, export, and eval
agreeing with training, on a tiny synthetic image folder (coloured squares, two classes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from ftonnx.cli import main
from ftonnx.data import discover
from ftonnx.evaluate import evaluate
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.pipeline import data_args, finetune
from ftonnx.train.config import TrainConfig

import exporters

KINDS = [*sorted(exporters.BUILDERS), "external_data"]
# the classifier's pooling each model should be cut at (not one of its squeeze-and-excitation poolings)
CLASSIFIER_POOL = {kind: "/GlobalAveragePool_output_0" for kind in KINDS} | {"tf_style": "model/ReduceMean_output_0:0"}


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder with train/ and val/: blue or red squares on grey backgrounds of random shade."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 8)):
        for name, colour in (("blue", (30, 60, 220)), ("red", (220, 40, 30))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((40, 40, 3), rng.integers(60, 200), np.uint8)
                side = int(rng.integers(16, 26))
                x, y = rng.integers(0, 40 - side, 2)
                pixels[y:y + side, x:x + side] = colour
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, squares: Path) -> dict[str, tuple[Path, object]]:
    """Each kind of model written, finetuned with every weight trainable; kind -> (model path, TrainResult)."""
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        path = exporters.write_model(kind, folder)
        config = TrainConfig(epochs=3, batch_size=8, lr=3e-3, freeze="none", warmup_epochs=0)
        out[kind] = (path, finetune(path, "auto", data_args(str(squares)), folder / "run", config))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_recommends_the_classifier_pooling(kind, tmp_path):
    path = exporters.write_model(kind, tmp_path)
    result = CliRunner().invoke(main, ["inspect", "--json", str(path)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["recommended_cut"]["tensor"] == CLASSIFIER_POOL[kind]
    assert any("lifted opset 11 to 12" in line for line in summary["normalize"])
    backbone = cut(load(path), "auto")
    assert [o.name for o in backbone.graph.output] == [CLASSIFIER_POOL[kind]]


@pytest.mark.parametrize("kind", KINDS)
def test_finetune_export_and_eval_agree(kind, runs, squares, tmp_path):
    path, result = runs[kind]
    assert result.best["epoch"] >= 1 and np.isfinite(result.best["train_loss"])
    _, val = discover(**data_args(str(squares)))
    measured = evaluate(result.model_path, val)
    assert measured["count"] == 16
    assert measured["top1"] == pytest.approx(result.best["val_top1"])
    assert measured["loss"] == pytest.approx(result.best["val_loss"], rel=1e-4)
    exported = CliRunner().invoke(main, ["export", str(result.run_dir), "-o", str(tmp_path / "edge")])
    assert exported.exit_code == 0, exported.output
    assert evaluate(tmp_path / "edge" / "model.onnx", val)["loss"] == pytest.approx(measured["loss"], rel=1e-5)


def test_constant_weights_train_and_export_keeps_dynamic_size(runs):
    path, result = runs["constant_weights"]
    before = exporters.initializer_values(onnx.load(str(path)))
    after = exporters.initializer_values(onnx.load(str(result.model_path)))
    for name in ("stem.0.weight", "blocks.0.0.weight", "blocks.1.3.reduce.weight", "stem.1.weight", "stem.1.bias"):
        assert not np.array_equal(after[name], before[name]), f"{name} (a Constant node in the source) did not train"
    for name in ("stem.1.running_mean", "stem.1.running_var", "blocks.1.1.running_var"):
        np.testing.assert_array_equal(after[name], before[name])  # BatchNormalization statistics stay fixed
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    for h, w in ((32, 32), (48, 40), (24, 56)):
        x = np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)
        probabilities = session.run(["probabilities"], {session.get_inputs()[0].name: x})[0]
        assert probabilities.shape == (2, 2)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_step_that_crashes_the_runtime_is_a_clear_error_before_training(squares: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With the pooling rewrite switched off, the dynamic-size MaxPool's gradient segfaults ORT: the run
    must stop with exit 2 and a line naming the node, not die, and leave no run folder behind."""
    import ftonnx.train.artifacts
    from ftonnx import metadata
    from ftonnx.graph.head import add_head
    from ftonnx.graph.trainable import TrainableGraph
    from ftonnx.metadata import Preprocess

    backbone = cut(exporters.dynamic_maxpool(), "gap")
    metadata.update(backbone, preprocess=Preprocess(size=(32, 32), resize=32))
    path = tmp_path / "pool.onnx"
    onnx.save(add_head(backbone, 2, labels=["blue", "red"]), str(path))
    monkeypatch.setattr(ftonnx.train.artifacts, "make_trainable", TrainableGraph)  # no rewrite at all
    result = CliRunner().invoke(main, ["train", str(path), "--data", str(squares), "--out", str(tmp_path / "run"),
                                       "--freeze", "none", "--epochs", "1"])
    assert result.exit_code == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("ftonnx: error: a training step crashed ONNX Runtime natively (SIG")
    assert "likely node: pool (MaxPool" in error
    assert not (tmp_path / "run").exists()
