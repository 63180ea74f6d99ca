"""make_trainable rewrites ops ORT 1.19.2 cannot train through (or mistrains) into equal ones; the probe turns native
crashes of a training step into FtonnxError."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.normalize import normalize
from ftonnx.graph.trainable import make_trainable
from ftonnx.train.freeze import parameter_names
from ftonnx.train.probe import check_training_step

import exporters
from helpers import run_model


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _single_op(op: str, extra_inits: list[onnx.TensorProto] = (), dynamic: bool = True, **attrs) -> onnx.ModelProto:
    """input (N, 4, H, W) -> op -> output, opset 17."""
    dims = ["batch", 4, "h", "w"] if dynamic else ["batch", 4, 12, 12]
    graph = helper.make_graph(
        [helper.make_node(op, ["x", *(t.name for t in extra_inits)], ["y"], name="the_op", **attrs)], "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(extra_inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def se_model() -> onnx.ModelProto:
    return normalize(exporters.se_cnn())[0]


def test_se_model_outputs_equal_after_rewrite_at_several_sizes(se_model):
    trainable = make_trainable(se_model)
    rewritten, changes = trainable.model, trainable.changes
    assert not _ops(rewritten) & {"HardSigmoid", "MaxPool"}
    assert any("HardSigmoid" in c for c in changes) and any("MaxPool" in c for c in changes)
    assert set(parameter_names(se_model)) <= {t.name for t in rewritten.graph.initializer}
    onnx.checker.check_model(rewritten, full_check=True)
    rng = np.random.default_rng(0)
    for h, w in ((32, 32), (37, 45), (17, 20)):
        x = rng.standard_normal((3, 3, h, w)).astype(np.float32)
        np.testing.assert_allclose(run_model(rewritten, x)[0], run_model(se_model, x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("op,attrs,inits", [
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, []),
    ("HardSwish", {}, []),
    ("PRelu", {}, [numpy_helper.from_array(np.array([0.1, -0.2, 0.3, 2.0], np.float32).reshape(4, 1, 1), "slope")]),
])
def test_activations_rewritten_with_equal_outputs(op, attrs, inits):
    model = _single_op(op, inits, **attrs)
    trainable = make_trainable(model)
    rewritten, changes = trainable.model, trainable.changes
    assert op not in _ops(rewritten) and len(changes) == 1
    x = (np.random.default_rng(1).standard_normal((2, 4, 9, 7)) * 5).astype(np.float32)
    np.testing.assert_allclose(run_model(rewritten, x)[0], run_model(model, x)[0], rtol=0, atol=1e-6)
    if inits:  # the slope keeps its name, and stays an initializer that can train
        assert [t.name for t in rewritten.graph.initializer] == ["slope"]


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0], "ceil_mode": 0}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 2], "strides": [1, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
])
def test_dynamic_pools_become_slices_with_equal_outputs(op, attrs):
    model = _single_op(op, **attrs)
    rewritten = make_trainable(model).model
    assert op not in _ops(rewritten) and "Slice" in _ops(rewritten)
    rng = np.random.default_rng(2)
    for h, w in ((12, 12), (13, 9), (8, 15)):
        x = rng.standard_normal((2, 4, h, w)).astype(np.float32)
        np.testing.assert_allclose(run_model(rewritten, x)[0], run_model(model, x)[0], rtol=0, atol=1e-6)


def test_static_maxpool_kept_without_default_attributes():
    model = _single_op("MaxPool", dynamic=False, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0)
    trainable = make_trainable(model)
    rewritten, changes = trainable.model, trainable.changes
    (node,) = rewritten.graph.node
    assert node.op_type == "MaxPool" and {a.name for a in node.attribute} == {"kernel_shape", "strides"}
    assert changes == ["dropped default-valued pads/ceil_mode from 1 MaxPool"]


def test_unsupported_pool_left_alone():
    model = _single_op("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    trainable = make_trainable(model)
    rewritten, changes = trainable.model, trainable.changes
    assert _ops(rewritten) == {"AveragePool"} and changes == []


def test_trainable_nodes_limits_rewrites(se_model):
    keep = [n.name for n in se_model.graph.node if n.op_type != "MaxPool"]
    rewritten = make_trainable(se_model, keep).model
    assert "MaxPool" in _ops(rewritten) and "HardSigmoid" not in _ops(rewritten)


def test_below_training_opset_is_refused():
    with pytest.raises(FtonnxError, match="normalize"):
        make_trainable(exporters.se_cnn())


def _artifacts(model: onnx.ModelProto, folder) -> str:
    from onnxruntime.training import artifacts

    params = [t.name for t in model.graph.initializer]
    folder.mkdir()
    artifacts.generate_artifacts(model, requires_grad=params, loss=artifacts.LossType.CrossEntropyLoss,
                                 optimizer=artifacts.OptimType.AdamW, artifact_directory=str(folder))
    return str(folder)


def test_probe_reports_native_crash_naming_the_pool(tmp_path):
    art = _artifacts(exporters.dynamic_maxpool(), tmp_path / "art")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(FtonnxError, match=r"crashed ONNX Runtime natively \(SIG\w+\); likely node: pool \(MaxPool"):
        check_training_step(art, {"input": x}, np.zeros(2, np.int64))


def test_probe_passes_once_the_pool_is_rewritten_and_reports_plain_failures(tmp_path):
    model = make_trainable(exporters.dynamic_maxpool()).model
    art = _artifacts(model, tmp_path / "art")
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 24)).astype(np.float32)
    check_training_step(art, {"input": x}, np.zeros(2, np.int64))
    with pytest.raises(FtonnxError, match="training step failed: Invalid rank for input"):
        check_training_step(art, {"input": x[..., None]}, np.zeros(2, np.int64))


def test_zero_pad_before_a_conv_is_folded_into_its_pads():
    """TF-style "same" padding (Pad then Conv, EfficientNet-Lite's exports): one op less, the same values."""
    weight = numpy_helper.from_array(np.random.default_rng(3).standard_normal((5, 4, 3, 3)).astype(np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 1, 1], np.int64), "pads")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads", "zero"], ["padded"], name="pad", mode="constant"),
         helper.make_node("Conv", ["padded", "w"], ["y"], name="conv", strides=[2, 2], pads=[1, 0, 0, 1])],
        "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 11, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, pads, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    trainable = make_trainable(model)
    assert _ops(trainable.model) == {"Conv"} and trainable.changes == [
        "rewrote 1 Conv as the same Conv with the zero Pad before it in its own pads"]
    conv = trainable.model.graph.node[0]
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [1, 1, 1, 2]
    x = np.random.default_rng(4).standard_normal((2, 4, 11, 13)).astype(np.float32)
    np.testing.assert_allclose(run_model(trainable.model, x)[0], run_model(model, x)[0], rtol=0, atol=1e-5)
