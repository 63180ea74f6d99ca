"""transplant: parameters copied by name and shape; mismatches dropped and listed; the CLI's exit codes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from ftonnx.cli import main
from ftonnx.errors import FtonnxError
from ftonnx.graph.transplant import transplant

from helpers import build_tiny_model


def _values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture
def pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A 10-class pretrained model with an extra tensor, and a fresh 3-class network of the same names."""
    pretrained = build_tiny_model(num_classes=10, seed=1)
    pretrained.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "aux.scale"))
    return pretrained, build_tiny_model(num_classes=3, seed=2)


def test_copies_matching_drops_and_lists_the_rest(pair):
    pretrained, target = pair
    model, report = transplant(pretrained, target)
    src, dst, out = _values(pretrained), _values(target), _values(model)
    assert report.copied == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    for name in report.copied:
        np.testing.assert_array_equal(out[name], src[name])
    assert report.dropped == [("fc.weight", [10, 16], [3, 16]), ("fc.bias", [10], [3])]
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_array_equal(out[name], dst[name])
    assert report.unplaced == ["aux.scale"]
    assert [i.name for i in model.graph.input] == [i.name for i in target.graph.input]


def test_nothing_in_common_is_an_error(pair):
    pretrained, target = pair
    for t in pretrained.graph.initializer:
        t.name = "other." + t.name
    with pytest.raises(FtonnxError, match="no parameter of the pretrained model matches"):
        transplant(pretrained, target)


def test_cli_writes_and_lists(pair, tmp_path):
    pretrained, target = pair
    onnx.save(pretrained, str(tmp_path / "pre.onnx"))
    onnx.save(target, str(tmp_path / "net.onnx"))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["transplant", "--from", str(tmp_path / "pre.onnx"),
                                       "--to", str(tmp_path / "net.onnx"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "copied 4 parameters" in result.output
    assert "dropped (shape differs): fc.weight (10, 16) -> (3, 16)" in result.output
    assert "not placed (no parameter of that name in the target): aux.scale" in result.output
    np.testing.assert_array_equal(_values(onnx.load(str(out)))["conv2.weight"], _values(pretrained)["conv2.weight"])


@pytest.mark.parametrize("bad", ["missing", "garbage", "no_match"])
def test_cli_bad_input_exits_2_and_writes_nothing(pair, tmp_path, bad):
    pretrained, target = pair
    if bad == "no_match":
        for t in pretrained.graph.initializer:
            t.name = "other." + t.name
    onnx.save(pretrained, str(tmp_path / "pre.onnx"))
    onnx.save(target, str(tmp_path / "net.onnx"))
    if bad == "garbage":
        (tmp_path / "pre.onnx").write_bytes(b"not a model")
    source = tmp_path / ("absent.onnx" if bad == "missing" else "pre.onnx")
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["transplant", "--from", str(source), "--to", str(tmp_path / "net.onnx"),
                                       "-o", str(out)])
    assert result.exit_code == 2
    assert result.output.startswith("ftonnx: error: ") and "Traceback" not in result.output
    assert not out.exists()
