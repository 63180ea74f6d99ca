"""End-to-end finetune time with the activation cache, without it, in PyTorch eager, and the floor.

On hymenoptera with EfficientNet-Lite0 (the zoo's ONNX export, cut at the recommended pooling, a
2-class head initialised by ftonnx with seed 0), each row runs in a fresh process, timed from
process start to the saved model (`--no-report`: the report's evaluation pass is not training),
decoding included:

- cache: `ftonnx finetune` with `--freeze backbone` (the frozen backbone runs once per image);
- nocache: the same with `--no-cache` (the whole graph every epoch);
- pytorch: the zoo's PyTorch network with the same weights and head initialisation, parameters
  frozen, `_fc` replaced by nn.Linear(1280, 2), the forward recomputed every epoch, AdamW with
  ftonnx's learning rate, weight decay, warmup and cosine schedule per step, images decoded every
  epoch by ftonnx's decoder (same preprocessing, batches and order), validation every epoch and the
  best epoch's weights saved, torch.set_num_threads equal to ONNX Runtime's thread count;
- floor: process start, decoding every image once and one InferenceSession forward of the frozen
  backbone per image, which no frozen-backbone finetune can beat;
- late-cache / late-nocache: `--freeze until:SPEC --no-augment` (the last block, the head
  convolution and the head train) with and without the cache.

Both frameworks use every core (ONNX Runtime's intra-op threads are os.cpu_count() in ftonnx), the
same batch size and epochs, and ftonnx's bytecode is written first, as an installed wheel has it. It prints a
markdown table and the ratios issue 4 asks about. With `--repeat N`, every row and the floor run once per
round, N rounds in turn; the table shows median times, and a ratio is the median of the N rounds' ratios (a
row's run over the other's in the same round), which the machine's drift from round to round leaves alone.

    python tools/bench_cache.py                                  # every row, 30 and 5 epochs
    python tools/bench_cache.py --epochs 1 --limit 40            # a smoke run on 40 + 40 images
    python tools/bench_cache.py --rows cache pytorch floor --epochs 30
    python tools/bench_cache.py --rows floor cache --epochs 30 --repeat 5   # medians, floor and cache alternating
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import DEFAULT_DATA, UNTIL, compile_bytecode

MODEL = "efficientnet-lite0"
ROWS = ("cache", "nocache", "pytorch", "floor", "late-cache", "late-nocache")
THREADS = os.cpu_count() or 1


def limited_lists(root: Path, limit: int, folder: Path) -> dict[str, str]:
    """List files of the first `limit` images of each split (balanced over the classes) under `root`."""
    files = {}
    for split in ("train", "val"):
        classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        per_class = math.ceil(limit / len(classes))
        lines = [f"{split}/{c}/{f.name} {c}" for c in classes
                 for f in sorted((root / split / c).iterdir())[:per_class]][:limit]
        files[split] = str(folder / f"{split}.txt")
        Path(files[split]).write_text("\n".join(lines) + "\n")
    return {"data": str(root), "list_file": files["train"], "val_list": files["val"]}


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of `command` in a fresh process, and its stdout; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def ftonnx_row(pretrained: Path, data: dict[str, str], out: Path, epochs: int, batch_size: int,
               extra: list[str]) -> tuple[float, float, str]:
    """(wall s, best val top-1, path taken) of `ftonnx finetune` with `extra` options."""
    cli = shutil.which("ftonnx", path=str(Path(sys.executable).parent)) or "ftonnx"
    lists = ["--list", data["list_file"], "--val-list", data["val_list"]] if "list_file" in data else []
    wall, stdout = timed([cli, "finetune", str(pretrained), "--node", "auto", "--data", data["data"], *lists,
                          "--out", str(out), "--epochs", str(epochs), "--batch-size", str(batch_size), "--no-report",
                          *extra])
    top1 = float(re.search(r"val top-1 ([0-9.]+)", stdout)[1])
    cache = json.loads((out / "config.json").read_text())["cache"]
    path = f"cached at {', '.join(cache['boundary'])}" if cache else "whole graph"
    if not (out / "model.onnx").is_file():
        sys.exit(f"{out}: no model.onnx")
    return wall, top1, path


def child_row(kind: str, spec: dict) -> tuple[float, float | None, str]:
    """(wall s, val top-1, what) of this script's `--child kind` in a fresh process."""
    wall, stdout = timed([sys.executable, __file__, "--child", kind, "--spec", json.dumps(spec)])
    result = json.loads(stdout.strip().splitlines()[-1])
    return wall, result.get("val_top1"), result["what"]


