"""Where a frozen-backbone finetune's wall time goes, stage by stage, in one fresh process per run.

Runs `ftonnx finetune MODEL --node auto --data DATA --epochs N --no-report` --runs times, each in a new
process that wraps the pipeline's stages with timers, and prints a table of each stage's median start and
wall time: the imports, finding the data and loading the model (overlapped), the graph surgery, the
activation cache (decoding and the frozen prefix, the floor's work), the head's training and the export.
What is not the cache is the fixed cost `tools/bench_cache.py` compares with its floor. ftonnx's bytecode is
written first, as an installed wheel has it.

    python tools/profile_finetune.py                       # the zoo's EfficientNet-Lite0 on hymenoptera
    python tools/profile_finetune.py --model lite0.onnx --runs 3
"""

from __future__ import annotations

import time

BEGUN = time.perf_counter()  # before any import of the child's: the imports are a stage of their own

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

STAGES = [  # (module, attribute, label): the pipeline's steps, in the order a finetune runs them
    ("ftonnx.pipeline", "_datasets", "find the data (headers read)"),
    ("ftonnx.graph", "load", "load and normalise the model"),
    ("ftonnx.pipeline", "_preprocessed", "preprocessing"),
    ("ftonnx.graph.cut", "cut", "cut"),
    ("ftonnx.graph.head", "add_head", "new head"),
    ("ftonnx.pipeline", "split", "split prefix / suffix"),
    ("ftonnx.pipeline", "_build_caches", "activation cache (decode + frozen prefix)"),
    ("ftonnx.train.loop", "_session", "training artifacts and session"),
    ("ftonnx.train.loop", "_epoch", "epochs (train steps, validation)"),
    ("ftonnx.train.run", "RunFolder.save_checkpoint", "checkpoints"),
    ("ftonnx.pipeline", "export_inference", "export RUN/model.onnx"),
]


def child(argv: list[str]) -> None:
    """Run the CLI with the stages timed; print {label: [first start s, total wall s]} as the last line."""
    start = BEGUN
    import importlib

    import ftonnx.cli  # noqa: F401
    import ftonnx.pipeline  # noqa: F401

    imported = time.perf_counter() - start
    timings: dict[str, list[float]] = {"imports": [0.0, imported]}
    for module, attribute, label in STAGES:
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        timings[label] = [0.0, 0.0]
        setattr(owner, name, _timed(getattr(owner, name), timings[label], start))
    from ftonnx.cli import run

    sys.argv = ["ftonnx", *argv]
    try:
        run()  # as the console script runs it
    finally:
        timings["end of process work"] = [time.perf_counter() - start, 0.0]
        print(json.dumps(timings))


def _timed(function, slot: list[float], origin: float):
    def timed(*args, **kwargs):
        begun = time.perf_counter()
        slot[0] = slot[0] or begun - origin
        try:
            return function(*args, **kwargs)
        finally:
            slot[1] += time.perf_counter() - begun
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="pretrained ONNX model (default: the zoo's EfficientNet-Lite0)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets"
                        / "hymenoptera")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    from _bench import compile_bytecode

    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="profile-finetune-") as tmp:
        model = args.model
        if model is None:
            from ftonnx import zoo

            model = Path(tmp) / "lite0.onnx"
            zoo.export_model("efficientnet-lite0", model)
        runs, walls = [], []
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            command = [sys.executable, __file__, "--child", "finetune", str(model), "--node", "auto", "--data",
                       str(args.data), "--out", str(out), "--epochs", str(args.epochs), "--no-report"]
            begun = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            walls.append(time.perf_counter() - begun)
            if proc.returncode != 0:
                sys.exit(f"finetune failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{model.name if args.model else 'EfficientNet-Lite0 (zoo)'}, {args.data.name}, {args.epochs} epochs, "
          f"frozen backbone; median of {args.runs} fresh processes (whole process {statistics.median(walls):.2f} s)\n")
    print("| stage | starts at s | wall s |")
    print("|---|---|---|")
    for label in runs[0]:
        begin = statistics.median(r[label][0] for r in runs)
        wall = statistics.median(r[label][1] for r in runs)
        print(f"| {label} | {begin:.3f} | {wall:.3f} |")


if __name__ == "__main__":
    main()
