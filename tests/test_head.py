"""`head`: a new classifier on the backbone's features, initialised as torch.nn.Linear, named head.*."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from ftonnx import metadata
from ftonnx.cli import main
from ftonnx.errors import FtonnxError
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head, linear_init

from helpers import require_torch, run_model


def params(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}




@pytest.mark.parametrize("feature", ["pool", "flat"])  # (N, C, 1, 1) and (N, C)
def test_head_computes_a_linear_layer_on_the_features(tiny_model: onnx.ModelProto, feature: str) -> None:
    backbone = cut(tiny_model, feature)
    model = add_head(backbone, 3, seed=1)
    assert [o.name for o in model.graph.output] == ["logits"]
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 3]
    new = set(params(model)) - set(params(backbone))
    assert new == {"head.fc.weight", "head.fc.bias"}
    meta = metadata.read(model)
    assert meta.labels == ["class_0", "class_1", "class_2"] and meta.feature == feature
    assert meta.head_params == ["head.fc.weight", "head.fc.bias"]
    assert sorted(meta.backbone_params) == sorted(params(backbone))
    assert meta.preprocess == metadata.read(tiny_model).preprocess
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    (features,), (logits,) = run_model(backbone, x, [feature]), run_model(model, x, ["logits"])
    w, b = params(model)["head.fc.weight"], params(model)["head.fc.bias"]
    assert logits.shape == (4, 3)
    np.testing.assert_allclose(logits, features.reshape(4, -1) @ w.T + b, rtol=1e-5, atol=1e-6)


def test_hidden_head_with_dropout(tiny_model: onnx.ModelProto) -> None:
    model = add_head(cut(tiny_model, "pool"), 4, hidden=32, dropout=0.3, labels=list("abcd"))
    p = params(model)
    assert p["head.fc1.weight"].shape == (32, 16) and p["head.fc2.weight"].shape == (4, 32)
    assert [n.op_type for n in model.graph.node[-5:]] == ["Flatten", "Gemm", "Relu", "Dropout", "Gemm"]
    meta = metadata.read(model)
    assert meta.head_params == ["head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"]
    assert meta.labels == ["a", "b", "c", "d"]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (first,), (second,) = run_model(model, x, ["logits"]), run_model(model, x, ["logits"])
    assert first.shape == (2, 4) and np.array_equal(first, second)  # inference: dropout is off


def test_initialisation_matches_torch_linear_and_follows_the_seed() -> None:
    rng = np.random.default_rng
    weight, bias = linear_init(1280, 1000, rng(0))
    ref = require_torch().nn.Linear(1280, 1000)
    bound = 1 / np.sqrt(1280)
    assert weight.dtype == np.float32 and weight.shape == (1000, 1280) and bias.shape == (1000,)
    assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
    assert weight.std() == pytest.approx(ref.weight.detach().numpy().std(), rel=0.01)
    assert bias.std() == pytest.approx(ref.bias.detach().numpy().std(), rel=0.1)
    assert np.array_equal(linear_init(16, 3, rng(5))[0], linear_init(16, 3, rng(5))[0])
    assert not np.array_equal(linear_init(16, 3, rng(5))[0], linear_init(16, 3, rng(6))[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "at least 2 classes"),
    ({"num_classes": 3, "labels": ["a", "b"]}, "2 labels given for 3 classes"),
    ({"num_classes": 3, "dropout": 1.0}, "dropout"),
])
def test_bad_head_options(tiny_model: onnx.ModelProto, kwargs: dict, message: str) -> None:
    with pytest.raises(FtonnxError, match=message):
        add_head(cut(tiny_model, "pool"), **kwargs)


def test_model_with_its_classifier_is_refused(tiny_model: onnx.ModelProto) -> None:
    with pytest.raises(FtonnxError, match="still has its classifier.*ftonnx cut"):
        add_head(tiny_model, 3)


def test_head_on_zoo_backbone_adds_only_head_parameters(zoo_model_path: Path, tmp_path: Path) -> None:
    backbone_path, out = tmp_path / "backbone.onnx", tmp_path / "head.onnx"
    runner = CliRunner()
    assert runner.invoke(main, ["cut", str(zoo_model_path), "--node", "auto", "-o", str(backbone_path)]).exit_code == 0
    result = runner.invoke(main, ["head", str(backbone_path), "--classes", "2", "--labels", "ants,bees",
                                  "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    backbone, model = load(backbone_path), load(out)
    new = set(params(model)) - set(params(backbone))
    assert new == {"head.fc.weight", "head.fc.bias"} and params(model)["head.fc.weight"].shape == (2, 1280)
    assert all(np.array_equal(params(model)[k], v) for k, v in params(backbone).items())
    meta = metadata.read(model)
    assert meta.labels == ["ants", "bees"] and meta.head_params == ["head.fc.weight", "head.fc.bias"]
    assert set(meta.backbone_params) == {k for k, v in params(backbone).items() if v.dtype == np.float32}
    assert meta.preprocess == metadata.read(load(zoo_model_path)).preprocess
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    (logits,) = run_model(model, x, ["logits"])
    assert logits.shape == (3, 2)
