"""On-device training artifacts, run as a device would with ONNX Runtime's training API: load the
checkpoint, train the head on a few hymenoptera images, save and reload the checkpoint, export an
inference model; on EfficientNet-Lite0 with a new 2-class head."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ftonnx import metadata
from ftonnx.data import Loader, discover
from ftonnx.errors import FtonnxError
from ftonnx.export.inference import add_probabilities
from ftonnx.export.ondevice import build_on_device
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head

from helpers import build_tiny_model


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def test_device_loop_trains_the_head_and_exports(zoo_model_path: Path, hymenoptera: Path, tmp_path: Path) -> None:
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    model = add_probabilities(add_head(cut(load(zoo_model_path), "auto"), 2, labels=["ants", "bees"]))
    head = metadata.read(model).head_params
    folder = build_on_device(model, tmp_path / "on_device", ort_format=True).folder
    for stem in ("training_model", "eval_model", "optimizer_model"):
        assert (folder / f"{stem}.onnx").is_file() and (folder / f"{stem}.ort").is_file()
    train, _ = discover(str(hymenoptera))
    few = dataclasses.replace(train, samples=train.samples[:4] + train.samples[-4:])
    x, y = next(Loader(few, metadata.read(model).preprocess, batch_size=8).epoch(0))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    start_logits = session.run(["logits"], {"input": x})[0]

    state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))  # the mobile (ORT format) models
    assert {n for n, p in state.parameters if p.requires_grad} == set(head)
    module = Module(str(folder / "training_model.ort"), state, str(folder / "eval_model.ort"), device="cpu")
    optimizer = Optimizer(str(folder / "optimizer_model.ort"), module)
    optimizer.set_learning_rate(0.01)
    module.train()
    losses = []
    for _ in range(5):
        loss = module(x, y)[0]
        optimizer.step()
        module.lazy_reset_grad()
        losses.append(float(loss))
    assert losses[0] == pytest.approx(cross_entropy(start_logits, y), abs=1e-4)  # the loss is CE on logits
    assert losses[-1] < losses[0] - 0.05 and losses == sorted(losses, reverse=True)
    CheckpointState.save_checkpoint(state, str(tmp_path / "trained"))

    reloaded = Module(str(folder / "training_model.onnx"), CheckpointState.load_checkpoint(str(tmp_path / "trained")),
                      str(folder / "eval_model.onnx"), device="cpu")
    reloaded.eval()
    eval_loss, eval_logits = reloaded(x, y)
    assert float(eval_loss) < losses[-1]  # the state after the last step, reloaded
    exported = tmp_path / "personalised.onnx"
    reloaded.export_model_for_inferencing(str(exported), ["logits"])
    personalised = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(personalised.run(["logits"], {"input": x})[0], eval_logits, rtol=0, atol=1e-5)
    assert metadata.read(onnx.load(str(exported))).labels == ["ants", "bees"]


def test_on_device_needs_head_parameters(tmp_path: Path) -> None:
    with pytest.raises(FtonnxError, match="no head parameters"):
        build_on_device(add_probabilities(build_tiny_model(num_classes=2)), tmp_path / "on_device")
    assert not (tmp_path / "on_device").exists()


def _device_training(folder: Path, inputs: list[np.ndarray], y: np.ndarray, val_inputs: list[np.ndarray],
                     val_y: np.ndarray, *, epochs: int, batch: int,
                     suffix: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Train with ONNX Runtime's training API as an app would: (val logits, the trained head weight, the
    median step in ms)."""
    import time

    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    state = CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    module = Module(str(folder / f"training_model{suffix}"), state, str(folder / f"eval_model{suffix}"), device="cpu")
    optimizer = Optimizer(str(folder / f"optimizer_model{suffix}"), module)
    optimizer.set_learning_rate(0.01)
    times = []
    for epoch in range(epochs):
        module.train()
        order = np.random.default_rng(epoch).permutation(len(y))
        for start in range(0, len(y), batch):
            pick = order[start:start + batch]
            began = time.perf_counter()
            module(*[x[pick] for x in inputs], y[pick])
            optimizer.step()
            module.lazy_reset_grad()
            times.append(1000 * (time.perf_counter() - began))
    module.eval()
    return module(*val_inputs, val_y)[1], state.parameters["head.fc.weight"].data, float(np.median(times))


def test_head_only_artifacts_train_like_the_whole_graph_at_a_fraction_of_the_cost(
        zoo_model_path: Path, hymenoptera: Path, tmp_path: Path) -> None:
    import json

    from ftonnx.export.ondevice import build_on_device_head, features_of

    model = add_probabilities(add_head(cut(load(zoo_model_path), "auto"), 2, labels=["ants", "bees"]))
    whole = build_on_device(model, tmp_path / "on_device").folder
    head = build_on_device_head(model, tmp_path / "on_device_head", ort_format=True).folder
    manifest = json.loads((head / "ftonnx.json").read_text())
    assert manifest["features"] == "features.onnx" and manifest["trainable"] == metadata.read(model).head_params
    assert {"features.onnx", "features.ort", "training_model.ort", "eval_model.ort", "checkpoint"} <= \
        {p.name for p in head.iterdir()}
    pre = metadata.read(model).preprocess
    train, val = discover(str(hymenoptera))
    x, y = (np.concatenate(a) for a in zip(*Loader(dataclasses.replace(
        train, samples=train.samples[:12] + train.samples[-12:]), pre, batch_size=24).epoch(0)))
    vx, vy = next(Loader(dataclasses.replace(val, samples=val.samples[:10] + val.samples[-10:]), pre,
                         batch_size=20).epoch(0))
    features, val_features = features_of(head, x)[0], features_of(head, vx)[0]
    assert list(features) == manifest["feature_inputs"] == ["head.flat"]  # what the head's Gemm reads

    whole_logits, whole_w, whole_ms = _device_training(whole, [x], y, [vx], vy, epochs=3, batch=8, suffix=".onnx")
    head_logits, head_w, head_ms = _device_training(head, list(features.values()), y, list(val_features.values()),
                                                    vy, epochs=3, batch=8, suffix=".ort")
    print(f"on-device step, batch 8: whole graph {whole_ms:.1f} ms, head on stored features {head_ms:.3f} ms "
          f"({whole_ms / head_ms:.0f}x)")
    np.testing.assert_allclose(head_w, whole_w, rtol=0, atol=1e-4)  # the same training steps
    np.testing.assert_allclose(head_logits, whole_logits, rtol=0, atol=1e-3)
    top1 = [float((logits.argmax(axis=1) == vy).mean()) for logits in (whole_logits, head_logits)]
    assert top1[0] == top1[1] >= 0.75  # the same accuracy after the same epochs
    assert head_ms < whole_ms / 10  # the benchmark measures the ratio; here only that it is large
