"""`ftonnx export`: int8, fp16 and ORT-format variants keep the metadata and the outputs they promise,
the report measures what it says, bad input exits 2 leaving nothing behind, and on EfficientNet-Lite0
finetuned on hymenoptera the sizes and accuracies meet the issue's bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from ftonnx import metadata
from ftonnx.cli import main
from ftonnx.data import Loader, discover
from ftonnx.evaluate import evaluate
from ftonnx.export.edge import export_run
from ftonnx.export.inference import add_probabilities

from helpers import LABELS, build_tiny_model, fails_cleanly, make_run, run_model, write_lists

VARIANTS = ["float", "int8", "fp16", "float.ort", "int8.ort", "fp16.ort"]


@pytest.fixture
def tiny_run(tmp_path: Path, hymenoptera: Path) -> Path:
    """The tiny model with a 2-class head, trained on nothing, and 8 + 8 hymenoptera images."""
    model = add_probabilities(build_tiny_model(num_classes=2))
    metadata.update(model, labels=LABELS, head_params=["fc.weight", "fc.bias"],
                    backbone_params=["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"])
    return make_run(tmp_path / "run", model, write_lists(tmp_path, hymenoptera, 4))


def val_batch(run: Path) -> np.ndarray:
    model = onnx.load(str(run / "model.onnx"))
    _, val = discover(**json.loads((run / "config.json").read_text())["data_args"])
    return next(Loader(val, metadata.read(model).preprocess, batch_size=64).epoch(0))[0]




def test_cli_export_writes_every_variant(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(tiny_run), "-o", str(out), "--int8", "--fp16", "--ort",
                                       "--calib-count", "6"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == VARIANTS
    for name in VARIANTS:
        assert any(line.split()[:1] == [name] for line in result.stdout.splitlines()), result.stdout
    assert report["calibration_images"] == 6 and report["val_images"] == 8 and report["threads"] == 1
    files = {v["name"]: out / v["file"] for v in report["variants"]}
    assert files["float"].read_bytes() == (tiny_run / "model.onnx").read_bytes()
    for row in report["variants"]:
        assert row["bytes"] == files[row["name"]].stat().st_size and row["latency_ms"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the staging folder is gone

    source = onnx.load(str(tiny_run / "model.onnx"))
    props = {p.key: p.value for p in source.metadata_props}
    for name, path in files.items():  # every variant keeps labels and preprocessing
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        assert meta.custom_metadata_map == props, name
        if path.suffix == ".onnx":
            assert metadata.read(onnx.load(str(path))).preprocess == metadata.read(source).preprocess

    int8 = onnx.load(str(files["int8"]))
    inits = {t.name: t for t in int8.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in int8.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] == "conv2.weight_quantized"]
    assert weight_scales and list(weight_scales[0].dims) == [16]  # per-channel: one scale per output channel
    softmax = next(n for n in int8.graph.node if n.op_type == "Softmax")
    assert softmax.output[0] == "probabilities"  # computed in float, not requantised

    fp16 = onnx.load(str(files["fp16"]))
    assert {t.data_type for t in fp16.graph.initializer if t.name.startswith(("conv", "fc"))} == {
        onnx.TensorProto.FLOAT16}
    assert {v.type.tensor_type.elem_type for v in [*fp16.graph.input, *fp16.graph.output]} == {
        onnx.TensorProto.FLOAT}

    x = val_batch(tiny_run)
    reference = run_model(files["float"], x)[1]
    for name in ("float", "int8", "fp16"):  # each .ort gives its ONNX twin's outputs
        for a, b in zip(run_model(files[name], x), run_model(files[f"{name}.ort"], x)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    rows = {r["name"]: r for r in report["variants"]}
    for name in VARIANTS:  # the report's probability differences are the measured ones
        expected = np.abs(run_model(files[name], x)[1] - reference).max()
        assert rows[name]["max_prob_diff"] == pytest.approx(expected, abs=1e-7)
    assert rows["float"]["max_prob_diff"] == 0 and rows["fp16"]["max_prob_diff"] < 2e-3
    _, val = discover(**json.loads((tiny_run / "config.json").read_text())["data_args"])
    for name in VARIANTS:  # top-1 as the evaluation stage counts it
        assert rows[name]["top1"] == evaluate(files[name], val)["top1"]


def test_export_replaces_earlier_output_and_reports_without_variants(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_run(tiny_run, out, int8=True, calib_count=4, runs=2)
    report = export_run(tiny_run, out, runs=2)
    assert [v["name"] for v in report["variants"]] == ["float"]
    assert report["calibration_images"] == 0 and report["on_device"] is None
    assert json.loads((out / "report.json").read_text()) == report


def _break(run: Path, tmp_path: Path, case: str) -> list[str]:
    """Damage `run` as `case` says; returns the CLI arguments to try."""
    out = str(tmp_path / "out")
    if case == "no run folder":
        return ["export", str(tmp_path / "nothing"), "-o", out]
    if case == "no model.onnx":
        (run / "model.onnx").unlink()
    elif case == "garbage model":
        (run / "model.onnx").write_text("not a model")
    elif case == "no config":
        (run / "config.json").unlink()
    elif case == "config without data_args":
        (run / "config.json").write_text("{}")
    elif case == "config not json":
        (run / "config.json").write_text("{")
    elif case == "no probabilities":
        onnx.save(build_tiny_model(num_classes=2), str(run / "model.onnx"))
    elif case == "unknown data_args":
        (run / "config.json").write_text(json.dumps({"data_args": {"data": "x", "colour": "blue"}}))
    elif case == "data gone":
        (run / "config.json").write_text(json.dumps({"data_args": {"data": str(tmp_path / "gone")}}))
    elif case == "output is a file":
        (tmp_path / "out").write_text("")
    elif case == "output parent missing":
        return ["export", str(run), "-o", str(tmp_path / "a" / "b"), "--int8"]
    return ["export", str(run), "-o", out, "--int8", "--fp16", "--ort"]


@pytest.mark.parametrize("case", ["no run folder", "no model.onnx", "garbage model", "no config",
                                  "config without data_args", "config not json", "no probabilities",
                                  "unknown data_args", "data gone", "output is a file", "output parent missing"])
def test_bad_input_exits_2_and_writes_nothing(tiny_run: Path, tmp_path: Path, case: str) -> None:
    args = _break(tiny_run, tmp_path, case)
    fails_cleanly(args, tmp_path)


def test_calib_below_one_is_a_usage_error(tiny_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tiny_run), "-o", str(tmp_path / "out"), "--int8",
                                       "--calib-count", "0"])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def lite0_run(zoo_model_path: Path, hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0's new head finetuned on hymenoptera with the defaults (5 epochs), once."""
    from ftonnx.pipeline import data_args, finetune
    from ftonnx.train.config import TrainConfig

    run = tmp_path_factory.mktemp("lite0") / "run"
    finetune(zoo_model_path, "auto", data_args(str(hymenoptera)), run, TrainConfig())
    return run


