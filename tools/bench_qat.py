"""Quantisation-aware finetuning against post-training int8: what the README's QAT table quotes.

EfficientNet-Lite0 from the zoo, a new head, hymenoptera; three finetunes, each run twice, without and with
`--qat`, with ftonnx's defaults otherwise:
1. the frozen backbone, --epochs epochs (cached; with --qat the cache comes from the int8 prefix);
2. `--freeze until:SPEC --augment none`, --until-epochs epochs (the part before SPEC cached, in int8 with --qat);
3. `--freeze none`, --none-epochs epochs (light augmentation, through the whole graph).
Each run is exported with `ftonnx export RUN --int8`: post-training int8 (calibrated, bias corrected, nodes kept
in float as `auto` chooses) for the plain run, the QAT scales for the --qat run. The table gives the val top-1
of the plain run's float model, its int8 and the QAT run's int8 (and the QAT run's own float model), the
largest probability difference of each int8 model from its own float model over the val images, the int8
files' sizes, and the seconds per epoch (training and validation) and per run (start to saved model; a --qat
run also calibrates once) without and with --qat. The check line says whether QAT int8 is within 0.3 pt of
the float model and never below post-training int8.

Run on a quiet machine: about 7 minutes on 2 cores (the --freeze none runs take most of it).

    python tools/bench_qat.py                                                         # the README's figures
    python tools/bench_qat.py --limit 8 --epochs 1 --until-epochs 1 --none-epochs 1   # a smoke run (~3 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import DEFAULT_DATA, UNTIL, limited, say

from ftonnx import zoo
from ftonnx.export.edge import export_run
from ftonnx.pipeline import data_args, finetune
from ftonnx.train.config import TrainConfig

TOLERANCE = 0.003  # QAT int8 within 0.3 pt of the float model's top-1


def one_run(pretrained: Path, data: dict, run: Path, config: TrainConfig, runs: int) -> dict[str, Any]:
    """Finetune and export with --int8; the figures of the table."""
    start = time.perf_counter()
    finetune(pretrained, "auto", data, run, config, report=False)
    wall = time.perf_counter() - start
    seconds = [json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = export_run(run, run / "export", int8=True, runs=runs, progress=say)
    rows = {r["name"]: r for r in report["variants"]}
    return {"float": rows["float"]["top1"], "int8": rows["int8"]["top1"], "dp": rows["int8"]["max_prob_diff"],
            "bytes": rows["int8"]["bytes"], "epoch_s": statistics.mean(seconds), "wall_s": wall}


def finetunes(args: argparse.Namespace) -> list[tuple[str, TrainConfig]]:
    """(label, options) of the finetunes asked for, without --qat."""
    rows = [(f"frozen backbone, {args.epochs} epochs", TrainConfig(epochs=args.epochs))]
    if args.until_epochs:
        rows.append((f"`--freeze until:{args.until}`, {args.until_epochs} epochs",
                     TrainConfig(epochs=args.until_epochs, freeze=f"until:{args.until}", augment="none")))
    if args.none_epochs:
        rows.append((f"`--freeze none`, {args.none_epochs} epochs, batch 16",
                     TrainConfig(epochs=args.none_epochs, freeze="none", batch_size=16)))
    return rows


def row(label: str, plain: dict[str, Any], qat: dict[str, Any]) -> str:
    pt = 100 * (qat["int8"] - plain["float"])
    return (f"| {label} | {100 * plain['float']:.2f}% | {100 * plain['int8']:.2f}% | **{100 * qat['int8']:.2f}%** | "
            f"{pt:+.2f} pt | {100 * qat['float']:.2f}% | {plain['dp']:.4f} / {qat['dp']:.4f} | "
            f"{plain['bytes'] / 1e6:.2f} / {qat['bytes'] / 1e6:.2f} | {plain['epoch_s']:.1f} / {qat['epoch_s']:.1f} | "
            f"{plain['wall_s']:.0f} / {qat['wall_s']:.0f} |")


def check(label: str, plain: dict[str, Any], qat: dict[str, Any]) -> str:
    close = qat["int8"] >= plain["float"] - TOLERANCE
    extra = qat["bytes"] - plain["bytes"]
    return (f"{label}: QAT int8 {'within' if close else 'NOT within'} 0.3 pt of float, "
            f"{'not below' if qat['int8'] >= plain['int8'] else 'BELOW'} post-training int8, "
            f"{'the same size' if not extra else f'{extra:+d} bytes'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="hymenoptera (train/ and val/)")
    parser.add_argument("--limit", type=int, help="only the first N images of each class (a smoke run)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the frozen-backbone finetune")
    parser.add_argument("--until", default=UNTIL, help="the --freeze until: node")
    parser.add_argument("--until-epochs", type=int, default=10, help="epochs of the until: finetune (0: skip)")
    parser.add_argument("--none-epochs", type=int, default=5, help="epochs of the --freeze none finetune (0: skip)")
    parser.add_argument("--runs", type=int, default=10, help="timed latency runs per exported variant")
    parser.add_argument("--workdir", help="where the runs go (default: a new temporary folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_qat."))
    workdir.mkdir(parents=True, exist_ok=True)
    data = limited(Path(args.data), args.limit, workdir) if args.limit else data_args(args.data)
    pretrained = workdir / "efficientnet-lite0.onnx"
    zoo.export_model("efficientnet-lite0", pretrained)
    lines = [f"EfficientNet-Lite0, hymenoptera, {os.cpu_count()} CPU cores; int8 by `ftonnx export RUN --int8`", "",
             "| finetune | float top-1 | post-training int8 | QAT int8 | QAT int8 - float | QAT run's float | "
             "max \\|dp\\| PTQ / QAT | int8 MB PTQ / QAT | s/epoch plain / QAT | run s plain / QAT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    checks = []
    for i, (label, config) in enumerate(finetunes(args)):
        results = []
        for qat in (False, True):
            say(f"finetune: {label}{', --qat' if qat else ''}")
            results.append(one_run(pretrained, data, workdir / f"run{i}{'-qat' * qat}",
                                   dataclasses.replace(config, qat=qat), args.runs))
        lines.append(row(label, *results))
        checks.append(check(label, *results))
    print("\n".join([*lines, "", *checks]))


if __name__ == "__main__":
    main()
