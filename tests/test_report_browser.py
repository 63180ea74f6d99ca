"""The report page in a real browser: headless Chromium opens report.html of a real hymenoptera finetune and
of a run with hostile labels, with no console error, and shows the curves, the confusion matrix and the
misclassified images (asserted on the DOM). Without Chromium these tests skip, unless REQUIRE_BROWSER=1
(which .ci/run sets), where they fail."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from ftonnx.pipeline import finetune
from ftonnx.train.config import TrainConfig
from ftonnx.train.run import RunFolder

from browser import Chromium, find_chromium
from helpers import build_tiny_model, cli, hostile_data, require_matplotlib

pytestmark = pytest.mark.slow

# What a person sees, read from the DOM once the page has loaded.
PAGE_JS = """(() => {
  const inside = (inner, outer) => inner.left >= outer.left - 1 && inner.right <= outer.right + 1 &&
                                   inner.top >= outer.top - 1 && inner.bottom <= outer.bottom + 1;
  const picture = document.querySelector('img#confusion').getBoundingClientRect();
  const cells = [...document.querySelectorAll('a.cm-cell')];
  return {
    scripts: document.scripts.length,
    top1: document.getElementById('top1').textContent,
    curvesWidth: document.querySelector('#curves-section img#curves')?.getBoundingClientRect().width ?? 0,
    confusionWidth: picture.width,
    counts: cells.map(a => +a.dataset.count),
    cellsOnPicture: cells.every(a => inside(a.getBoundingClientRect(), picture)),
    mistakes: [...document.querySelectorAll('figure.mistake')].map(f => ({
      caption: f.querySelector('figcaption').innerText, shown: f.querySelector('img.thumb').naturalWidth})),
    perClassRows: document.querySelectorAll('#per-class tbody tr').length,
    exportRows: [...document.querySelectorAll('#export tbody tr')].map(r => r.cells[0].textContent),
    text: document.body.innerText,
  };
})()"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    require_matplotlib()
    if find_chromium() is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but no Chromium: apt-get install chromium, or set CHROMIUM")
        pytest.skip("no Chromium (apt-get install chromium); REQUIRE_BROWSER=1 makes this a failure")
    with Chromium() as chromium:
        yield chromium


def check_page(browser: Chromium, page: Path, screenshot: Path | None = None) -> dict:
    """Open `page`; assert what every report must satisfy in a browser; the DOM's answers to PAGE_JS."""
    seen = browser.open(page, js=PAGE_JS, screenshot=screenshot)
    assert seen.errors == [], seen.errors
    loaded = {image["id"]: image["naturalWidth"] for image in seen.images if image["id"]}
    assert loaded.get("curves", 1) > 0 and loaded["confusion"] > 0
    assert all(image["naturalWidth"] > 0 and image["src"].startswith("data:image/") for image in seen.images)
    assert [url for url in seen.requests if not url.startswith(("file:", "data:"))] == []
    dom = seen.value
    assert dom["scripts"] == 0 and dom["cellsOnPicture"] and dom["confusionWidth"] > 200
    assert dom["mistakes"] and all(m["shown"] > 0 for m in dom["mistakes"])
    return dom


def test_hymenoptera_report_in_a_browser(browser: Chromium, zoo_model_path: Path, hymenoptera: Path,
                                         tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    code, out, err = cli("finetune", zoo_model_path, "--node", "AvgPool", "--data", hymenoptera, "--out", run,
                         "--epochs", 3, "--export", "ort")
    assert code == 0, err
    assert f"report: {run.report_path}" in out.splitlines()
    top1 = re.search(r"^val top-1 (\S+)", out, re.M)[1]
    dom = check_page(browser, run.report_path, tmp_path / "shot.png")
    assert dom["top1"] == top1 and dom["curvesWidth"] > 600
    assert sum(dom["counts"]) == 153 and dom["perClassRows"] == 2 + 2
    wrong = 153 - round(float(top1) * 153)
    assert len(dom["mistakes"]) == wrong
    assert all(re.fullmatch(r"true (ants|bees)\npredicted (ants|bees) 0\.\d\d", m["caption"]) for m in dom["mistakes"])
    probabilities = [float(m["caption"][-4:]) for m in dom["mistakes"]]
    assert probabilities == sorted(probabilities, reverse=True)  # the most confident mistakes first
    assert dom["exportRows"] == ["float", "float.ort"]
    shot = Image.open(tmp_path / "shot.png")
    assert shot.width == 1280 and shot.height > 2000
    assert np.asarray(shot.convert("L")).std() > 20  # a page with pictures, not a blank one


def test_hostile_labels_are_shown_as_text_in_a_browser(browser: Chromium, tmp_path: Path) -> None:
    (tmp_path / "tiny.onnx").write_bytes(build_tiny_model().SerializeToString())
    result = finetune(tmp_path / "tiny.onnx", "auto", hostile_data(tmp_path), tmp_path / "run",
                      TrainConfig(epochs=2, batch_size=8))
    dom = check_page(browser, result.report_path)
    assert "<script>alert(1)</script>" in dom["text"] and "qu\"o't&amp;" in dom["text"]
    assert "bell\\x07" in dom["text"] and "rtl\\u202eevil" in dom["text"] and "été☃灯" in dom["text"]
    assert dom["perClassRows"] == 6 + 2 and sum(dom["counts"]) == 18


def test_the_browser_check_sees_errors(browser: Chromium, tmp_path: Path) -> None:
    """The harness must fail a broken page: console errors, uncaught exceptions, a script the page's
    policy blocks, and an image that does not load."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><title>x</title><img id='broken' src='data:image/png;base64,AAAA'>"
                    "<script>console.error('deliberate'); setTimeout(() => null.boom(), 10);</script>")
    seen = browser.open(page)
    assert any("deliberate" in e for e in seen.errors) and any("Cannot read properties of null" in e
                                                                for e in seen.errors)
    assert [i["naturalWidth"] for i in seen.images] == [0]
    blocked = tmp_path / "blocked.html"
    blocked.write_text("<!DOCTYPE html><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
                       "<title>x</title><script>document.title = 'ran'</script>")
    seen = browser.open(blocked, js="document.title")
    assert seen.value == "x" and any("Content Security Policy" in e for e in seen.errors)
