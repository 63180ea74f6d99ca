"""Which parameters train under each --freeze policy, and that training leaves the frozen ones untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.train.config import TrainConfig
from ftonnx.train.freeze import parameter_names, trainable_parameters

from helpers import ArrayBatches, build_tiny_model, train_and_export

TINY = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]


def headed_tiny(dropout: float = 0.0) -> onnx.ModelProto:
    """The tiny model cut after its pooling with a fresh 3-class ftonnx head."""
    return add_head(cut(build_tiny_model(), "/pool/GlobalAveragePool"), 3, dropout=dropout)


def bn_model() -> onnx.ModelProto:
    """Conv-BatchNormalization-Relu-Pool-Flatten-MatMul-Add(bias)-Clip: every kind of initializer position."""
    rng = np.random.default_rng(1)

    def arr(name: str, *shape: int, low: float = -0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.uniform(low, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc.w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.b"], ["pre"]),
        helper.make_node("Clip", ["pre", "lo", "hi"], ["logits"]),
    ]
    inits = [arr("conv.w", 4, 3, 3, 3), arr("bn.scale", 4, low=0.5), arr("bn.bias", 4), arr("bn.mean", 4),
             arr("bn.var", 4, low=0.2), numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"),
             arr("fc.w", 4, 3), arr("fc.b", 3), numpy_helper.from_array(np.array(-9.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(9.0, np.float32), "hi")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def train_on_noise(model: onnx.ModelProto, run_dir: Path, freeze: str, size: int = 32) -> onnx.ModelProto:
    """Two epochs on separable random batches; returns the exported RUN/model.onnx."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 3, size, size)).astype(np.float32)
    y = np.arange(24) % 3
    x[np.arange(24), y] += 1.0
    return train_and_export(model, ArrayBatches(x, y, 8), ArrayBatches(x, y, 24), run_dir,
                            TrainConfig(epochs=2, freeze=freeze, lr=1e-2))


def test_parameter_names_of_the_tiny_model() -> None:
    assert parameter_names(build_tiny_model()) == TINY


def test_parameter_names_skip_running_statistics_shapes_and_clip_bounds() -> None:
    assert parameter_names(bn_model()) == ["conv.w", "bn.scale", "bn.bias", "fc.w", "fc.b"]


def test_policies_pick_head_all_or_downstream() -> None:
    model = headed_tiny()
    assert trainable_parameters(model, "backbone") == ["head.fc.weight", "head.fc.bias"]
    assert trainable_parameters(model, "none") == [*TINY[:4], "head.fc.weight", "head.fc.bias"]
    assert trainable_parameters(model, "until:/relu1/Relu") == ["conv2.weight", "conv2.bias",
                                                                "head.fc.weight", "head.fc.bias"]


@pytest.mark.parametrize("policy, message", [
    ("backbone", "no head_params"), ("until:/fc/Gemm", "leaves no parameter"), ("some", "unknown freeze policy"),
    ("until:", "unknown freeze policy"), ("until:nosuchnode", "no node or tensor matches")])
def test_bad_policies_are_clear_errors(policy: str, message: str) -> None:
    with pytest.raises(FtonnxError, match=message):
        trainable_parameters(build_tiny_model(), policy)


@pytest.mark.parametrize("freeze", ["backbone", "until:/relu1/Relu", "none"])
def test_frozen_parameters_stay_bit_identical_and_trainable_ones_change(tmp_path: Path, freeze: str) -> None:
    model = headed_tiny()
    trainable = set(trainable_parameters(model, freeze))
    before, after = weights(model), weights(train_on_noise(model, tmp_path / "run", freeze))
    assert set(after) == set(before)
    for name in before:
        if name in trainable:
            assert not np.array_equal(before[name], after[name]), name
        else:
            assert np.array_equal(before[name], after[name]), name


def test_batchnorm_statistics_stay_fixed_and_the_node_is_kept(tmp_path: Path) -> None:
    model = bn_model()
    before = weights(model)
    exported = train_on_noise(model, tmp_path / "run", "none", size=8)
    after = weights(exported)
    for name in ("bn.mean", "bn.var", "lo", "hi", "shape"):
        assert np.array_equal(before[name], after[name]), name
    for name in ("conv.w", "bn.scale", "bn.bias", "fc.w", "fc.b"):
        assert not np.array_equal(before[name], after[name]), name
    assert "BatchNormalization" in [n.op_type for n in exported.graph.node]


def test_dropout_is_active_in_training_and_gone_from_the_inputs_of_the_export(tmp_path: Path) -> None:
    exported = train_on_noise(headed_tiny(dropout=0.5), tmp_path / "drop", "backbone")
    plain = train_on_noise(headed_tiny(), tmp_path / "plain", "backbone")
    assert [i.name for i in exported.graph.input] == ["input"]
    assert "Dropout" in [n.op_type for n in exported.graph.node]
    assert not np.array_equal(weights(exported)["head.fc.weight"], weights(plain)["head.fc.weight"])
