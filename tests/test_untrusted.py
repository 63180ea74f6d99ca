"""Crafted models and metadata: a malformed node, malformed or contradicting metadata, absurd sizes. Every
command answers with one line and exit code 2; no native crash reaches the user, nothing hangs or grows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ftonnx import isolated, metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph import load

from helpers import build_tiny_model, write_image


def ftonnx_process(*args: object) -> subprocess.CompletedProcess:
    """The CLI as its own process, as a user runs it: a native crash would show as a negative exit code."""
    return subprocess.run([sys.executable, "-c", "from ftonnx.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, *parts: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftonnx: error: "), proc.stderr
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


def with_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def conv_on_flattened_input() -> onnx.ModelProto:
    """conv2 reads a Flatten's rank-2 output with its rank-4 weight: onnx's shape inference of that Conv
    crashes (SIGSEGV) and ONNX Runtime aborts, while every rank Python can see without inference is fine."""
    model = build_tiny_model()
    model.graph.node[1].op_type = "Flatten"
    return model


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """Two images in images/a/ and two in images/b/: data that gets as far as the model."""
    for i, name in enumerate(("b/image.png", "a/other.png", "b/other.png")):
        write_image(tmp_path / "images" / name, (40, 40), seed=i + 1)
    return write_image(tmp_path / "images" / "a" / "image.png", (40, 40))


@pytest.mark.parametrize("command", ["inspect", "cut", "head", "finetune", "predict", "eval"])
def test_a_conv_weight_of_the_wrong_rank_is_one_line_naming_the_node(tmp_path: Path, image: Path,
                                                                    command: str) -> None:
    """The issue's example: segfaults in onnx's shape inference, aborts in ONNX Runtime."""
    path = tmp_path / "bad.onnx"
    onnx.save(with_weight(build_tiny_model(), "conv1.weight", np.zeros((8, 3, 3))), str(path))
    args = {"inspect": [], "cut": ["--node", "auto", "-o", tmp_path / "out.onnx"],
            "head": ["--classes", 2, "-o", tmp_path / "out.onnx"],
            "finetune": ["--data", image.parent.parent, "--val-split", 0.5, "--out", tmp_path / "run"],
            "predict": [image], "eval": ["--data", image.parent.parent]}[command]
    one_error_line(ftonnx_process(command, path, *args), "node '/conv1/Conv' (Conv)",
                   "weight 'conv1.weight' has rank 3")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (lambda m: with_weight(m, "conv1.weight", np.zeros(8)), "weight 'conv1.weight' has rank 1"),
    (lambda m: with_weight(m, "fc.weight", np.zeros(160)), "input 'fc.weight' has rank 1; Gemm multiplies"),
    (lambda m: m.graph.node[0].attribute[1].ints.__setitem__(slice(None), [0, 0]) or m, "strides [0, 0]"),
    (lambda m: m.graph.node[0].attribute[0].ints.__setitem__(slice(None), [1, 1]) or m, "pads [1, 1] must hold 4"),
])
def test_ranks_and_windows_that_crash_native_code_are_caught_in_python(change, message) -> None:
    model = change(build_tiny_model())
    with pytest.raises(FtonnxError, match=r"node '/(conv1/Conv|fc/Gemm)'.*" + message.replace("[", r"\[")):
        from ftonnx.graph.normalize import normalize

        normalize(model)


def test_a_crash_python_cannot_foresee_is_isolated_and_the_node_named(tmp_path: Path, image: Path) -> None:
    path = tmp_path / "flattened.onnx"
    onnx.save(conv_on_flattened_input(), str(path))
    one_error_line(ftonnx_process("inspect", path), "node '/conv2/Conv' (Conv) crashes onnx's shape inference")
    one_error_line(ftonnx_process("predict", path, image), "onnxruntime crashes loading it at node '/conv2/Conv'")


def test_isolated_reports_signals_errors_and_timeouts() -> None:
    import ctypes

    assert isolated.run(lambda: b"x" * 300_000) == b"x" * 300_000  # more than a pipe holds
    with pytest.raises(isolated.Crashed) as crash:
        isolated.run(lambda: ctypes.string_at(0))
    assert crash.value.signal == "SIGSEGV"
    with pytest.raises(FtonnxError, match="by zero"):
        isolated.run(lambda: 1 // 0)
    start = time.monotonic()
    with pytest.raises(isolated.Crashed, match="TIMEOUT"):
        isolated.run(lambda: time.sleep(30), timeout=0.5)
    assert time.monotonic() - start < 10


def test_text_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    model = build_tiny_model()
    model.graph.node[0].name = "AAAA"
    data = model.SerializeToString().replace(b"AAAA", b"A\xff\xfeA")
    (tmp_path / "bytes.onnx").write_bytes(data)
    with pytest.raises(FtonnxError, match="field 'name' is not UTF-8 text"):
        load(tmp_path / "bytes.onnx")
    model = build_tiny_model()
    model.metadata_props.add(key="ftonnx.labels", value="ZZZZ")
    (tmp_path / "meta.onnx").write_bytes(model.SerializeToString().replace(b"ZZZZ", b"Z\xc3Z\x93"))
    one_error_line(ftonnx_process("inspect", tmp_path / "meta.onnx"), "not UTF-8 text")


def labelled(**entries: str) -> onnx.ModelProto:
    """The tiny model with raw metadata values (JSON text) for ftonnx's keys."""
    model = build_tiny_model(num_classes=2)
    metadata.clear(model)
    for key, value in entries.items():
        model.metadata_props.add(key=f"ftonnx.{key}", value=value)
    return model


PRE = {"size": [32, 32], "resize": 36, "mean": [127, 127, 127], "std": [128, 128, 128]}


