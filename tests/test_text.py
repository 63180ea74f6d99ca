"""Text from models, data sets and file names reaches the terminal escaped: an escape sequence cannot
restyle it or set its title, a newline cannot forge an output line. `--json` output stays exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

from ftonnx import metadata
from ftonnx.errors import printable
from ftonnx.export.inference import add_probabilities

from helpers import build_tiny_model, cli, write_image

EVIL = "\x1b]0;owned\x07\x1b[31mred\nftonnx: forged line\r\u202eevil"
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")  # any control character but the line breaks


def clean(text: str) -> bool:
    return RAW.search(text) is None


def test_printable_escapes_every_control_character_visibly() -> None:
    assert printable(EVIL) == "\\x1b]0;owned\\x07\\x1b[31mred\\nftonnx: forged line\\r\\u202eevil"
    assert printable("plain ünïcode, spaces and \\ stay") == "plain ünïcode, spaces and \\ stay"
    assert printable("undecodable \udcff byte") == "undecodable \\udcff byte"


@pytest.fixture
def evil_model(tmp_path: Path) -> Path:
    """A classifier whose node names, producer, input dimension and labels carry escape sequences."""
    model = add_probabilities(build_tiny_model(num_classes=2))
    model.graph.node[0].name = EVIL
    model.producer_name = EVIL
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch" + EVIL
    metadata.update(model, labels=[EVIL, "plain"])
    path = tmp_path / "evil.onnx"
    onnx.save(model, str(path))
    return path


def test_inspect_escapes_names_and_json_keeps_them(evil_model: Path) -> None:
    code, stdout, _ = cli("inspect", evil_model)
    assert code == 0 and clean(stdout)
    assert not any(line.startswith("ftonnx: forged") for line in stdout.splitlines())
    assert "\\x1b]0;owned\\x07" in stdout
    code, stdout, _ = cli("inspect", evil_model, "--json")
    summary = json.loads(stdout)
    assert summary["producer"] == EVIL and summary["nodes"][0]["name"] == EVIL


def test_predict_and_eval_escape_labels_paths_and_class_folders(evil_model: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / f"image{EVIL.replace('/', '')}.png", (40, 40))
    code, stdout, stderr = cli("predict", evil_model, image, "--top", 2)
    assert code == 0, stderr
    assert clean(stdout) and len(stdout.splitlines()) == 3
    code, stdout, _ = cli("predict", evil_model, image, "--json")
    assert {t["label"] for t in json.loads(stdout)[0]["top"]} == {EVIL, "plain"}
    data = tmp_path / "data"
    for label in (EVIL, "plain"):
        write_image(data / label.replace("/", "") / "a.png", (40, 40))
    model = onnx.load(str(evil_model))
    metadata.update(model, labels=sorted([EVIL.replace("/", ""), "plain"]))
    onnx.save(model, str(evil_model))
    code, stdout, stderr = cli("eval", evil_model, "--data", data)
    assert code == 0, stderr
    assert clean(stdout) and clean(stderr) and len(stdout.splitlines()) == 4


def test_errors_and_training_news_are_single_escaped_lines(tmp_path: Path) -> None:
    code, _, stderr = cli("inspect", tmp_path / f"missing{EVIL.replace('/', '')}.onnx")
    assert code == 2 and clean(stderr) and len(stderr.splitlines()) == 1
    data = tmp_path / "data"
    for split in ("train", "val"):
        for i, label in enumerate(("a" + EVIL.replace("/", ""), "b")):
            for j in range(3):
                write_image(data / split / label / f"{j}.png", (36, 36), seed=10 * i + j)
    onnx.save(build_tiny_model(), str(tmp_path / "tiny.onnx"))
    code, stdout, stderr = cli("finetune", tmp_path / "tiny.onnx", "--data", data, "--out", tmp_path / "run",
                               "--epochs", 1, "--batch-size", 3)
    assert code == 0, stderr
    assert clean(stdout) and clean(stderr) and "\\x1b]0;owned" in stderr
