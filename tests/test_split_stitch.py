"""Splitting at the freeze boundary and stitching back: the right boundary, and bit-exact outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.graph.split import NotPrefixError, boundary, is_prefix, split
from ftonnx.graph.stitch import stitch

from helpers import run_model, skip_model

TINY_HEAD = ["fc.weight", "fc.bias"]




def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)




def assert_split_exact(model: onnx.ModelProto, cut_at: list[str], x: np.ndarray) -> tuple[onnx.ModelProto, ...]:
    """Split at `cut_at`: the suffix on the prefix's outputs matches the original (ORT fuses ops
    differently across the cut, so within 1e-5), and the re-stitched model equals it bit for bit."""
    prefix, suffix = split(model, cut_at)
    assert [o.name for o in prefix.graph.output] == cut_at
    assert [i.name for i in suffix.graph.input] == cut_at
    for value in suffix.graph.input:  # the batch stays dynamic
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    name = model.graph.input[0].name
    expected = run_model(model, {name: x})
    staged = run_model(suffix, dict(zip(cut_at, run_model(prefix, {name: x}))))
    stitched = stitch(prefix, suffix)
    onnx.checker.check_model(stitched, full_check=True)
    assert [i.name for i in stitched.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in stitched.graph.output] == [o.name for o in model.graph.output]
    assert len(stitched.graph.node) == len(model.graph.node)
    for want, got, again in zip(expected, staged, run_model(stitched, {name: x})):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(again, want)
    return prefix, suffix, stitched


def test_backbone_freeze_on_tiny_crosses_one_tensor_and_round_trips(tiny_model):
    assert boundary(tiny_model, TINY_HEAD) == ["flat"]
    prefix, suffix, stitched = assert_split_exact(tiny_model, ["flat"], images(5, 32))
    assert {t.name for t in suffix.graph.initializer} == set(TINY_HEAD)
    assert not {t.name for t in prefix.graph.initializer} & set(TINY_HEAD)
    assert metadata.read(suffix).labels == metadata.read(tiny_model).labels
    assert metadata.read(suffix).extra["boundary"] == ["flat"]
    assert metadata.read(prefix).preprocess == metadata.read(tiny_model).preprocess
    assert metadata.read(stitched) == metadata.read(tiny_model)


def test_skip_connection_crosses_two_tensors():
    model = skip_model()
    trainable = ["conv3.weight", "fc.weight", "fc.bias"]
    assert boundary(model, trainable) == ["r1", "r2"]
    assert boundary(model, ["conv2.weight"] + trainable) == ["r1"]
    assert_split_exact(model, ["r1", "r2"], images(3, 16))


def test_trainable_first_layer_is_not_a_prefix(tiny_model):
    with pytest.raises(NotPrefixError, match="not a prefix: node '/conv1/Conv' .* reads graph input 'input'"):
        boundary(tiny_model, ["conv1.weight"])
    assert not is_prefix(tiny_model, ["conv1.weight"])
    assert is_prefix(tiny_model, ["conv2.weight"])
    with pytest.raises(FtonnxError, match="not in the model: nope"):
        boundary(tiny_model, ["nope"])


def test_shape_chains_are_recomputed_in_the_suffix_not_cached(zoo_model_path):
    """The zoo's classifier reads Reshape(pool, Concat(Shape(input)[0], -1)): training the last conv
    would need the image input's shape, so that freeze is not a prefix; training only the classifier
    keeps the Reshape in the prefix."""
    model = load(zoo_model_path)
    assert boundary(model, ["_fc.weight", "_fc.bias"]) == ["/Reshape_output_0"]
    last_conv = next(n for n in model.graph.node if n.name == "/_conv_head/Conv").input[1]
    with pytest.raises(NotPrefixError, match=r"'/Shape' \(Shape\) .* reads graph input 'input'"):
        boundary(model, [last_conv, "_fc.weight", "_fc.bias"])


@pytest.fixture(scope="module")
def lite0_head(zoo_model_path) -> onnx.ModelProto:
    return add_head(cut(load(zoo_model_path), "auto"), 2, labels=["ants", "bees"])


def test_lite0_with_head_round_trips_for_backbone_and_late_block_freezes(lite0_head):
    x = images(2, 224)
    head = metadata.read(lite0_head).head_params
    assert boundary(lite0_head, head) == ["head.flat"]
    assert_split_exact(lite0_head, ["head.flat"], x)

    names = [n.name for n in lite0_head.graph.node]
    start = names.index("/_blocks.14/_project_conv/Conv")
    inits = {t.name for t in lite0_head.graph.initializer}
    late = [i for n in lite0_head.graph.node[start:] if n.op_type in ("Conv", "Gemm")
            for i in n.input[1:] if i in inits]
    cut_at = boundary(lite0_head, late)
    assert cut_at == ["/_blocks.13/Add_output_0", "/_blocks.14/_swish_1/Clip_output_0"]
    assert_split_exact(lite0_head, cut_at, x)


def test_stitch_uses_the_trained_suffix_and_renames_only_clashes(tiny_model):
    prefix, suffix = split(tiny_model, ["r1"])
    trained = onnx.ModelProto()
    trained.CopyFrom(suffix)
    for t in trained.graph.initializer:  # as if training had moved the weights
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 0.5, t.name))
    shared = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    for part, tensor in ((prefix, "c1"), (trained, "c2")):  # both halves read a constant named "zero"
        part.graph.initializer.append(shared)
        part.graph.node.append(helper.make_node("Max", [tensor, "zero"], [tensor + "_max"]))
    trained.ir_version = 9
    stitched = stitch(prefix, trained)
    assert {"zero", "suffix/zero", "fc.weight", "conv2.weight"} <= {t.name for t in stitched.graph.initializer}
    x = images(4, 32)
    np.testing.assert_array_equal(run_model(stitched, {"input": x})[0],
                                  run_model(trained, {"r1": run_model(prefix, {"input": x})[0]})[0])


def test_stitch_refuses_halves_that_do_not_meet(tiny_model):
    prefix, _ = split(tiny_model, ["r1"])
    _, suffix = split(tiny_model, ["flat"])
    with pytest.raises(FtonnxError, match="the suffix reads 'flat', which the prefix does not output"):
        stitch(prefix, suffix)


def test_stitched_model_imports_each_opset_once_and_quantises(tiny_model, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    prefix, suffix = split(tiny_model, boundary(tiny_model, ["fc.weight", "fc.bias"]))
    model = stitch(prefix, suffix)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    onnx.save(model, str(tmp_path / "stitched.onnx"))

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": np.random.default_rng(0).random((2, 3, 32, 32), np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp_path / "stitched.onnx"), str(tmp_path / "int8.onnx"), Images())
    assert (tmp_path / "int8.onnx").stat().st_size > 0