def torch_child(spec: dict) -> dict:
    """The PyTorch eager reference: frozen backbone, new _fc, the forward every epoch, best epoch saved."""
    import torch
    import torch.nn.functional as F

    from ftonnx import zoo
    from ftonnx.data import Loader, discover
    from ftonnx.train.config import TrainConfig
    from ftonnx.train.schedule import learning_rate

    torch.set_num_threads(spec["threads"])
    train, val = discover(**spec["data_args"])
    recipe = zoo.get(MODEL)
    net = recipe.build()
    for p in net.parameters():
        p.requires_grad_(False)
    head = np.load(spec["head"])
    net._fc = torch.nn.Linear(net._fc.in_features, len(train.classes))
    with torch.no_grad():
        net._fc.weight.copy_(torch.from_numpy(head["weight"]))
        net._fc.bias.copy_(torch.from_numpy(head["bias"]))
    net.eval()  # batch norm with its running statistics, as ftonnx trains a frozen backbone
    epochs, bs = spec["epochs"], spec["batch_size"]
    defaults = TrainConfig(epochs=epochs).resolved(backbone_trains=False)  # ftonnx's defaults for a frozen backbone
    lr = defaults.lr
    optimizer = torch.optim.AdamW(net._fc.parameters(), lr=lr, weight_decay=defaults.weight_decay)
    loader = Loader(train, recipe.preprocess, batch_size=bs, shuffle=True, seed=0)
    val_loader = Loader(val, recipe.preprocess, batch_size=bs)
    steps = len(loader)
    best, best_state = None, None
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader.epoch(epoch)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps + i, base_lr=lr, total_steps=steps * epochs,
                                            warmup_steps=defaults.warmup_epochs * steps)
            loss = F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val_loader.epoch(0):
                logits, target = net(torch.from_numpy(x)), torch.from_numpy(y)
                loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
                correct += int((logits.argmax(1) == target).sum())
                count += len(y)
        score = (correct / count, -loss_sum / count)
        if best is None or score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(best_state, spec["out"])
    return {"val_top1": best[0], "what": f"{steps} steps/epoch, {torch.get_num_threads()} threads"}


def floor_child(spec: dict) -> dict:
    """Decode every image once and run the frozen backbone on it once, as fast as ONNX Runtime can."""
    from ftonnx.data import Loader, discover
    from ftonnx.runtime import image_input, inference_session
    from ftonnx.zoo import get

    train, val = discover(**spec["data_args"])
    session = inference_session(spec["prefix"], throughput=True)  # as the activation cache runs it
    name, _ = image_input(session)
    count = 0
    for dataset in (train, val):
        for x, _ in Loader(dataset, get(MODEL).preprocess, batch_size=64).epoch(0):
            session.run(None, {name: x})
            count += len(x)
    return {"what": f"{count} images decoded and forwarded once"}


def prepare(folder: Path, data: dict[str, str]) -> dict[str, str]:
    """The pretrained ONNX model, the head initialisation ftonnx gives it, and the frozen backbone alone."""
    from onnx import numpy_helper

    from ftonnx import zoo
    from ftonnx.data import discover
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head
    from ftonnx.graph.io import save_model
    from ftonnx.graph.split import boundary, split
    from ftonnx.metadata import read

    pretrained = folder / "lite0.onnx"
    zoo.export_model(MODEL, pretrained)
    classes = discover(**data)[0].classes
    model = add_head(cut(load(pretrained), "auto"), len(classes), seed=0, labels=classes)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.savez(folder / "head.npz", weight=inits["head.fc.weight"], bias=inits["head.fc.bias"])
    prefix, _ = split(model, boundary(model, read(model).head_params))
    save_model(prefix, folder / "prefix.onnx")
    return {"pretrained": str(pretrained), "head": str(folder / "head.npz"), "prefix": str(folder / "prefix.onnx")}


