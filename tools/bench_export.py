"""Edge export of EfficientNet-Lite0 finetuned on hymenoptera: size, CPU latency, val top-1 and
probability drift of the float, int8 and fp16 models and their ORT-format twins.

Without --run it first finetunes the frozen-backbone head (the zoo's EfficientNet-Lite0, cut at the
recommended node) into WORKDIR/run, then runs what `ftonnx export RUN -o WORKDIR/export --int8
--fp16 --ort --on-device` runs and prints its table (the README quotes it).

    python tools/bench_export.py                           # finetune 5 epochs, then export
    python tools/bench_export.py --run RUN                 # export a run that exists
    python tools/bench_export.py --epochs 1 --runs 10      # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from ftonnx import zoo
from ftonnx.export.edge import export_run
from ftonnx.export.report import format_table
from ftonnx.pipeline import data_args, finetune
from ftonnx.train.config import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera"


def make_run(workdir: Path, data: str, epochs: int) -> Path:
    """Finetune EfficientNet-Lite0's new head (backbone frozen) on `data` into WORKDIR/run."""
    pretrained = workdir / "efficientnet-lite0.onnx"
    zoo.export_model("efficientnet-lite0", pretrained)
    run = workdir / "run"
    finetune(pretrained, "auto", data_args(data), run, TrainConfig(epochs=epochs, freeze="backbone"), report=False)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finetuned RUN folder; default: finetune one first")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="hymenoptera (train/ and val/) for the finetune")
    parser.add_argument("--epochs", type=int, default=5, help="finetuning epochs when there is no --run")
    parser.add_argument("--workdir", help="where the run and the export go (default: a new temporary folder)")
    parser.add_argument("--calib", type=int, default=100, help="training images to calibrate int8 on")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the latency runs")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant (after 10 warm-up runs)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export."))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else make_run(workdir, args.data, args.epochs)
    out = workdir / "export"
    print(f"ftonnx export {run} -o {out} --int8 --fp16 --ort --on-device --calib-count {args.calib} "
          f"--threads {args.threads}", file=sys.stderr)
    report = export_run(run, out, int8=True, fp16=True, ort=True, on_device=True, calib_count=args.calib,
                        threads=args.threads, runs=args.runs, progress=lambda m: print(m, file=sys.stderr))
    print(f"EfficientNet-Lite0, hymenoptera, {os.cpu_count()} CPU cores; {report['calibration_images']} int8 "
          f"calibration images")
    print(format_table(report))
    print(f"on_device/: {', '.join(report['on_device'])}")


if __name__ == "__main__":
    main()