@pytest.mark.parametrize("entries, message", [
    ({"labels": '"ab"'}, "'ftonnx.labels': must be a list of class names (strings), not a string"),
    ({"labels": "[1, 2]"}, "'ftonnx.labels': must be a list of class names (strings); item 0 is a number"),
    ({"labels": "{"}, "'ftonnx.labels' is not valid JSON"),
    ({"preprocess": "[]"}, "'ftonnx.preprocess': must be a JSON object"),
    ({"preprocess": '{"size": [32, 32]}'}, "'ftonnx.preprocess': has no resize, mean, std"),
    ({"preprocess": json.dumps({**PRE, "size": "32"})}, "size must be a list, not a string"),
    ({"preprocess": json.dumps({**PRE, "resize": 36.5})}, "must be whole numbers of pixels"),
    ({"preprocess": json.dumps({**PRE, "std": [1, 0, 1]})}, "std [1.0, 0.0, 1.0] must be finite numbers, std positive"),
    ({"preprocess": json.dumps({**PRE, "mean": [1, 2]})}, "RGB takes 3 mean and std value(s), not 2 and 3"),
    ({"preprocess": json.dumps({**PRE, "mean": [1, "2", 3]})}, "must be numbers"),
    ({"preprocess": json.dumps({**PRE, "layout": 4})}, "layout must be NCHW or NHWC"),
    ({"head_params": '"head.fc.weight"'}, "'ftonnx.head_params': must be a list of parameter names"),
    ({"feature": "[]"}, "'ftonnx.feature': must be a string"),
])
def test_malformed_metadata_is_one_line(tmp_path: Path, image: Path, entries: dict, message: str) -> None:
    path = tmp_path / "meta.onnx"
    onnx.save(labelled(**{"labels": '["a", "b"]', "preprocess": json.dumps(PRE), **entries}), str(path))
    one_error_line(ftonnx_process("predict", path, image), message)
    one_error_line(ftonnx_process("inspect", path), message)


@pytest.mark.parametrize("preprocess, message", [
    ({**PRE, "size": [64, 64], "resize": 70}, "height 32, not 64"),
    ({**PRE, "layout": "NHWC"}, "contradicts input 'input' of shape ['batch', 3, 32, 32]"),
])
def test_metadata_that_contradicts_the_graph_is_one_line(tmp_path: Path, image: Path, preprocess: dict,
                                                         message: str) -> None:
    path = tmp_path / "contradicts.onnx"
    onnx.save(labelled(labels='["a", "b"]', preprocess=json.dumps(preprocess)), str(path))
    one_error_line(ftonnx_process("predict", path, image), message)


def test_absurd_sizes_are_refused_at_once(tmp_path: Path, image: Path) -> None:
    """A 100000x100000 input would make predict allocate tens of GB; 4e9 classes would hang building labels."""
    model = labelled(labels='["a", "b"]', preprocess=json.dumps({**PRE, "size": [100000, 100000], "resize": 100000}))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    onnx.save(model, str(tmp_path / "huge.onnx"))
    start = time.monotonic()
    one_error_line(ftonnx_process("predict", tmp_path / "huge.onnx", image), "from 1 to 4096")
    backbone = tmp_path / "backbone.onnx"
    assert ftonnx_process("cut", tmp_path / "huge.onnx", "--node", "auto", "-o", backbone).returncode == 2
    onnx.save(build_tiny_model(), str(tmp_path / "tiny.onnx"))
    assert ftonnx_process("cut", tmp_path / "tiny.onnx", "--node", "auto", "-o", backbone).returncode == 0
    one_error_line(ftonnx_process("head", backbone, "--classes", 4_000_000_000, "-o", tmp_path / "h.onnx"),
                   "4,000,000,000 classes is more than ftonnx's limit of 100,000")
    one_error_line(ftonnx_process("head", backbone, "--classes", 100_000, "--hidden", 100_000, "-o",
                                  tmp_path / "h.onnx"), "over ftonnx's limit")
    assert time.monotonic() - start < 60 and not (tmp_path / "h.onnx").exists()
    labels = labelled(labels=json.dumps([f"c{i}" for i in range(100_001)]))
    with pytest.raises(FtonnxError, match="holds 100001 class names; a classifier has 1 to 100,000"):
        metadata.read(labels)


def test_broken_initializer_data_is_an_error_not_a_numpy_exception() -> None:
    model = build_tiny_model()
    weight = next(t for t in model.graph.initializer if t.name == "conv2.weight")
    weight.raw_data = weight.raw_data[:-4]
    with pytest.raises(FtonnxError, match=r"'conv2.weight': holds 4604 bytes of data for shape \[16, 8, 3, 3\] "
                                          r"\(4608 expected\)"):
        load_from(model)
    model = build_tiny_model()
    next(t for t in model.graph.initializer if t.name == "fc.bias").data_type = 99
    with pytest.raises(FtonnxError, match="unknown element type 99"):
        load_from(model)


def load_from(model: onnx.ModelProto) -> onnx.ModelProto:
    from ftonnx.graph.normalize import normalize

    return normalize(model)[0]


def test_constant_folding_that_fails_leaves_the_verdict_to_the_checker() -> None:
    """A foldable chain the reference evaluator cannot run (Gemm on a vector) used to be a numpy traceback."""
    model = build_tiny_model()
    model.graph.node.insert(0, helper.make_node("Gemm", ["fc.weight", "fc.bias"], ["folded"], name="odd"))
    model.graph.node[-1].input[2] = "folded"
    with pytest.raises(FtonnxError, match="fails onnx's checker|node 'odd'"):
        load_from(model)
