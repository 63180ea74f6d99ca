"""docs/report.png: the report page of a real run, as the README shows it.

Exports the zoo's EfficientNet-Lite0, finetunes it on hymenoptera with ftonnx's defaults and
`--export int8,ort`, opens RUN/report.html in headless Chromium (tests/browser.py), and keeps the page
down to the end of the export table, as a 256-colour PNG so that it stays small.

    python tools/report_screenshot.py                 # writes docs/report.png
    python tools/report_screenshot.py --keep run-dir  # and keeps the run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
sys.path.insert(0, str(REPO / "tests"))

from browser import Chromium  # noqa: E402

BOTTOM_JS = ("(() => { const s = document.getElementById('export-section') || "
             "document.getElementById('mistakes-section'); return s.getBoundingClientRect().bottom + 16; })()")


def ftonnx(*args: object) -> None:
    command = [str(Path(sys.executable).parent / "ftonnx"), *map(str, args)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    parser.add_argument("--keep", type=Path, help="Write the run here instead of a temporary folder.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        ftonnx("zoo", "export", "efficientnet-lite0", "-o", work / "lite0.onnx")
        ftonnx("finetune", work / "lite0.onnx", "--data", HYMENOPTERA, "--out", work / "run", "--export", "int8,ort")
        with Chromium() as browser:
            page = browser.open(work / "run" / "report.html", js=BOTTOM_JS, screenshot=work / "full.png")
        if page.errors:
            sys.exit(f"the page logged errors: {page.errors}")
        full = Image.open(work / "full.png").convert("RGB")
        kept = full.crop((0, 0, full.width, min(full.height, round(page.value))))
        kept.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB, {kept.width}x{kept.height})")


if __name__ == "__main__":
    main()
