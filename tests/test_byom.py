"""Bring your own model: raw ONNX files from other exporters, with no ftonnx metadata, go the whole way with
command-line flags only (inspect, finetune, eval, predict, export --int8), including the graph features
real exporters leave that once broke training or export."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import onnx
import pytest

import exporters
from helpers import cli

pytestmark = pytest.mark.slow

COLOUR_IMAGES = (10, 4)  # per class, train and val (the `colours` fixture)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw models, one per route available here, written as files a user would receive."""
    folder = tmp_path_factory.mktemp("raw")
    builders = {"torchscript_11": lambda: exporters.torchscript(11),
                "torchscript_17": lambda: exporters.torchscript(17), "dynamo": exporters.dynamo,
                "constants": lambda: exporters.strip(exporters.constant_weights()),
                "nhwc": lambda: exporters.strip(exporters.tf_style())}
    builders.update({kind: (lambda k=kind: exporters.feature_model(k)) for kind in
                     ("keras_pool", "grayscale", "batch_one", "fully_conv", "dequantized")})
    paths = {}
    for name, build in builders.items():
        model = build()
        assert not model.metadata_props, name
        onnx.save(model, str(folder / f"{name}.onnx"))
        paths[name] = folder / f"{name}.onnx"
    return paths


def run_ok(*args: object) -> str:
    code, stdout, stderr = cli(*args)
    assert code == 0, f"{args[0]}: {stderr}"
    return stdout


