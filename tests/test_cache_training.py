"""Training on cached activations: the export (prefix and trained suffix) equals the suffix on the cache,
a spilled cache trains the same, the cache trains what the whole graph does, skip connections, views, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ftonnx import metadata, pipeline
from ftonnx.data import Loader, discover
from ftonnx.evaluate import evaluate
from ftonnx.export.inference import with_weights
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.graph.split import split
from ftonnx.train.cache import ActivationCache, plan
from ftonnx.train.loop import best_weights

from helpers import COLOURS, build_tiny_model, cli, interrupt_cached_training, skip_model

NODE = "/pool/GlobalAveragePool"
HEAD = ["head.fc.weight", "head.fc.bias"]

COLOUR_IMAGES = (12, 6)  # per class, train and val (the `colours` fixture)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model, and the skip-connection model with preprocessing for 16x16 images."""
    folder = tmp_path_factory.mktemp("models")
    skip = metadata.update(skip_model(), preprocess=metadata.Preprocess(size=(16, 16), resize=20).to_json())
    for name, model in (("tiny", build_tiny_model()), ("skip", skip)):
        onnx.save(model, str(folder / f"{name}.onnx"))
    return {"tiny": folder / "tiny.onnx", "skip": folder / "skip.onnx"}


def finetune(model: Path, data: Path, out: Path, *extra: object, node: str = NODE) -> tuple[int, str, str]:
    return cli("finetune", model, "--node", node, "--data", data, "--out", out, "--batch-size", 8, "--lr", 0.1,
               "--epochs", 5, *extra)


def config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def metrics(run: Path) -> list[tuple[float, float, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["train_loss"], r["val_loss"], r["val_top1"]) for r in lines]


def weights(run: Path, prefix: str = "") -> dict[str, np.ndarray]:
    model = onnx.load(str(run / "model.onnx"))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith(prefix)}


