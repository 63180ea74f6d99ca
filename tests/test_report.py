"""The report page of a run and of an evaluation (ftonnx.report, `ftonnx report`, `ftonnx eval --report`):
what it says must be what the model does, hostile labels must stay text, and without matplotlib a run
still finishes and says in one line how to get the page."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftonnx import metadata
from ftonnx.data import discover
from ftonnx.evaluate import evaluate
from ftonnx.pipeline import finetune
from ftonnx.report.contents import schedule_points
from ftonnx.train.config import TrainConfig
from ftonnx.train.run import RunFolder
from ftonnx.train.schedule import learning_rate

from helpers import build_tiny_model, cli, hostile_data, make_folder, require_matplotlib


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> RunFolder:
    """A finished 3-epoch run of the tiny model on the hostile labels, with its report."""
    require_matplotlib()
    root = tmp_path_factory.mktemp("hostile")
    (root / "tiny.onnx").write_bytes(build_tiny_model().SerializeToString())
    result = finetune(root / "tiny.onnx", "auto", hostile_data(root), root / "run",
                      TrainConfig(epochs=3, batch_size=8))
    assert result.report_path == RunFolder(root / "run").report_path
    return RunFolder(root / "run")


def figure(page: str, key: str) -> str:
    return re.search(rf'<b id="{key}">([^<]+)</b>', page)[1]


def test_a_run_writes_a_page_and_both_pictures_that_show_what_its_model_does(hostile_run: RunFolder) -> None:
    from ftonnx.report import page as report_page  # imports matplotlib, which the fixture checked for

    page = hostile_run.report_path.read_text(encoding="utf-8")
    for picture in (hostile_run.curves_path, hostile_run.confusion_path):
        assert Image.open(picture).format == "PNG"
    _, val = discover(**hostile_run.read_record().data_args)
    truth = evaluate(hostile_run.model_path, val)
    assert figure(page, "top1") == f"{truth['top1']:.4f}" and figure(page, "top5") == f"{truth['top5']:.4f}"
    assert figure(page, "macro-f1") == f"{truth['macro']['f1']:.4f}"
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', page)]
    assert sum(counts) == truth["count"] == len(val.samples)  # a hover cell for every non-empty cell
    wrong = truth["count"] - int(np.trace(np.array(truth["confusion"])))
    assert 0 < wrong and page.count('<figure class="mistake"') == min(wrong, report_page.MAX_MISTAKES)
    assert page.count('<img class="thumb" src="data:image/jpeg;base64,') == page.count('<figure class="mistake"')
    assert 'id="counts"' in page and 'id="confused-pairs"' not in page  # 6 classes: every count in a table
    best = [m for m in hostile_run.read_metrics() if m["best"]][-1]
    assert f'<tr class="best"><td>{best["epoch"]} \u2605</td>' in page


class Parsed(HTMLParser):
    """The tags, the text and the attribute values of a page, as a browser's parser reads them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.attributes: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += [value or "" for _, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_hostile_labels_stay_visible_text(hostile_run: RunFolder) -> None:
    page = hostile_run.report_path.read_text(encoding="utf-8")
    parsed = Parsed(page)
    assert "script" not in parsed.tags and parsed.tags <= {
        "html", "head", "meta", "link", "title", "style", "body", "main", "header", "h1", "h2", "h3", "p", "div",
        "b", "span", "section", "img", "a", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
        "br", "footer"}
    text = "".join(parsed.text)
    for label in ["<script>alert(1)</script>", "qu\"o't&amp;", "été☃灯", "bell\\x07", "rtl\\u202eevil", "$x^2$"]:
        assert label in text and any(label in value for value in parsed.attributes)
    assert "\x07" not in page and "\u202e" not in page  # shown as escapes, never as the characters
    assert "http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:;" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: every picture is embedded


def test_the_learning_rate_curve_is_the_runs_schedule(hostile_run: RunFolder) -> None:
    config, metrics = hostile_run.read_record().config, hostile_run.read_metrics()
    position, rate = schedule_points(config, metrics)
    per_epoch = metrics[0]["step"]
    assert per_epoch == 5 and len(rate) == per_epoch * config.epochs  # 6 x 6 images in batches of 8
    for m in metrics:  # the rate logged at the end of each epoch lies on the curve
        assert rate[np.flatnonzero(position == m["epoch"])[0]] == m["lr"]
    assert rate[0] == learning_rate(0, base_lr=config.lr, total_steps=15, warmup_steps=per_epoch)
    assert rate[0] < rate[per_epoch - 1] == config.lr  # the warmup ramp


