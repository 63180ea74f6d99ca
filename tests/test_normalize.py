"""The normalising pass on the graphs other exporters leave: same outputs, tidier graph, changes reported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph import load, load_reporting
from ftonnx.graph.index import onnx_opset
from ftonnx.graph.normalize import normalize

import exporters
from helpers import run_model


def _images(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(exporters.BUILDERS))
def test_builders_lift_to_training_opset_with_equal_outputs(kind):
    raw = exporters.BUILDERS[kind]()
    model, changes = normalize(raw)
    assert onnx_opset(raw) == 11 and onnx_opset(model) == 12
    assert any("lifted opset 11 to 12" in c for c in changes)
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    sizes = [(32, 32)] if kind == "tf_style" else [(32, 32), (40, 24)]
    for h, w in sizes:
        x = _images(2, h, w, 3) if kind == "tf_style" else _images(2, 3, h, w)
        np.testing.assert_allclose(run_model(model, x)[0], run_model(raw, x)[0], rtol=0, atol=1e-6)


def test_constant_weights_become_initializers_and_ir_is_raised():
    raw = exporters.constant_weights()
    model, changes = normalize(raw)
    assert "Constant" not in {n.op_type for n in model.graph.node}
    assert "stem.0.weight" in {t.name for t in model.graph.initializer}
    assert "turned 25 Constant nodes into initializers" in changes
    assert raw.ir_version == 5 and model.ir_version == 7
    assert "raised IR version 5 to 7 (the minimum for its opsets)" in changes


@pytest.mark.parametrize("kind", ["constant_weights", "tf_style"])
def test_normalize_leaves_the_callers_model_alone_unless_told(kind):
    raw = getattr(exporters, kind)()
    before = raw.SerializeToString()
    copied, changes = normalize(raw)
    assert changes and raw.SerializeToString() == before
    edited, same_changes = normalize(raw, copy=False)
    assert same_changes == changes and edited.SerializeToString() == copied.SerializeToString()


def test_tensorflow_names_and_layout_survive():
    model, _ = normalize(exporters.tf_style())
    assert model.graph.input[0].name == "serving_default_input_1:0"
    assert model.graph.node[0].op_type == "Transpose"
    names = {t.name for t in model.graph.initializer}
    assert "StatefulPartitionedCall/model/stem/0/weight/ReadVariableOp@resource:0" in names


def test_old_opset_ops_convert():
    """Clip, Pad and BatchNormalization with their opset-9 attributes become their opset-12 forms."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("scale", rng.random(3) + 0.5), ("bias", rng.standard_normal(3)), ("mean", rng.standard_normal(3) * 0.1),
        ("var", rng.random(3) + 0.5))]
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("Clip", ["bn"], ["clip"], min=-0.5, max=0.8),
             helper.make_node("Pad", ["clip"], ["y"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.25)]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    model, changes = normalize(raw)
    assert onnx_opset(model) == 12 and "lifted opset 9 to 12 (ONNX Runtime training's floor)" in changes
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    assert len(clip.input) == 3 and not clip.attribute  # bounds are inputs from opset 11
    x = _images(1, 3, 5, 5) * 3
    np.testing.assert_allclose(run_model(model, x)[0], run_model(raw, x)[0], rtol=0, atol=1e-6)


def test_external_data_is_loaded_from_beside_the_model(tmp_path):
    path = exporters.write_model("external_data", tmp_path)
    assert (tmp_path / "external.onnx.data").is_file()
    stored = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    model, changes = load_reporting(path)
    assert all(t.data_location == TensorProto.DEFAULT and t.raw_data for t in model.graph.initializer)
    reference, _ = normalize(exporters.se_cnn())
    x = _images(2, 3, 32, 32)
    np.testing.assert_array_equal(run_model(model, x)[0], run_model(reference, x)[0])


def test_missing_external_data_is_an_error(tmp_path):
    path = exporters.write_model("external_data", tmp_path)
    (tmp_path / "external.onnx.data").unlink()
    with pytest.raises(FtonnxError, match="external.onnx"):
        load(path)
