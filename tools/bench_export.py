"""Edge export of EfficientNet-Lite0 finetuned on hymenoptera: what the README's edge-export tables quote.

1. int8 against float on runs finetuned for each of --epochs (frozen backbone, cached) and with
   `--freeze until:SPEC` (5 epochs, augmentation on): val top-1 and the mean and largest probability
   difference from the float model, for the int8 `ftonnx export --int8` makes now (every training image
   up to 300, batch-mean MinMax, bias correction, `--int8-keep-float auto`) and the one it made before
   (100 images, global MinMax, nothing else).
2. `ftonnx export RUN --int8 --fp16 --ort --static --pixels --on-device` on the first run: the report's
   table (size, latency, val top-1, probability drift, NNAPI and CoreML node shares, what each leaves to
   the CPU and why), and how far the pixel variant's logits are from the float model's on the val images.
3. On-device training with ONNX Runtime's Python training API (CheckpointState, Module, Optimizer), as an
   app would run it: --device-epochs epochs over the training images, batch 32, through the whole graph
   (on_device/) and on the head alone fed stored features (on_device_head/): the median step time of each,
   their ratio, and val top-1 after training.

Run on a quiet machine: about 5 minutes on 2 cores.

    python tools/bench_export.py                                     # the README's figures
    python tools/bench_export.py --limit 16 --epochs 1 --until "" --device-epochs 1 --runs 3   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from _bench import DEFAULT_DATA, UNTIL, limited, say

from ftonnx import metadata, zoo
from ftonnx.data import Loader, discover
from ftonnx.data.images import to_array
from ftonnx.evaluate import class_probabilities
from ftonnx.export.edge import calibration_batches, export_run
from ftonnx.export.quantize import Quantizer
from ftonnx.export.report import format_table
from ftonnx.pipeline import data_args, finetune
from ftonnx.runtime import inference_session
from ftonnx.train.config import TrainConfig


def make_runs(workdir: Path, data: dict, epochs: list[int], until: str) -> dict[str, Path]:
    """label -> RUN folder: EfficientNet-Lite0's new head finetuned for each of `epochs`, and `until`."""
    pretrained = workdir / "efficientnet-lite0.onnx"
    zoo.export_model("efficientnet-lite0", pretrained)
    runs = {}
    for e in epochs:
        say(f"finetune: frozen backbone, {e} epochs")
        runs[f"{e} epoch{'s' * (e != 1)}"] = finetune(pretrained, "auto", data, workdir / f"run{e}",
                                       TrainConfig(epochs=e, freeze="backbone"), report=False).run_dir
    if until:
        say(f"finetune: --freeze until:{until}, 5 epochs")
        runs[f"until:{until}, 5 epochs"] = finetune(pretrained, "auto", data, workdir / "run_until",
                                                   TrainConfig(epochs=5, freeze=f"until:{until}"), report=False).run_dir
    return {label: Path(run) for label, run in runs.items()}


def old_int8(run: Path) -> onnx.ModelProto:
    """The int8 export made before: 100 training images, global MinMax, no bias correction, all int8."""
    model = onnx.load(str(run / "model.onnx"))
    train, _ = discover(**json.loads((run / "config.json").read_text())["data_args"])
    batches = calibration_batches(train, metadata.read(model).preprocess, 100)
    with Quantizer(model, batches, "minmax") as quantizer:
        ranges = _global_minmax(quantizer, calibration_batches(train, metadata.read(model).preprocess, 100))
        return quantizer.quantize([], bias_correction=False, ranges=ranges)


def _global_minmax(quantizer: Quantizer, batches) -> object:
    """Activation ranges as ORT's quantize_static computes them by default: the extremes over every image."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(quantizer.prepared, list(set(QDQRegistry) | set(QLinearOpsRegistry)),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        for x in batches:
            calibrator.collect_data(_Once(quantizer.input_name, x))
        return calibrator.compute_data()


class _Once:
    """A CalibrationDataReader of one batch."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.feed = {name: x}

    def get_next(self):
        feed, self.feed = self.feed, None
        return feed


