"""Finetuning strategies: the backbone rate multiplier and L2-SP through the w0 + s * delta
reparametrisation, the objective graph (class weights, label smoothing, DELTA), DELTA's channel
attention, and that the exported model is the user's graph whatever the strategy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ftonnx import metadata
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.graph.objective import Objective, add_objective
from ftonnx.graph.reparam import reparametrise
from ftonnx.train.config import TrainConfig
from ftonnx.train.delta import channel_attention, delta_layers

from helpers import (
    ArrayBatches,
    build_tiny_model,
    finetune_tiny,
    run_model,
    train_and_export,
)

BACKBONE = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
HEAD = ["head.fc.weight", "head.fc.bias"]

COLOUR_IMAGES = (8, 4)  # per class, train and val (the `colours` fixture)


def headed_tiny() -> onnx.ModelProto:
    return add_head(cut(build_tiny_model(), "/pool/GlobalAveragePool"), 3, labels=["a", "b", "c"])


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def noise(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), np.arange(n) % 3


def moved(tmp_path: Path, name: str, **options) -> dict[str, np.ndarray]:
    """How far each parameter of the headed tiny model moves in a run on noise (`options` for TrainConfig)."""
    model = headed_tiny()
    x, y = noise()
    config = TrainConfig(freeze="none", schedule="constant", warmup_epochs=0, **options)
    trained = train_and_export(model, ArrayBatches(x, y, len(y)), ArrayBatches(x, y, len(y)), tmp_path / name, config)
    before, after = weights(model), weights(trained)
    return {p: after[p] - before[p] for p in BACKBONE + HEAD}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_backbone_rate_multiplier_moves_backbone_weights_k_times_less_in_one_step(tmp_path, optimizer):
    options = dict(epochs=1, optimizer=optimizer, lr=0.05, weight_decay=0.0)
    plain = moved(tmp_path, "plain", **options)
    slow = moved(tmp_path, "slow", backbone_lr_mult=0.1, **options)
    for p in HEAD:
        np.testing.assert_allclose(slow[p], plain[p], rtol=1e-5, atol=1e-8, err_msg=p)
    for p in BACKBONE:
        if optimizer == "sgd":  # the same gradient, k times the step
            assert np.abs(plain[p]).max() > 1e-4, p
            np.testing.assert_allclose(slow[p], 0.1 * plain[p], rtol=2e-3, atol=1e-7, err_msg=p)
        else:  # Adam's first step is lr * g / (|g| + eps) per element: the rate itself, where |g| >> eps
            assert np.abs(plain[p]).max() == pytest.approx(0.05, rel=0.01), p
            assert np.abs(slow[p]).max() == pytest.approx(0.005, rel=0.05), p


def test_l2sp_with_a_large_alpha_keeps_backbone_weights_near_their_pretrained_values(tmp_path):
    options = dict(epochs=4, optimizer="sgd", lr=0.05, weight_decay=0.0)
    free = moved(tmp_path, "free", **options)
    held = moved(tmp_path, "held", l2sp=30.0, **options)
    for p in BACKBONE:
        assert np.linalg.norm(held[p]) < 0.35 * np.linalg.norm(free[p]), p
    assert np.linalg.norm(held["head.fc.weight"]) > 0.5 * np.linalg.norm(free["head.fc.weight"])


def logits_model(classes: int) -> onnx.ModelProto:
    """`logits` is the input `x` passed through: the objective on given logits."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "logits",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", classes])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_class_weights_and_label_smoothing_give_pytorchs_weighted_smoothed_cross_entropy():
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((7, 4)).astype(np.float32) * 3, np.array([0, 1, 3, 3, 2, 0, 3])
    w, eps = np.array([0.5, 2.0, 1.0, 4.0]), 0.2
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = -log_p[np.arange(7), labels]
    smooth = -(log_p * w).sum(1) / 4
    expected = ((1 - eps) * (w[labels] * nll).sum() + eps * smooth.sum()) / w[labels].sum()
    model = add_objective(logits_model(4), Objective(class_weights=w.tolist(), label_smoothing=eps))
    loss, out = run_model(model, {"x": logits, "labels": labels})
    assert loss.shape == () and loss == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(out, logits)
    plain = run_model(add_objective(logits_model(4), Objective()), {"x": logits, "labels": labels})[0]
    assert plain == pytest.approx(nll.mean(), rel=1e-5)
    assert TrainConfig(class_weights="auto").resolved(backbone_trains=False, class_counts=[30, 10, 20]) \
        .class_weights == pytest.approx([60 / 90, 2.0, 1.0])


def test_delta_term_is_zero_at_the_start_and_weighs_feature_map_distances_by_attention():
    forward = headed_tiny()
    reparam = reparametrise(forward, BACKBONE, 0.5)
    attention = np.linspace(1, 2, 16) / np.linspace(1, 2, 16).sum()
    alpha = 3.0
    model = add_objective(reparam.model, Objective(delta=alpha, attention={"r2": attention.tolist()}), reparam)
    x, y = noise(4)
    only_ce = run_model(add_objective(forward, Objective()), {"input": x, "labels": y})[0]
    assert run_model(model, {"input": x, "labels": y})[0] == pytest.approx(only_ce, rel=1e-6)

    rng = np.random.default_rng(1)
    offsets = {p: rng.standard_normal(t.dims).astype(np.float32) * 0.1 for p, t in
               ((p, next(t for t in forward.graph.initializer if t.name == p)) for p in BACKBONE)}
    for t in model.graph.initializer:
        if t.name.endswith("/delta"):
            t.CopyFrom(numpy_helper.from_array(offsets[t.name.removesuffix("/delta")], t.name))
    moved_model = forward.__class__()
    moved_model.CopyFrom(forward)
    for t in moved_model.graph.initializer:
        if t.name in offsets:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 0.5 * offsets[t.name], t.name))
    moved_model.graph.output.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
    forward.graph.output.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
    (logits, fm), fm0 = run_model(moved_model, x, ["logits", "r2"]), run_model(forward, x, ["r2"])[0]
    ce = run_model(add_objective(logits_model(3), Objective()), {"x": logits, "labels": y})[0]
    per_channel = ((fm - fm0) ** 2).mean(axis=(2, 3))
    expected = ce + alpha / 2 * (per_channel * 16 * attention).sum(1).mean()
    assert expected > ce + 1e-3
    assert run_model(model, {"input": x, "labels": y})[0] == pytest.approx(expected, rel=1e-4)