@pytest.mark.parametrize("route", ["torchscript_11", "torchscript_17", "dynamo", "constants", "nhwc"])
def test_a_raw_model_goes_the_whole_way_with_flags_only(route: str, models: dict[str, Path], colours: Path,
                                                        tmp_path: Path) -> None:
    model, run = models[route], tmp_path / "run"
    summary = run_ok("inspect", model)
    assert "mean          -" in summary and "(missing)" in summary and "--preprocess" in summary
    run_ok("finetune", model, "--node", "auto", "--preprocess", "imagenet", "--size", 32, "--data", colours,
           "--out", run, "--epochs", 2, "--batch-size", 8)
    assert json.loads((run / "config.json").read_text())["source"]["preprocess"]["mean"] == [123.675, 116.28, 103.53]
    assert "top1" in run_ok("eval", run / "model.onnx", "--data", colours)
    run_ok("predict", run / "model.onnx", colours / "val", "--top", 1, "--csv", tmp_path / "predictions.csv")
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"blue", "green", "red"}
    run_ok("export", run, "-o", tmp_path / "edge", "--int8")
    report = json.loads((tmp_path / "edge" / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["float", "int8"]


@pytest.mark.parametrize("kind, freezes", [
    ("keras_pool", ["backbone", "none"]),  # AveragePool over a static window, dynamic batch: crashed ORT (SIGFPE)
    ("grayscale", ["backbone", "none"]),  # one input channel: a traceback
    ("batch_one", ["backbone", "none"]),  # batch fixed at 1: the cache's batches of 64 failed
    ("dequantized", ["backbone", "none"]),  # int8 weights behind DequantizeLinear: constant folding died
    ("fully_conv", ["backbone"]),  # class scores by a Conv before the pooling: --node auto trained on 7 scores
])
def test_features_real_exporters_leave_train_and_quantise(kind: str, freezes: list[str], models: dict[str, Path],
                                                         colours: Path, tmp_path: Path) -> None:
    for freeze in freezes:
        run = tmp_path / freeze
        run_ok("finetune", models[kind], "--node", "auto", "--preprocess", "unit", "--data", colours, "--out", run,
               "--epochs", 2, "--batch-size", 8, "--freeze", freeze)
        run_ok("export", run, "-o", tmp_path / f"{freeze}-edge", "--int8")
        assert (tmp_path / f"{freeze}-edge" / "model.int8.onnx").is_file()


def test_grayscale_comes_from_the_input_shape(models: dict[str, Path], colours: Path, tmp_path: Path) -> None:
    assert "GRAY" in run_ok("inspect", models["grayscale"])
    run_ok("finetune", models["grayscale"], "--preprocess", "unit", "--data", colours, "--out", tmp_path / "run",
           "--epochs", 1)
    pre = json.loads((tmp_path / "run" / "config.json").read_text())["source"]["preprocess"]
    assert pre["channel_order"] == "GRAY" and pre["mean"] == [0.0] and pre["std"] == [255.0]


def test_a_fully_convolutional_classifier_is_cut_before_its_class_scores(models: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    out = run_ok("cut", models["fully_conv"], "--node", "auto", "-o", tmp_path / "features.onnx")
    assert "(batch, 16, 8, 8)" in out  # the map the class-score Conv reads, not its 7 scores
    head = onnx.load(str(tmp_path / "head.onnx")) if run_ok(
        "head", tmp_path / "features.onnx", "--classes", 3, "-o", tmp_path / "head.onnx") else None
    weight = next(t for t in head.graph.initializer if t.name == "head.fc.weight")
    assert list(weight.dims) == [3, 16]
    assert [n.op_type for n in head.graph.node][-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_a_fixed_batch_of_one_is_made_dynamic(models: dict[str, Path]) -> None:
    summary = json.loads(run_ok("inspect", models["batch_one"], "--json"))
    assert summary["inputs"][0]["shape"][0] == "batch"
    assert "made the batch dimension dynamic (it was fixed at 1)" in summary["normalize"]


@pytest.mark.parametrize("args, message", [
    (("--preprocess", "sepia"), "Invalid value for '--preprocess'"),
    (("--mean", "1,2"), "--mean takes one value or three (one per channel), not 2"),
    (("--mean", "0.5,128,0.5"), "mixes 0-1 and 0-255 units"),
    (("--std", "1"), "--std 1 is ambiguous"),
    (("--size", "64"), "--size 64,64 contradicts the model's input 'input' (?, 3, 32, 32)"),
    (("--gray",), "--gray contradicts the model's input"),
    (("--bgr", "--gray"), "--bgr and --gray contradict each other"),
])
def test_bad_preprocessing_values_are_one_line_and_write_nothing(args: tuple, message: str, models: dict[str, Path],
                                                                  colours: Path, tmp_path: Path) -> None:
    code, stdout, stderr = cli("finetune", models["keras_pool"], "--preprocess", "imagenet", "--data", colours,
                               "--out", tmp_path / "run", *args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ftonnx: error: ") and message in lines[0], stderr
    assert not (tmp_path / "run").exists()


def test_missing_preprocessing_and_auto_without_a_classifier_say_what_to_pass(models: dict[str, Path],
                                                                               colours: Path, tmp_path: Path) -> None:
    code, _, stderr = cli("finetune", models["torchscript_17"], "--data", colours, "--out", tmp_path / "run")
    assert code == 2 and "dynamic height and width" in stderr and "--size" in stderr
    code, _, stderr = cli("finetune", models["keras_pool"], "--data", colours, "--out", tmp_path / "run")
    assert code == 2 and "mean, std unknown" in stderr
    assert "--preprocess imagenet|inception|caffe|unit|raw|auto" in stderr
    run_ok("cut", models["keras_pool"], "--node", "auto", "-o", tmp_path / "features.onnx")
    code, _, stderr = cli("meta", tmp_path / "features.onnx", "-o", tmp_path / "out.onnx", "--preprocess", "auto",
                          "--data", colours)
    assert code == 2 and "classifier output" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "out.onnx").exists()


def test_meta_records_preprocessing_and_labels_once(models: dict[str, Path], colours: Path, tmp_path: Path) -> None:
    labelled = tmp_path / "labelled.onnx"
    run_ok("meta", models["keras_pool"], "-o", labelled, "--preprocess", "caffe",
           "--labels", ",".join(f"class {i}" for i in range(10)))
    summary = json.loads(run_ok("inspect", labelled, "--json"))
    assert summary["preprocess"]["channel_order"] == {"value": "BGR", "source": "metadata"}
    assert summary["metadata"]["num_classes"] == 10
    run_ok("finetune", labelled, "--data", colours, "--out", tmp_path / "run", "--epochs", 1)  # no flags needed now


@pytest.fixture(scope="module")
def zoo_raw(zoo_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The zoo model and the composites whose right preprocessing is known, as raw files."""
    folder = tmp_path_factory.mktemp("composites")
    zoo = onnx.load(str(zoo_model_path))
    paths = {}
    for name, model in {**exporters.zoo_composites(zoo), "small": exporters.small_features(zoo)}.items():
        onnx.save(model, str(folder / f"{name}.onnx"))
        paths[name] = folder / f"{name}.onnx"
    return paths


@pytest.mark.parametrize("composite, chosen, layout", [("inception", "inception (RGB)", "NCHW"),
                                                        ("imagenet", "imagenet (RGB)", "NCHW"),
                                                        ("bgr", "inception (BGR)", "NCHW"),
                                                        ("nhwc", "inception (RGB)", "NHWC")])
def test_auto_picks_the_known_right_preprocessing_and_trains_as_well(composite: str, chosen: str, layout: str,
                                                                     zoo_raw: dict[str, Path], hymenoptera: Path,
                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, stdout, stderr = cli("finetune", zoo_raw[composite], "--preprocess", "auto", "--data", hymenoptera,
                               "--out", run)
    assert code == 0, stderr
    assert f"--preprocess auto chose {chosen}:" in stderr
    assert json.loads((run / "config.json").read_text())["source"]["preprocess"]["layout"] == layout
    best = max(json.loads(line)["val_top1"] for line in (run / "metrics.jsonl").read_text().splitlines())
    assert best >= 0.93  # the zoo model with its true preprocessing reaches 0.9346 with these defaults


def test_a_head_on_small_features_trains_as_well_as_on_the_zoo_features(zoo_raw: dict[str, Path],
                                                                        hymenoptera: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, stderr = cli("finetune", zoo_raw["small"], "--node", "/scale/Mul", "--preprocess", "inception",
                          "--data", hymenoptera, "--out", run)
    assert code == 0, stderr
    assert re.search(r"head learning rate 0\.09\d+: the features' RMS is 0\.004\d+", stderr), stderr
    best = max(json.loads(line)["val_top1"] for line in (run / "metrics.jsonl").read_text().splitlines())
    assert best >= 0.93  # 0.80 at the unscaled default rate; the zoo's own features reach 0.9346


def test_any_model_file_exports_with_its_own_calibration_images(models: dict[str, Path], colours: Path,
                                                                 tmp_path: Path) -> None:
    """`export MODEL.onnx --int8 --calib DIR`: not a run folder; the dynamo graph also trips ORT's symbolic
    shape inference in the quantiser's pre-processing, which must fall back to onnx's."""
    run_ok("export", models["dynamo"], "-o", tmp_path / "edge", "--int8", "--calib", colours / "train",
           "--preprocess", "unit", "--size", 32)
    report = json.loads((tmp_path / "edge" / "report.json").read_text())
    assert report["calibration_images"] == 30 and report["model"] == str(models["dynamo"])
    assert [v["name"] for v in report["variants"]] == ["float", "int8"] and report["val_images"] == 0
    code, _, stderr = cli("export", models["keras_pool"], "-o", tmp_path / "other", "--int8", "--calib",
                          colours / "train", "--preprocess", "unit", "--data", colours)
    assert code == 2 and "no class labels to measure accuracy with" in stderr
    code, _, stderr = cli("export", models["keras_pool"], "-o", tmp_path / "other", "--int8", "--preprocess", "unit")
    assert code == 2 and "int8 needs calibration images: pass --calib DIR" in stderr
    assert not (tmp_path / "other").exists()
