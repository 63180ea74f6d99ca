"""Quantisation-aware training (`--qat`): fake quantisation exactly where the int8 export quantises, with each
freeze mode; the int8 export computes what the training graph computed; the cache comes from the int8 prefix;
resume; combinations refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftonnx import metadata
from ftonnx.data import Loader, discover
from ftonnx.export.qat import calibrate_qat, int8_prefix
from ftonnx.export.quantize import Quantizer
from ftonnx.graph.fakequant import add_fake_quant
from ftonnx.graph.index import GraphIndex, prune
from ftonnx.graph.normalize import lift_opset
from ftonnx.graph.qdqplan import read_plan
from ftonnx.graph.trainable import make_trainable
from ftonnx.train.artifacts import Artifacts
from ftonnx.train.freeze import trainable_parameters
from ftonnx.train.run import RunFolder
from ftonnx.train.session import TrainingSession

from helpers import build_tiny_model, cli, write_colours

NODE = "/pool/GlobalAveragePool"
MODES = {  # the freeze modes, and how the frozen part reaches the trainable one
    "backbone": (),  # cached: the int8 prefix computes the head's input once
    "until": ("--freeze", "until:/relu1/Relu"),  # augmented, so through the whole graph: conv1 fixed scales
    "none": ("--freeze", "none", "--backbone-lr-mult", "0.1", "--l2sp", "0.01", "--delta", "0.01"),
}


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colours(tmp_path_factory.mktemp("colours"), train=12, val=6)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(build_tiny_model(), str(path))
    return path


def finetune(tiny: Path, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return cli("finetune", tiny, "--node", NODE, "--data", data, "--out", out, "--batch-size", 8, "--lr", 0.02,
               "--hidden", 8, "--no-report", *extra)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.output[:]
    result.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return result


def dequantised(model: onnx.ModelProto, tensor: str) -> str:
    """What the int8 model's readers of `tensor` read: its DequantizeLinear's output (or itself)."""
    index = GraphIndex(model)
    for q in index.consumers(tensor):
        if q.op_type == "QuantizeLinear":
            return index.consumers(q.output[0])[0].output[0]
    return tensor


def val_images(run: Path) -> np.ndarray:
    model = onnx.load(str(run / "model.onnx"))
    _, val = discover(json.loads((run / "config.json").read_text())["data_args"]["data"])
    return next(Loader(val, metadata.read(model).preprocess, batch_size=len(val.samples)).epoch(0))[0]


def training_logits(run: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The fake-quantised eval graph's logits with the best epoch's weights and scales."""
    folder = RunFolder(run)
    session = TrainingSession(Artifacts(folder.artifacts), folder.checkpoint_path(folder.sidecar("best")), threads=1)
    return session.logits(feeds)


@pytest.mark.parametrize("mode", MODES)
def test_qat_int8_computes_what_the_training_graph_computed(tiny_path: Path, colours: Path, tmp_path: Path,
                                                            mode: str) -> None:
    run, out = tmp_path / "run", tmp_path / "edge"
    code, _, stderr = finetune(tiny_path, colours, run, "--qat", "--epochs", 3, *MODES[mode])
    assert code == 0, stderr
    assert "qat: fake quantisation of" in stderr
    record = json.loads((run / "quantisation.json").read_text())
    assert record["images"] == 36 and "logits" not in record["ranges"]
    assert record["learned"] and set(record["learned"]) <= set(record["ranges"])
    code, stdout, stderr = cli("export", run, "-o", out, "--int8")
    assert code == 0, stderr
    assert "int8: QAT scales" in stdout
    assert json.loads((out / "report.json").read_text())["int8"]["scales"] == "qat"

    int8 = onnx.load(str(out / "model.int8.onnx"))
    x = val_images(run)
    boundary = (json.loads((run / "config.json").read_text())["cache"] or {}).get("boundary", [])
    names = ["logits", *(dequantised(int8, t) for t in boundary)]
    int8_logits, *fed = ort.InferenceSession(with_outputs(int8, names).SerializeToString()).run(names, {"input": x})
    trained = training_logits(run, dict(zip(boundary, fed)) if boundary else {"input": x})
    step = float(numpy_helper.to_array(next(t for t in int8.graph.initializer if t.name == "logits_scale")))
    assert np.abs(int8_logits - trained).max() <= step  # the output's rounding, and not a step more
    assert np.array_equal(int8_logits.argmax(axis=1), trained.argmax(axis=1))
    float_logits = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], {"input": x})[0]
    assert np.abs(float_logits - int8_logits).max() > 3 * step  # the float model is not what int8 computes