def compare(models: dict[str, onnx.ModelProto | Path], val) -> dict[str, dict[str, float]]:
    """Per model: val top-1, and the mean and largest |probability - the first model's| over `val`."""
    sessions = {name: inference_session(m) for name, m in models.items()}
    preprocess = metadata.read(onnx.load(str(next(iter(models.values()))))).preprocess
    probs: dict[str, list] = {name: [] for name in models}
    labels = []
    for x, y in Loader(val, preprocess, batch_size=32).epoch(0):
        for name, session in sessions.items():
            probs[name].append(class_probabilities(session, x))
        labels.append(y)
    y = np.concatenate(labels)
    stacked = {name: np.concatenate(p) for name, p in probs.items()}
    reference = next(iter(stacked.values()))
    return {name: {"top1": float((p.argmax(axis=1) == y).mean()),
                   "mean_dp": float(np.abs(p - reference).max(axis=1).mean()),
                   "max_dp": float(np.abs(p - reference).max())} for name, p in stacked.items()}


def int8_table(runs: dict[str, Path], workdir: Path, runs_per_variant: int) -> list[str]:
    """The markdown rows of table 1."""
    rows = ["| finetune | float top-1 | int8 before | int8 now | now - float | mean / max \\|dp\\| before | "
            "mean / max \\|dp\\| now | kept in float | int8 export s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        say(f"int8: {label}")
        start = time.perf_counter()
        report = export_run(run, workdir / f"int8_{run.name}", int8=True, runs=runs_per_variant, progress=say)
        seconds = time.perf_counter() - start
        _, val = discover(**json.loads((run / "config.json").read_text())["data_args"])
        got = compare({"float": run / "model.onnx", "before": old_int8(run),
                       "now": workdir / f"int8_{run.name}" / "model.int8.onnx"}, val)
        kept = len(report["int8"]["keep_float"])
        f, b, n = got["float"], got["before"], got["now"]
        rows.append(f"| {label} | {100 * f['top1']:.2f}% | {100 * b['top1']:.2f}% | {100 * n['top1']:.2f}% | "
                    f"{100 * (n['top1'] - f['top1']):+.2f} pt | {b['mean_dp']:.4f} / {b['max_dp']:.3f} | "
                    f"{n['mean_dp']:.4f} / {n['max_dp']:.3f} | {kept} node{'s' * (kept != 1)} | {seconds:.0f} |")
    return rows


def pixel_logit_diff(out: Path, val) -> float:
    """Largest |logit| difference over `val` between model.pixels.onnx fed decoded pixels and model.onnx fed
    `to_array` of the same images."""
    reference, pixels = (inference_session(out / name) for name in ("model.onnx", "model.pixels.onnx"))
    preprocess = metadata.read(onnx.load(str(out / "model.onnx"))).preprocess
    worst = 0.0
    for batch, _ in Loader(val, preprocess, batch_size=32, pixels=True).epoch(0):
        x = np.stack([to_array(p, preprocess) for p in batch])
        a = reference.run(["logits"], {reference.get_inputs()[0].name: x})[0]
        b = pixels.run(["logits"], {pixels.get_inputs()[0].name: batch})[0]
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def train_on_device(folder: Path, x: dict, y: np.ndarray, val_x: dict, val_y: np.ndarray, epochs: int,
                    batch: int = 32) -> tuple[float, float]:
    """(median step ms, val top-1) after `epochs` epochs of steps over (x, y) in a seeded order, through
    ftonnx's wrapper of ONNX Runtime's training API (the calls an app's loop makes: step, then evaluate)."""
    from ftonnx.train.artifacts import Artifacts
    from ftonnx.train.session import TrainingSession

    artifacts = Artifacts(folder)
    session = TrainingSession(artifacts, artifacts.checkpoint)
    times = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(y))
        for s in range(0, len(y), batch):
            pick = order[s:s + batch]
            start = time.perf_counter()
            session.step({n: v[pick] for n, v in x.items()}, y[pick], 1e-3, np.random.default_rng(epoch))
            times.append(1000 * (time.perf_counter() - start))
    val = (({n: v[s:s + batch] for n, v in val_x.items()}, val_y[s:s + batch]) for s in range(0, len(val_y), batch))
    return statistics.median(times), session.evaluate(val, "validation")[1]