@pytest.fixture(scope="module")
def cached_run(models: dict[str, Path], colours: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A default finetune of the tiny model's head: cached, in memory."""
    run = tmp_path_factory.mktemp("cached") / "run"
    code, _, stderr = finetune(models["tiny"], colours, run)
    assert code == 0, stderr
    return run, stderr


def test_cached_export_joins_prefix_and_trained_suffix_and_equals_the_suffix_on_the_cache(cached_run, models, colours):
    run, stderr = cached_run
    assert "activation cache: frozen prefix computed once for 36+18 images (boundary: head.flat)" in stderr
    cache = config(run)["cache"]
    assert cache.pop("feature_rms") > 0
    assert cache.pop("seconds") > 0
    assert cache == {"boundary": ["head.flat"], "views": 1, "on_disk": False, "bytes": 54 * 16 * 4}
    assert config(run)["augment_used"] is False and not (run / "cache").exists()
    exported = onnx.load(str(run / "model.onnx"))
    onnx.checker.check_model(exported, full_check=True)
    assert [i.name for i in exported.graph.input] == ["input"]
    assert [o.name for o in exported.graph.output] == ["logits", "probabilities"]
    assert [(o.domain, o.version) for o in exported.opset_import] == [("", 17)]  # ORT's quantizer needs one
    meta = metadata.read(exported)
    assert meta.labels == sorted(COLOURS) and meta.head_params == HEAD and "boundary" not in meta.extra
    assert meta.preprocess == metadata.read(build_tiny_model()).preprocess and "trained" in meta.extra

    # the model the run trained, split where the run split it; the suffix gets the best checkpoint's weights
    _, val = discover(str(colours))
    model = add_head(cut(load(models["tiny"]), NODE), 3, labels=sorted(COLOURS))
    prefix, suffix = split(model, ["head.flat"])
    suffix = with_weights(suffix, best_weights(run, HEAD))
    acts = ActivationCache.build(prefix, val, batch_size=8)
    on_cache = ort.InferenceSession(suffix.SerializeToString()).run(["logits"], dict(acts.arrays))[0]
    (x, y), = Loader(val, meta.preprocess, batch_size=len(val.samples)).epoch(0)
    on_images = ort.InferenceSession(exported.SerializeToString()).run(["logits"], {"input": x})[0]
    np.testing.assert_array_equal(acts.labels, y)
    np.testing.assert_allclose(on_images, on_cache, rtol=0, atol=1e-5)

    best = max(json.loads(line)["val_top1"] for line in (run / "metrics.jsonl").read_text().splitlines())
    result = evaluate(run / "model.onnx", val)
    assert result["top1"] == best >= 0.8


def test_activations_beyond_cache_mem_spill_to_run_cache_and_train_the_same(cached_run, models, colours, tmp_path,
                                                                             monkeypatch):
    reference, _ = cached_run
    run = tmp_path / "spilled"
    seen: list[list[Path]] = []
    train_loop = pipeline.train_loop

    def spying(*args, **kwargs):
        seen.append(sorted((run / "cache").glob("*.npy")))
        return train_loop(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_loop", spying)
    code, _, stderr = finetune(models["tiny"], colours, run, "--cache-mem", "1000")
    assert code == 0, stderr
    assert len(seen) == 1 and len(seen[0]) == 2  # train and val activations, both beyond 1000 bytes
    assert f"spilled to {run / 'cache'}" in stderr
    assert config(run)["cache"]["on_disk"] is True and not (run / "cache").exists()
    assert metrics(run) == metrics(reference)
    ours, theirs = weights(run, "head."), weights(reference, "head.")
    assert ours.keys() == theirs.keys() == set(HEAD)
    for name in HEAD:
        np.testing.assert_array_equal(ours[name], theirs[name])


def test_cached_and_uncached_runs_train_the_same_function(cached_run, models, colours, tmp_path):
    reference, _ = cached_run
    run = tmp_path / "uncached"
    code, _, stderr = finetune(models["tiny"], colours, run, "--no-cache")
    assert code == 0, stderr
    assert "no activation cache: --no-cache given" in stderr
    assert config(run)["cache"] is None and config(run)["no_cache_reason"] == "--no-cache given"
    for ours, theirs in zip(metrics(run), metrics(reference), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    ours, theirs = weights(run, "head."), weights(reference, "head.")
    for name in HEAD:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-5)
    graphs = [onnx.load(str(r / "model.onnx")).graph for r in (run, reference)]
    assert [n.SerializeToString() for n in graphs[0].node] == [n.SerializeToString() for n in graphs[1].node]
    assert [t.name for t in graphs[0].initializer] == [t.name for t in graphs[1].initializer]


def test_freeze_until_a_cut_across_a_skip_connection_trains_cached_as_uncached(models, colours, tmp_path):
    runs = {}
    for name, extra in (("cached", ()), ("uncached", ("--no-cache",))):
        runs[name] = tmp_path / name
        code, _, stderr = finetune(models["skip"], colours, runs[name], "--freeze", "until:relu2", "--no-augment",
                                   *extra, node="pool")
        assert code == 0, stderr
    assert config(runs["cached"])["cache"]["boundary"] == ["r1", "r2"]
    ours, theirs = weights(runs["cached"]), weights(runs["uncached"])
    trained = ["conv3.weight", *HEAD]
    for name in trained:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-5)
    for name in ("conv1.weight", "conv2.weight"):
        np.testing.assert_array_equal(ours[name], onnx.numpy_helper.to_array(
            next(t for t in onnx.load(str(models["skip"])).graph.initializer if t.name == name)))
    assert [r[2] for r in metrics(runs["cached"])] == [r[2] for r in metrics(runs["uncached"])]


def test_cache_views_cache_augmented_views(models, colours, tmp_path):
    run = tmp_path / "views"
    code, _, stderr = finetune(models["tiny"], colours, run, "--cache-views", "2")
    assert code == 0, stderr
    assert "computed once for 36x2 augmented views+18 images" in stderr
    assert config(run)["cache"]["views"] == 2 and config(run)["augment_used"] is True
    onnx.checker.check_model(onnx.load(str(run / "model.onnx")), full_check=True)
    assert max(r[2] for r in metrics(run)) >= 0.8


def test_an_interrupted_cached_run_resumes_to_the_uninterrupted_model(cached_run, models, colours, tmp_path,
                                                                      monkeypatch):
    reference, _ = cached_run
    run = tmp_path / "interrupted"
    interrupt_cached_training(monkeypatch, 1)
    assert finetune(models["tiny"], colours, run)[0] == 130
    assert json.loads((run / "checkpoints" / "last.json").read_text())["epoch"] == 1
    monkeypatch.undo()
    code, _, stderr = finetune(models["tiny"], colours, run, "--resume")
    assert code == 0, stderr
    assert "activation cache: frozen prefix" in stderr and "resuming" in stderr
    assert (run / "model.onnx").read_bytes() == (reference / "model.onnx").read_bytes()


def test_the_plan_says_why_it_does_not_cache(tiny_model):
    model = add_head(cut(tiny_model, NODE), 3)
    assert plan(model, HEAD) == (["head.flat"], "")
    assert plan(model, HEAD, augment=True) == (
        [], "augmentation is on (--no-augment, or --cache-views K to cache K augmented views per image)")
    assert plan(model, HEAD, augment=True, views=2) == (["head.flat"], "")
    assert plan(model, HEAD, enabled=False) == ([], "--no-cache given")
    cut_at, why = plan(model, ["conv1.weight", *HEAD])
    assert cut_at == [] and why.startswith("not a prefix: node '/conv1/Conv'")


@pytest.mark.parametrize("extra, message", [
    (("--cache-views", 2, "--no-cache"), "--cache-views caches augmented views, which --no-cache turns off"),
    (("--cache-views", 2, "--no-augment"), "--cache-views caches augmented views, which --no-augment (--augment none)"),
    (("--augment", "strong", "--no-augment"), "--no-augment contradicts --augment strong"),
    (("--cache-views", 2, "--freeze", "none"), "--cache-views needs a frozen prefix, but the freeze is not a prefix"),
    (("--cache-mem", "lots"), "'--cache-mem': 'lots' is not a size; give one such as 512M or 2G"),
])
def test_bad_cache_options_fail_cleanly(models, colours, tmp_path, extra, message):
    code, _, stderr = finetune(models["tiny"], colours, tmp_path / "run", *extra)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not (tmp_path / "run").exists()