def test_the_cache_is_what_the_int8_model_feeds_its_head_and_the_size_is_ptq_s(tiny_path: Path, colours: Path,
                                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert finetune(tiny_path, colours, run, "--qat", "--epochs", 2)[0] == 0
    assert cli("export", run, "-o", tmp_path / "qat", "--int8")[0] == 0
    int8 = onnx.load(str(tmp_path / "qat" / "model.int8.onnx"))
    cut = json.loads((run / "config.json").read_text())["cache"]["boundary"]
    trained = prune(onnx.load(str(run / "model.onnx")), ["logits"])  # as it trained: no probabilities
    calibration = calibrate_qat(trained, None, RunFolder(run).read_quantisation())
    x = val_images(run)
    cached = ort.InferenceSession(int8_prefix(calibration, cut).SerializeToString()).run(cut, {"input": x})
    fed = [dequantised(int8, t) for t in cut]
    assert all(np.array_equal(a, b) for a, b in zip(cached, ort.InferenceSession(
        with_outputs(int8, fed).SerializeToString()).run(fed, {"input": x})))

    code, _, stderr = cli("export", run / "model.onnx", "-o", tmp_path / "ptq", "--int8", "--calib",
                          colours / "train", "--int8-keep-float", "none")
    assert code == 0, stderr
    ptq = onnx.load(str(tmp_path / "ptq" / "model.int8.onnx"))
    assert sorted(n.op_type for n in int8.graph.node) == sorted(n.op_type for n in ptq.graph.node)
    assert {(t.name, t.data_type, tuple(t.dims)) for t in int8.graph.initializer} == \
        {(t.name, t.data_type, tuple(t.dims)) for t in ptq.graph.initializer}
    sizes = [(tmp_path / kind / "model.int8.onnx").stat().st_size for kind in ("qat", "ptq")]
    assert abs(sizes[0] - sizes[1]) <= 64, sizes  # the same tensors; the metadata's numbers differ


def test_resumed_qat_run_ends_with_the_weights_and_scales_of_an_uninterrupted_one(tiny_path: Path, colours: Path,
                                                                                  tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    options = ("--qat", "--freeze", "none", "--schedule", "constant")
    assert finetune(tiny_path, colours, whole, *options, "--epochs", 3)[0] == 0
    assert finetune(tiny_path, colours, parts, *options, "--epochs", 2)[0] == 0
    code, _, stderr = finetune(tiny_path, colours, parts, "--resume", "--epochs", 3)
    assert code == 0, stderr
    assert f"int8 ranges from {parts / 'quantisation.json'}" in stderr
    assert (parts / "quantisation.json").read_text() == (whole / "quantisation.json").read_text()
    assert (parts / "model.onnx").read_bytes() == (whole / "model.onnx").read_bytes()


@pytest.mark.parametrize("extra, message", [
    (("--qat", "--device", "cuda"), "--qat trains on the CPU only"),
    (("--qat", "--optimizer", "sgd", "--weight-decay", "0"), "--qat learns its activation scales with AdamW"),
])
def test_bad_qat_combinations_are_one_line(tiny_path: Path, colours: Path, tmp_path: Path, extra: tuple,
                                           message: str) -> None:
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "run", *extra)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr
    assert not (tmp_path / "run").exists()


def test_qat_cannot_be_added_on_resume_nor_its_export_recalibrated(tiny_path: Path, colours: Path,
                                                                   tmp_path: Path) -> None:
    plain, qat = tmp_path / "plain", tmp_path / "qat"
    assert finetune(tiny_path, colours, plain, "--epochs", 1)[0] == 0
    code, _, stderr = finetune(tiny_path, colours, plain, "--resume", "--qat")
    assert code == 2 and stderr.strip() == (f"ftonnx: error: {plain} was trained without --qat, and --resume continues "
                                            "a run as it started; drop --qat or start a new run")
    assert finetune(tiny_path, colours, qat, "--epochs", 1, "--qat")[0] == 0
    code, _, stderr = cli("export", qat, "-o", tmp_path / "edge", "--int8", "--calib-method", "entropy")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "trained with --qat" in stderr


def _pooled_model() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm: the MaxPool's output shares its input's int8 scale."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("conv.weight", (4, 3, 3, 3)), ("fc.weight", (2, 64)), ("fc.bias", (2,)))]
    nodes = [helper.make_node("Conv", ["input", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_fake_quant_mirrors_the_int8_model_and_shares_its_shared_scales() -> None:
    model = _pooled_model()
    x = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    with Quantizer(model, [x[:4], x[4:]]) as quantizer:
        int8 = quantizer.quantize([], bias_correction=False)
    plan = read_plan(int8)
    assert plan.activations["p"].group == plan.activations["r"].group  # MaxPool keeps its input's scale
    assert sorted((w.weight, w.axis) for w in plan.weights) == [("conv.weight", 0), ("fc.weight", 0)]

    forward = make_trainable(prune(lift_opset(model), ["logits"])).model
    result = add_fake_quant(forward, plan, ["conv.weight", "fc.weight", "fc.bias"], gain=10.0)
    assert result.outputs == ["logits"] and result.fixed == ["input"] and sorted(result.weights) == ["conv.weight",
                                                                                                    "fc.weight"]
    assert len(result.learned) == 2 and sorted(result.learned[plan.activations["r"].group]["tensors"]) == ["p", "r"]
    fake = sum(n.op_type == "FakeQuant" for n in forward.graph.node)
    assert fake == len(plan.activations) - 1 + len(plan.weights)  # every Q/DQ pair but the output's
    ours = ort.InferenceSession(forward.SerializeToString()).run(["logits"], {"input": x})[0]
    theirs = ort.InferenceSession(int8.SerializeToString()).run(["logits"], {"input": x})[0]
    output = plan.activations["logits"]  # the int8 model rounds the output to its range; training leaves it float
    assert np.abs(np.clip(ours, *output.range()) - theirs).max() <= output.scale / 2 + 1e-6


@pytest.mark.slow
def test_fake_quant_mirrors_efficientnet_lite0s_int8_model(zoo_model_path: Path, hymenoptera: Path) -> None:
    """A real network: BatchNorm folded into its convolutions, Pads the quantiser's optimiser fuses, ReLU6 Clips it
    removes, residual Adds; the fake-quantised graph is far closer to the int8 model than the float one is."""
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head

    model = add_head(cut(load(zoo_model_path), "AvgPool"), 2)
    train, val = discover(str(hymenoptera))
    preprocess = metadata.read(model).preprocess
    x = next(Loader(train, preprocess, batch_size=16).epoch(0))[0]
    calibration = calibrate_qat(model, [x[:8], x[8:]])
    assert len(calibration.plan.weights) == 50 and len(calibration.plan.activations) == 62
    forward = make_trainable(prune(lift_opset(model), ["logits"])).model
    result = add_fake_quant(forward, calibration.plan, trainable_parameters(model, "none"), gain=100.0)
    assert len(result.learned) == 61 - 1 and result.fixed == ["input"] and result.outputs == ["logits"]
    x = next(Loader(val, preprocess, batch_size=8).epoch(0))[0]
    ours, theirs, exact = (ort.InferenceSession(m.SerializeToString()).run(["logits"], {"input": x})[0]
                           for m in (forward, calibration.blueprint, model))
    assert np.abs(ours - theirs).max() < 0.4 * np.abs(exact - theirs).max()