@pytest.mark.slow
def test_lite0_finetuned_on_hymenoptera_meets_the_bar(lite0_run: Path, tmp_path: Path) -> None:
    """The issue's Done-when: int8 <= 30 % of the size and <= 1 point of val top-1 lost, fp16 <= 55 %
    and nothing lost, every .ort file gives its ONNX twin's outputs."""
    run = lite0_run
    report = export_run(run, tmp_path / "out", int8=True, fp16=True, ort=True, calib_count=64, runs=5)
    rows = {r["name"]: r for r in report["variants"]}
    assert report["val_images"] == 153 and rows["float"]["top1"] >= 0.93
    assert rows["int8"]["size_vs_float"] <= 0.30 and rows["int8"]["top1"] >= rows["float"]["top1"] - 0.01
    assert rows["fp16"]["size_vs_float"] <= 0.55 and rows["fp16"]["max_prob_diff"] < 5e-3
    assert rows["fp16"]["top1"] == rows["float"]["top1"]
    x = val_batch(run)[:16]
    for name in ("float", "int8", "fp16"):
        onnx_file, ort_file = (tmp_path / "out" / rows[n]["file"] for n in (name, f"{name}.ort"))
        for a, b in zip(run_model(onnx_file, x), run_model(ort_file, x)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
        assert rows[f"{name}.ort"]["top1"] == rows[name]["top1"]


@pytest.mark.slow
def test_lite0_static_forms_give_nnapi_every_node_and_pixels_give_the_float_outputs(lite0_run: Path,
                                                                                   tmp_path: Path) -> None:
    """Issue 10 on the real model: NNAPI and CoreML take nothing of the dynamic export and every node of the
    fixed-shape one (CoreML's ML Program all but the Softmax), and the pixel variant fed decoded images
    gives the float model's logits on the val set within 1e-5."""
    from ftonnx.data.images import to_array

    out = tmp_path / "out"
    report = export_run(lite0_run, out, static=True, pixels=True, runs=2)
    mobile = {r["name"]: r["mobile"] for r in report["variants"]}
    assert mobile["float"]["nnapi"]["share"] == 0 and mobile["float"]["coreml_mlprogram"]["share"] == 0
    for name in ("float.static", "float.pixels.static"):
        assert mobile[name]["nnapi"]["share"] == 1 and mobile[name]["coreml"]["share"] == 1
    assert mobile["float.static"]["coreml_mlprogram"]["unsupported"] == {"operator ai.onnx:Softmax": 1}
    model = onnx.load(str(out / "model.onnx"))
    preprocess = metadata.read(model).preprocess
    _, val = discover(**json.loads((lite0_run / "config.json").read_text())["data_args"])
    for pixels, _ in Loader(val, preprocess, batch_size=64, pixels=True).epoch(0):
        x = np.stack([to_array(p, preprocess) for p in pixels])
        for a, b in zip(run_model(model, x), run_model(out / "model.pixels.onnx", pixels)):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