def median_row(rows: list[tuple[float, float | None, str]]) -> tuple[float, float | None, str]:
    """One row of the table from repeated runs: the median wall time, the last run's top-1, each run's time."""
    wall = statistics.median(r[0] for r in rows)
    each = f"; median of {len(rows)} runs: {', '.join(f'{r[0]:.2f}' for r in rows)} s" if len(rows) > 1 else ""
    return wall, rows[-1][1], rows[-1][2] + each


def report(runs: dict[tuple[str, int], list[tuple[float, float | None, str]]], epochs: list[int]) -> None:
    """The markdown table of median rows and the ratios issue 4 sets targets for, each the median of the rounds'
    ratios."""
    results = {key: median_row(rows) for key, rows in runs.items()}
    print("| row | epochs | wall s (process start to saved model) | val top-1 | what |")
    print("|---|---|---|---|---|")
    for (row, e), (wall, top1, what) in results.items():
        print(f"| {row} | {e if row != 'floor' else '-'} | {wall:.1f} | "
              f"{'-' if top1 is None else f'{top1:.4f}'} | {what} |")
    print()
    for e in epochs:
        for slow, fast, target in (("pytorch", "cache", "issue: >= 20 at 30 epochs, >= 8 at 5"),
                                   ("nocache", "cache", "the cache's own gain"),
                                   ("cache", "floor", "issue 4: <= 1.5; issue 17: <= 1.1"),
                                   ("late-nocache", "late-cache", "issue: >= 3, top-1 within 1 point")):
            other = ("floor", 0) if fast == "floor" else (fast, e)
            a, b = runs.get((slow, e)), runs.get(other)
            if a and b:
                ratio = statistics.median(x[0] / y[0] for x, y in zip(a, b))
                top1 = results[(slow, e)][1], results[other][1]
                points = f", top-1 {100 * (top1[0] - top1[1]):+.1f} points" if None not in top1 else ""
                print(f"- {e} epochs: {slow} / {fast} = {ratio:.2f}{points} ({target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 5], help="epoch counts to run each row at")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ImageFolder with train/ and val/")
    parser.add_argument("--limit", type=int, help="use only the first N images of each split (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--late", default=UNTIL, help="SPEC of --freeze until: for the late rows (the output of the "
                        "second-to-last block: block 15, _conv_head and the head train)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the floor and each row this many times, in turn; the table shows median wall times")
    parser.add_argument("--child", choices=["torch", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((torch_child if args.child == "torch" else floor_child)(json.loads(args.spec))))
        return

    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        folder = Path(tmp)
        data = limited_lists(args.data, args.limit, folder) if args.limit else {"data": str(args.data)}
        files = prepare(folder, data)
        pretrained = Path(files["pretrained"])
        print(f"{MODEL}, {args.data}{f' (first {args.limit} images per split)' if args.limit else ''}, "
              f"batch {args.batch_size}, {THREADS} threads, AdamW with ftonnx's default lr and schedule\n", flush=True)
        ftonnx_rows = {"cache": [], "nocache": ["--no-cache"],
                       "late-cache": ["--freeze", f"until:{args.late}", "--no-augment"],
                       "late-nocache": ["--freeze", f"until:{args.late}", "--no-augment", "--no-cache"]}
        runs: dict[tuple[str, int], list[tuple[float, float | None, str]]] = {}
        for _ in range(args.repeat):
            if "floor" in args.rows:
                floor = {"data_args": data, "prefix": files["prefix"], "threads": THREADS}
                runs.setdefault(("floor", 0), []).append(child_row("floor", floor))
            for e in args.epochs:
                for row in args.rows:
                    key, out = (row, e), folder / f"{row}-{e}"
                    shutil.rmtree(out, ignore_errors=True)
                    if row in ftonnx_rows:
                        runs.setdefault(key, []).append(ftonnx_row(pretrained, data, out, e, args.batch_size,
                                                                   ftonnx_rows[row]))
                    elif row == "pytorch":
                        runs.setdefault(key, []).append(child_row("torch", {
                            "data_args": data, "head": files["head"], "epochs": e, "batch_size": args.batch_size,
                            "threads": THREADS, "out": str(out) + ".pt"}))
                    else:
                        continue
                    print(f"{row}, {e} epochs: {runs[key][-1][0]:.1f} s", file=sys.stderr, flush=True)
        report(runs, args.epochs)


if __name__ == "__main__":
    main()
