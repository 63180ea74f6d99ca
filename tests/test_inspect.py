"""`inspect`: the summary, and a recommended cut that skips squeeze-and-excitation poolings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ftonnx.cli import main
from ftonnx.errors import FtonnxError
from ftonnx.graph.cut import cut
from ftonnx.graph.inspect import recommended_cut, summarize


class _Builder:
    """Appends nodes and random weights to a graph on (batch, 8, 16, 16) features."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)

    def add(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"/{name}/{op}", **attrs))
        return name

    def weight(self, name: str, *shape: int) -> str:
        self.inits.append(numpy_helper.from_array(self.rng.standard_normal(shape).astype(np.float32), name))
        return name

    def pool(self, kind: str, x: str, name: str, keepdims: int = 1) -> str:
        if kind == "ReduceMean":
            return self.add("ReduceMean", [x], name, axes=[2, 3], keepdims=keepdims)
        if kind == "AveragePool":
            return self.add("AveragePool", [x], name, kernel_shape=[16, 16])
        return self.add("GlobalAveragePool", [x], name)

    def se_block(self, x: str, name: str, kind: str, linear: bool) -> str:
        """x * sigmoid(fc(relu(fc(pool(x))))): with 1x1 convolutions, or with Flatten/Gemm/Reshape."""
        p = self.pool(kind, x, f"{name}_pool")
        if linear:
            f = self.add("Flatten", [p], f"{name}_flat")
            h = self.add("Relu", [self.add("Gemm", [f, self.weight(f"{name}.w1", 2, 8)], f"{name}_fc1", transB=1)],
                         f"{name}_relu")
            g = self.add("Gemm", [h, self.weight(f"{name}.w2", 8, 2)], f"{name}_fc2", transB=1)
            shape = numpy_helper.from_array(np.array([-1, 8, 1, 1], np.int64), f"{name}.shape")
            self.inits.append(shape)
            g = self.add("Reshape", [g, shape.name], f"{name}_gate")
        else:
            h = self.add("Relu", [self.add("Conv", [p, self.weight(f"{name}.w1", 2, 8, 1, 1)], f"{name}_c1")],
                         f"{name}_relu")
            g = self.add("Conv", [h, self.weight(f"{name}.w2", 8, 2, 1, 1)], f"{name}_c2")
        return self.add("Mul", [x, self.add("Sigmoid", [g], f"{name}_sig")], f"{name}_scale")

    def model(self, output: str, width: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "se", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model, full_check=True)
        return model


def se_network(pool: str = "GlobalAveragePool", *, linear_se: bool = False, conv_head: bool = False) -> onnx.ModelProto:
    """Stem, two SE blocks (global pooling and ReduceMean), then the classifier's `pool` and a Gemm."""
    b = _Builder()
    x = b.add("Relu", [b.add("Conv", ["input", b.weight("stem.w", 8, 3, 3, 3)], "stem", pads=[1, 1, 1, 1])], "act")
    x = b.se_block(x, "se1", "GlobalAveragePool", linear_se)
    x = b.se_block(x, "se2", "ReduceMean", linear_se)
    p = b.pool(pool, x, "head_pool", keepdims=0 if pool == "ReduceMean" else 1)
    if conv_head:  # MobileNetV3 style: a 1x1 convolution and HardSwish after the pooling
        p = b.add("HardSwish", [b.add("Conv", [p, b.weight("last.w", 8, 8, 1, 1)], "last_conv")], "last_act")
    f = b.add("Flatten", [p], "flat")
    b.add("Gemm", [f, b.weight("fc.w", 5, 8), b.weight("fc.b", 5)], "logits", transB=1)
    return b.model("logits", 5)


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean", "AveragePool"])
@pytest.mark.parametrize("linear_se", [False, True])
def test_recommended_cut_skips_squeeze_and_excitation(pool: str, linear_se: bool) -> None:
    cut_point = recommended_cut(se_network(pool, linear_se=linear_se))
    assert cut_point["tensor"] == "head_pool" and cut_point["op_type"] == pool
    assert cut_point["shape"][1:] == ([8] if pool == "ReduceMean" else [8, 1, 1])
    assert "skipped 2 squeeze-and-excitation" in cut_point["reason"]


def test_recommended_cut_allows_a_convolutional_classifier() -> None:
    model = se_network(conv_head=True)
    assert recommended_cut(model)["tensor"] == "head_pool"
    assert [o.name for o in cut(model, "auto").graph.output] == ["head_pool"]


def test_no_global_pooling_means_no_recommendation() -> None:
    b = _Builder()
    x = b.add("AveragePool", ["input"], "local_pool", kernel_shape=[2, 2], strides=[2, 2])
    b.add("Gemm", [b.add("Flatten", [x], "flat"), b.weight("fc.w", 4, 192)], "logits", transB=1)
    model = b.model("logits", 4)
    with pytest.raises(FtonnxError, match="no cut point to recommend"):
        recommended_cut(model)
    assert summarize(model)["recommended_cut"]["tensor"] is None


def test_summary_of_tiny_model(tiny_model: onnx.ModelProto) -> None:
    s = summarize(tiny_model, changes=["something changed"])
    assert s["producer"] == "ftonnx-tests" and s["ir_version"] == 8 and s["opsets"] == {"ai.onnx": 17}
    assert s["inputs"] == [{"name": "input", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
    assert s["outputs"] == [{"name": "logits", "dtype": "float", "shape": ["batch", 10]}]
    assert s["node_count"] == 7 and s["normalize"] == ["something changed"]
    assert s["parameter_count"] == 8 * 3 * 9 + 8 + 16 * 8 * 9 + 16 + 10 * 16 + 10
    assert s["nodes"][1] == {"name": "/relu1/Relu", "op_type": "Relu",
                             "outputs": [{"name": "r1", "shape": ["batch", 8, 16, 16]}]}
    assert s["recommended_cut"]["node"] == "/pool/GlobalAveragePool"
    assert s["metadata"]["num_classes"] == 10


def test_cli_inspect_json_reports_normalisation(tiny_model: onnx.ModelProto, tmp_path: Path) -> None:
    bias = next(t for t in tiny_model.graph.initializer if t.name == "fc.bias")
    tiny_model.graph.initializer.remove(bias)
    tiny_model.graph.node.insert(0, helper.make_node("Constant", [], ["fc.bias"], value=bias))
    path = tmp_path / "constant.onnx"
    onnx.save(tiny_model, str(path))
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["normalize"] == ["turned 1 Constant nodes into initializers"]
    assert summary["recommended_cut"]["tensor"] == "pool"


def test_cli_inspect_human_summary(tiny_model_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tiny_model_path)])
    assert result.exit_code == 0, result.output
    assert "input  float(batch, 3, 32, 32)" in result.stdout
    assert "recommended cut: /pool/GlobalAveragePool -> pool (batch, 16, 1, 1)" in result.stdout


def test_squeeze_and_excitation_pooling_alone_is_never_recommended() -> None:
    truncated = cut(se_network(), "se2_scale")
    with pytest.raises(FtonnxError, match="2 global poolings, 2 of them in squeeze-and-excitation blocks"):
        recommended_cut(truncated)