def test_report_command_rewrites_the_page_and_shows_an_export(hostile_run: RunFolder, tmp_path: Path) -> None:
    from ftonnx.export.edge import export_run

    export_run(hostile_run.path, tmp_path / "edge", runs=2)
    hostile_run.report_path.unlink()
    code, out, err = cli("report", hostile_run.path, "--export", tmp_path / "edge")
    assert code == 0, err
    assert out.strip() == f"wrote {hostile_run.report_path}"
    page = hostile_run.report_path.read_text(encoding="utf-8")
    assert re.search(r'<table id="export">.*<td class="name">float</td><td class="name">model.onnx</td>', page)
    code, _, err = cli("report", hostile_run.path, "--export", tmp_path / "nowhere")
    assert code == 2 and err == f"ftonnx: error: {tmp_path / 'nowhere' / 'report.json'}: no such file; --export " \
                                "names a folder `ftonnx export` wrote\n"


@pytest.mark.parametrize("case", ["missing", "not_a_run", "unfinished"])
def test_report_command_refuses_what_is_not_a_finished_run(tmp_path: Path, case: str) -> None:
    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "unfinished":
        (run / "config.json").write_text(json.dumps({"data_args": {"data": str(tmp_path)}}))
    code, _, err = cli("report", run)
    expected = {"missing": "no such run folder", "not_a_run": "config.json: no such file",
                "unfinished": "no finished training"}[case]
    assert code == 2 and expected in err and len(err.splitlines()) == 1


def test_eval_report_for_a_hundred_classes_lists_the_confused_pairs(tmp_path: Path) -> None:
    require_matplotlib()
    labels = [f"class {i:02d} \"q\" é" for i in range(100)]
    model = metadata.update(build_tiny_model(num_classes=100), labels=labels)
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    data = make_folder(tmp_path / "data", {label: 2 for label in labels})
    code, out, err = cli("eval", tmp_path / "m.onnx", "--data", data, "--report", tmp_path / "page", "--json")
    assert code == 0, err
    result = json.loads(out)
    page = (tmp_path / "page" / "report.html").read_text(encoding="utf-8")
    assert not (tmp_path / "page" / "curves.png").exists() and 'id="curves"' not in page
    assert 'id="confused-pairs"' in page and 'id="counts"' not in page
    assert sum(int(c) for c in re.findall(r'data-count="(\d+)"', page)) == result["count"] == 200
    per_class = re.search(r'<table id="per-class">.*?</table>', page)[0]
    assert per_class.count("<tr") == 1 + 100 + 2  # the head, each class, the two averages
    width, height = Image.open(tmp_path / "page" / "confusion.png").size
    assert width <= 1100 and height <= 1000


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the environment look as if the `report` extra was not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_the_extra_a_run_succeeds_and_says_how_to_get_the_page(no_matplotlib, tmp_path: Path) -> None:
    root = tmp_path
    (root / "tiny.onnx").write_bytes(build_tiny_model().SerializeToString())
    code, out, err = cli("finetune", root / "tiny.onnx", "--data", make_folder(root / "d", {"a": 4, "b": 4}),
                         "--val-split", "0.5", "--out", root / "run", "--epochs", 1)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("report")]
    assert notes == [f"report: not written; pip install 'ftonnx[report]' adds RUN/report.html "
                     f"(then `ftonnx report {root / 'run'}`)"]
    assert (root / "run" / "model.onnx").is_file() and not (root / "run" / "report.html").exists()
    assert "report:" not in out
    one_line = "ftonnx: error: the report page needs matplotlib: pip install 'ftonnx[report]'\n"
    assert cli("report", root / "run")[1:] == ("", one_line)
    assert cli("eval", root / "run" / "model.onnx", "--data", root / "d", "--report", root / "page")[1:] == \
        ("", one_line)


def test_no_report_skips_the_page(tmp_path: Path) -> None:
    (tmp_path / "tiny.onnx").write_bytes(build_tiny_model().SerializeToString())
    code, out, err = cli("finetune", tmp_path / "tiny.onnx", "--data", make_folder(tmp_path / "d", {"a": 4, "b": 4}),
                         "--val-split", "0.5", "--out", tmp_path / "run", "--epochs", 1, "--no-report")
    assert code == 0, err
    assert not [line for line in (out + err).splitlines() if line.startswith("report")]
    assert not (tmp_path / "run" / "report.html").exists()