def test_channel_attention_gives_a_dead_channel_the_least_weight():
    model = headed_tiny()
    dead = {"conv1.bias": 2, "conv2.bias": 5}  # these channels are always 0 after their ReLU
    for t in model.graph.initializer:
        if t.name in dead:
            bias = numpy_helper.to_array(t).copy()
            bias[dead[t.name]] = -1e4
            t.CopyFrom(numpy_helper.from_array(bias, t.name))
    x, y = noise(24, seed=2)
    assert delta_layers(model, None, BACKBONE) == ["r2"]  # the feature map the head pools
    layers = delta_layers(model, ["/relu1/Relu", "r2"], BACKBONE)
    attention = channel_attention(model, layers, ArrayBatches(x, y, 8))  # r1 runs conv2, relu2 and the pool
    for layer, channel in (("r1", 2), ("r2", 5)):
        weights = np.array(attention[layer])
        assert weights.sum() == pytest.approx(1.0) and len(weights) == {"r1": 8, "r2": 16}[layer]
        assert weights.argmin() == channel and weights[channel] < 1 / len(weights) < weights.max(), layer
    with pytest.raises(Exception, match="no trainable backbone parameter comes before it"):
        delta_layers(model, ["/relu1/Relu"], ["conv2.weight"])


def finetune(tiny: Path, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return finetune_tiny(tiny, data, out, "--batch-size", 8, "--lr", 0.02, "--epochs", 2, *extra)


EVERYTHING = ("--backbone-lr-mult", 0.1, "--l2sp", 0.01, "--label-smoothing", 0.1, "--class-weights", "auto",
              "--patience", 5, "--augment", "strong", "--delta", 0.1)


@pytest.mark.parametrize("freeze, extra, cached", [
    ("backbone", ("--cache-views", 2), True),
    ("until:/relu1/Relu", ("--cache-views", 2), True),
    ("none", (), False),
])
def test_every_strategy_at_once_exports_the_users_graph(tiny_path, colours, tmp_path, freeze, extra, cached):
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "default", "--freeze", freeze)
    assert code == 0, stderr
    code, _, stderr = finetune(tiny_path, colours, tmp_path / "all", "--freeze", freeze, *EVERYTHING, *extra)
    assert code == 0, stderr
    record = json.loads((tmp_path / "all" / "config.json").read_text())
    assert (record["cache"] is not None) == cached and record["augment"] == "strong"
    assert record["class_weights"] == [1.0, 1.0, 1.0]
    assert ("no effect" in stderr) == (freeze == "backbone")
    manifest = json.loads((tmp_path / "all" / "artifacts" / "ftonnx.json").read_text())
    assert bool(manifest["reparametrised"]) == (freeze != "backbone")
    ours, theirs = (onnx.load(str(tmp_path / run / "model.onnx")) for run in ("all", "default"))
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert [(t.name, t.dims) for t in ours.graph.initializer] == [(t.name, t.dims) for t in theirs.graph.initializer]
    assert [i.name for i in ours.graph.input] == ["input"]
    changed = [t.name for t, u in zip(ours.graph.initializer, theirs.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(u))]
    assert set(HEAD) <= set(changed)
    assert metadata.read(ours).labels == metadata.read(theirs).labels


def feature_map_shift(run: Path, tiny: Path, colours: Path) -> float:
    """Mean squared difference of the pooled feature map r2 between the exported and the pretrained model."""
    from ftonnx.data import Loader, discover

    _, val = discover(str(colours))
    (x, _), = Loader(val, metadata.read(onnx.load(str(tiny))).preprocess, batch_size=99).epoch(0)
    maps = []
    for path in (run / "model.onnx", tiny):
        model = onnx.load(str(path))
        model.graph.output.append(helper.make_tensor_value_info("r2", TensorProto.FLOAT, None))
        maps.append(run_model(model, x, ["r2"])[0])
    return float(((maps[0] - maps[1]) ** 2).mean())


def test_delta_keeps_the_feature_map_near_the_pretrained_one_with_a_full_finetune(tiny_path, colours, tmp_path):
    shifts = {}
    for name, extra in (("plain", ()), ("delta", ("--delta", 30))):
        code, _, stderr = finetune(tiny_path, colours, tmp_path / name, "--freeze", "none", "--lr", 0.05,
                                   "--epochs", 4, *extra)
        assert code == 0, stderr
        shifts[name] = feature_map_shift(tmp_path / name, tiny_path, colours)
    assert "DELTA: channel attention of r2 measured on 24 images" in stderr
    assert shifts["delta"] < 0.3 * shifts["plain"]