def arrays(dataset, preprocess) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*Loader(dataset, preprocess, batch_size=32).epoch(0))
    return np.concatenate(xs), np.concatenate(ys)


def device_table(run: Path, out: Path, epochs: int) -> list[str]:
    """The markdown rows of table 3: on-device training both ways."""
    from ftonnx.export.ondevice import features_of

    model = onnx.load(str(run / "model.onnx"))
    train, val = discover(**json.loads((run / "config.json").read_text())["data_args"])
    (x, y), (vx, vy) = (arrays(d, metadata.read(model).preprocess) for d in (train, val))
    name = model.graph.input[0].name
    rows = ["| on-device training | step ms (batch 32) | features, once per image | val top-1 after "
            f"{epochs} epoch{'s' * (epochs != 1)} |", "|---|---|---|---|"]
    say(f"on-device: whole graph, {epochs} epoch(s)")
    whole_ms, whole_top1 = train_on_device(out / "on_device", {name: x}, y, {name: vx}, vy, epochs)
    say(f"on-device: head on stored features, {epochs} epoch(s)")
    start = time.perf_counter()
    features = features_of(out / "on_device_head", x)[0]
    per_image = 1000 * (time.perf_counter() - start) / len(y)
    head_ms, head_top1 = train_on_device(out / "on_device_head", features, y,
                                         features_of(out / "on_device_head", vx)[0], vy, epochs)
    rows.append(f"| whole graph (on_device/) | {whole_ms:.1f} | - | {100 * whole_top1:.2f}% |")
    rows.append(f"| head on stored features (on_device_head/) | {head_ms:.3f} | {per_image:.1f} ms | "
                f"{100 * head_top1:.2f}% |")
    rows.append(f"\nhead-only steps are {whole_ms / head_ms:.0f}x cheaper at the same batch")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="hymenoptera (train/ and val/)")
    parser.add_argument("--limit", type=int, help="only the first N images of each class (a smoke run)")
    parser.add_argument("--epochs", default="5,10,30", help="finetunes with a frozen backbone, comma-separated")
    parser.add_argument("--until", default=UNTIL, help="also finetune with --freeze until:SPEC ('' to skip)")
    parser.add_argument("--device-epochs", type=int, default=5, help="epochs of on-device training each way")
    parser.add_argument("--workdir", help="where the runs and exports go (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the latency runs")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant (after 10 warm-up runs)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export."))
    workdir.mkdir(parents=True, exist_ok=True)
    data = limited(Path(args.data), args.limit, workdir) if args.limit else data_args(args.data)
    runs = make_runs(workdir, data, [int(e) for e in args.epochs.split(",")], args.until)
    lines = [f"EfficientNet-Lite0, hymenoptera, {os.cpu_count()} CPU cores", "", *int8_table(runs, workdir, 3), ""]
    first = next(iter(runs.values()))
    out = workdir / "export"
    say("export: every variant of the first run")
    report = export_run(first, out, int8=True, fp16=True, ort=True, on_device=True, static=True, pixels=True,
                        threads=args.threads, runs=args.runs, progress=say)
    _, val = discover(**json.loads((first / "config.json").read_text())["data_args"])
    lines += [f"ftonnx export {first} -o {out} --int8 --fp16 --ort --static --pixels --on-device", "",
              format_table(report), "",
              f"pixel variant: largest |logit - float model's logit| over {len(val.samples)} val images "
              f"{pixel_logit_diff(out, val):.2e}", "", *device_table(first, out, args.device_epochs)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
