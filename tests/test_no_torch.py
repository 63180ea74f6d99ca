"""No command but the zoo's export imports torch: each runs as its own process, as a user runs it, and
reports at exit whether torch was ever imported (ftonnx/ortshim.py keeps ONNX Runtime from importing it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from helpers import build_tiny_model, write_colours

# Runs the CLI, then says on stderr, at interpreter exit, whether torch was imported.
_DRIVER = ("import atexit, sys; "
           "atexit.register(lambda: print('torch imported: ' + str('torch' in sys.modules), file=sys.stderr)); "
           "from ftonnx.cli import main; main()")


def ftonnx_process(*args: object) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("no_torch")
    onnx.save(build_tiny_model(), str(root / "tiny.onnx"))
    return {"root": root, "tiny": root / "tiny.onnx", "data": write_colours(root / "colours", train=6, val=3)}


def test_the_shim_is_in_place_for_the_pinned_runtime() -> None:
    code = ("import ftonnx, onnxruntime, onnxruntime.training.api, onnxruntime.training.artifacts, sys; "
            "print(onnxruntime.__version__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.19.2", "False"]


def test_no_command_but_the_zoo_imports_torch(files: dict[str, Path]) -> None:
    root, run = files["root"], files["root"] / "run"
    image = next((files["data"] / "val" / "red").iterdir())
    commands = [
        ("inspect", files["tiny"]),
        ("cut", files["tiny"], "--node", "auto", "-o", root / "backbone.onnx"),
        ("head", root / "backbone.onnx", "--classes", 3, "--labels", "blue,green,red", "-o", root / "head.onnx"),
        ("finetune", files["tiny"], "--data", files["data"], "--out", run, "--epochs", 1, "--batch-size", 6),
        ("eval", run / "model.onnx", "--data", files["data"]),
        ("predict", run / "model.onnx", image),
        ("export", run, "-o", root / "edge", "--int8", "--ort", "--on-device"),
    ]
    for args in commands:
        code, _, stderr = ftonnx_process(*args)
        assert code == 0, (args[0], stderr)
        assert stderr.strip().splitlines()[-1] == "torch imported: False", (args[0], stderr)
