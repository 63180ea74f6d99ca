"""The README's examples run as written: the Python snippet, the pipeline's shell block and the "Your own
model" block, copied verbatim into a shell, on the real hymenoptera images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import exporters
from helpers import REPO, require_torch

pytestmark = pytest.mark.slow


def _block(heading: str, language: str = "bash") -> str:
    """The first code block of `language` under the README section `heading`."""
    section = (REPO / "README.md").read_text().split(f"\n## {heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S)[1]


def _shell(block: str, folder: Path) -> subprocess.CompletedProcess:
    """Run `block` with bash in `folder`, stopping at the first failing command, with this Python's `ftonnx`."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    return subprocess.run(["bash", "-e", "-c", block], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=900)


def test_readme_pipeline_block_runs_verbatim(hymenoptera: Path, tmp_path: Path) -> None:
    require_torch()  # the block starts from the zoo
    (tmp_path / "hymenoptera").symlink_to(hymenoptera)
    proc = _shell(_block("The pipeline"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bees" in proc.stdout and (tmp_path / "edge" / "model.int8.ort").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_args"]["data"].endswith("hymenoptera")


def test_readme_own_model_block_runs_verbatim(zoo_model_path: Path, hymenoptera: Path, tmp_path: Path) -> None:
    """my_model.onnx: the zoo's weights behind a channel flip, with no metadata: it expects BGR input."""
    onnx.save(exporters.zoo_composites(onnx.load(str(zoo_model_path)))["bgr"], str(tmp_path / "my_model.onnx"))
    (tmp_path / "hymenoptera").symlink_to(hymenoptera)
    proc = _shell(_block("Your own model"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--preprocess auto chose inception (BGR)" in proc.stderr
    assert len((tmp_path / "bees.csv").read_text().splitlines()) == 1 + 83 * 2  # header, top-2 of 83 bees
    assert (tmp_path / "my_edge" / "model.int8.ort").is_file()


def test_readme_python_snippet_runs(hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_torch()  # the snippet starts from the zoo
    snippet = _block("Python API", "python")
    (tmp_path / "hymenoptera").symlink_to(hymenoptera)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["classifier"].graph.output[0].name == "logits"
    assert scope["result"].best["val_top1"] >= 0.93
    assert {v["name"] for v in scope["report"]["variants"]} == {"float", "int8", "float.ort", "int8.ort"}
    assert (tmp_path / "edge" / "model.int8.ort").is_file()


def test_top_level_api_names_resolve_lazily() -> None:
    import ftonnx

    assert ftonnx.cut.__module__ == "ftonnx.graph.cut" and callable(ftonnx.export_run)
    with pytest.raises(AttributeError, match="no attribute 'fit'"):
        ftonnx.fit
