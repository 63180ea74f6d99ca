"""The README's Python snippet runs as written, on the real hymenoptera images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import REPO, require_torch

pytestmark = pytest.mark.slow


def test_readme_python_snippet_runs(hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_torch()  # the snippet starts from the zoo
    (snippet,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
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
