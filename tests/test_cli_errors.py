"""Bad input to inspect, cut and head: one line on stderr, exit code 2, no traceback, no output file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from ftonnx.cli import main


@pytest.fixture
def files(tmp_path: Path, tiny_model: onnx.ModelProto) -> dict[str, Path]:
    """The tiny model, its backbone, a text file and a truncated model."""
    tiny = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, str(tiny))
    data = tiny.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.onnx").write_text("these are not the weights you are looking for\n")
    backbone = tmp_path / "backbone.onnx"
    assert CliRunner().invoke(main, ["cut", str(tiny), "--node", "pool", "-o", str(backbone)]).exit_code == 0
    return {"tiny": tiny, "backbone": backbone, "truncated": tmp_path / "truncated.onnx",
            "text": tmp_path / "notes.onnx", "missing": tmp_path / "missing.onnx"}


CASES = [
    (["inspect", "{missing}"], "no such file"),
    (["cut", "{missing}", "--node", "pool", "-o", "{out}"], "no such file"),
    (["head", "{missing}", "--classes", "2", "-o", "{out}"], "no such file"),
    (["inspect", "{text}"], "not a readable ONNX model"),
    (["cut", "{text}", "--node", "pool", "-o", "{out}"], "not a readable ONNX model"),
    (["cut", "{truncated}", "--node", "pool", "-o", "{out}"], "ONNX"),
    (["head", "{truncated}", "--classes", "2", "-o", "{out}"], "ONNX"),
    (["cut", "{tiny}", "--node", "nothing_like_it", "-o", "{out}"], "no node or tensor matches"),
    (["cut", "{tiny}", "--node", "Relu", "-o", "{out}"], "matches 2 nodes"),
    (["cut", "{tiny}", "--node", "Relu", "--last", "--index", "0", "-o", "{out}"], "not both"),
    (["cut", "{tiny}", "--node", "input", "-o", "{out}"], "graph input"),
    (["cut", "{tiny}", "--node", "pool", "-o", "{nodir}"], "does not exist"),
    (["head", "{backbone}", "--classes", "1", "-o", "{out}"], "at least 2 classes"),
    (["head", "{backbone}", "--classes", "0", "-o", "{out}"], "at least 2 classes"),
    (["head", "{backbone}", "--classes", "3", "--labels", "a,b", "-o", "{out}"], "2 labels given for 3"),
    (["head", "{backbone}", "--classes", "2", "-o", "{nodir}"], "does not exist"),
    (["head", "{tiny}", "--classes", "2", "-o", "{out}"], "still has its classifier"),
]


@pytest.mark.parametrize("args, message", CASES)
def test_bad_input_is_one_line_and_exit_code_2(files: dict[str, Path], tmp_path: Path, args: list[str],
                                               message: str) -> None:
    out, nodir = tmp_path / "out.onnx", tmp_path / "no_such_folder" / "out.onnx"
    argv = [a.format(out=out, nodir=nodir, **files) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftonnx: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not nodir.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files.values() if p.exists())


def test_installed_command_exits_2_without_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    proc = subprocess.run([sys.executable, "-c", "from ftonnx.cli import main; main()", "cut", str(files["tiny"]),
                           "--node", "input", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "ftonnx: error: 'input' is the graph input 'input'; cutting there would leave no nodes, name a node after it"]
    assert not out.exists()
