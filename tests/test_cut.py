"""SPEC selection and cutting: the right tensor, only what it needs, and bit-for-bit the same values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from ftonnx import metadata
from ftonnx.cli import main
from ftonnx.errors import FtonnxError
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.select import resolve

from helpers import image_batch, run_model

POOL = "/_avg_pooling/GlobalAveragePool_output_0"




def with_output(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """A copy of `model` that also outputs the intermediate `tensor`."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    extended.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return extended


@pytest.mark.parametrize("spec, tensor", [
    ("/conv2/Conv", "c2"),          # exact node name
    ("r1", "r1"),                   # exact tensor name
    ("GlobalAveragePool", "pool"),  # op type
    ("gemm", "logits"),             # op type, any case
    ("CONV2:conv", "c2"),           # loose name: case and _-/.: ignored
    ("relu2", "r2"),                # loose substring of /relu2/Relu
    ("auto", "pool"),               # the recommended cut
])
def test_resolve_kinds_of_spec(tiny_model: onnx.ModelProto, spec: str, tensor: str) -> None:
    assert resolve(tiny_model, spec) == tensor


def test_several_matches_list_candidates_with_shapes_unless_picked(tiny_model: onnx.ModelProto) -> None:
    with pytest.raises(FtonnxError) as err:
        resolve(tiny_model, "Relu")
    message = str(err.value)
    assert "[0] /relu1/Relu -> r1 (batch, 8, 16, 16)" in message
    assert "[1] /relu2/Relu -> r2 (batch, 16, 16, 16)" in message and "--last" in message
    assert resolve(tiny_model, "Relu", last=True) == "r2"
    assert resolve(tiny_model, "Relu", index=0) == "r1"
    assert resolve(tiny_model, "Relu", index=-1) == "r2"
    with pytest.raises(FtonnxError, match="out of range"):
        resolve(tiny_model, "Relu", index=2)
    with pytest.raises(FtonnxError, match="not both"):
        resolve(tiny_model, "Relu", last=True, index=0)


def test_no_match_suggests_closest_names(tiny_model: onnx.ModelProto) -> None:
    with pytest.raises(FtonnxError, match=r"no node or tensor matches 'conv3'; closest: .*conv[12]"):
        resolve(tiny_model, "conv3")


@pytest.mark.parametrize("spec, message", [("input", "graph input"), ("INPUT", "graph input"),
                                           ("conv1.weight", "parameter")])
def test_graph_inputs_and_parameters_are_refused(tiny_model: onnx.ModelProto, spec: str, message: str) -> None:
    with pytest.raises(FtonnxError, match=message):
        cut(tiny_model, spec)


def test_cut_keeps_only_what_the_output_needs(tiny_model: onnx.ModelProto) -> None:
    result = cut(tiny_model, "pool")
    assert [n.name for n in result.graph.node] == [n.name for n in tiny_model.graph.node[:5]]
    assert sorted(t.name for t in result.graph.initializer) == sorted(
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"])
    (output,) = result.graph.output
    assert output.name == "pool"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 16, 1, 1]
    onnx.checker.check_model(result, full_check=True)
    before, after = metadata.read(tiny_model), metadata.read(result)
    assert after.feature == "pool" and after.labels == before.labels and after.preprocess == before.preprocess
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (expected,) = run_model(with_output(tiny_model, "pool"), x, ["pool"])
    (got,) = run_model(result, x, ["pool"])
    assert np.array_equal(got, expected)


def test_cut_drops_inputs_the_output_does_not_read() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["ra"], name="relu_a"), helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
         helper.make_node("Add", ["ra", "rb"], ["sum"], name="add")], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 4])])
    result = cut(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "relu_a")
    assert [i.name for i in result.graph.input] == ["a"] and [n.name for n in result.graph.node] == ["relu_a"]


def test_cut_zoo_at_avgpool_is_bit_identical_on_real_images(zoo_model_path: Path, hymenoptera: Path) -> None:
    model = load(zoo_model_path)
    result = cut(model, "AvgPool")
    assert [o.name for o in result.graph.output] == [POOL]
    assert "_fc.weight" not in {t.name for t in result.graph.initializer}
    assert result.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.checker.check_model(result, full_check=True)
    images = [path for kind in ("ants", "bees") for path in sorted((hymenoptera / "val" / kind).glob("*.jpg"))[:5]]
    x = image_batch(images, metadata.read(model).preprocess)
    (expected,) = run_model(with_output(model, POOL), x, [POOL])
    (got,) = run_model(result, x, [POOL])
    assert got.shape == (10, 1280, 1, 1) and np.array_equal(got, expected)


def test_cli_cut_auto_on_zoo_picks_the_classifier_pooling(zoo_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.onnx"
    result = CliRunner().invoke(main, ["cut", str(zoo_model_path), "--node", "auto", "-o", str(out)])
    assert result.exit_code == 0, result.output
    backbone = onnx.load(str(out))
    assert [o.name for o in backbone.graph.output] == [POOL]
    assert metadata.read(backbone).feature == POOL
