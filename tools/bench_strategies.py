"""Finetuning strategies against ftonnx's default on few-shot tasks: the README's strategy tables.

Every run finetunes the zoo's EfficientNet-Lite0 (cut at its pooling, a new head) with ftonnx's
defaults for a training backbone: AdamW at 1e-4, one warmup epoch, cosine decay, light augmentation
(random resized crop and flip), batch 16, through the whole graph. Tasks:

- h10-mid, h30-mid: hymenoptera with 10 or 30 training images per class, drawn with the seed,
  `--freeze until:/_blocks.7/Add` (blocks 8 to 15, the head convolution and the head train);
- h10-none, h30-none: the same images, `--freeze none` (full finetune);
- digits-mid: scikit-learn's digits, 5 training images per class, `--freeze until:/_blocks.7/Add`;
- imbalanced (the class-weights table): hymenoptera with 30 ants and 6 bees, `--freeze backbone`
  (the head trains on cached features), scored by top-1 and by balanced accuracy (mean per-class recall).
Each task trains about 24 optimizer steps (12 epochs of 20 images, 6 of 60 or of 50; 30 for the head).

Rows add one strategy to the default: `--backbone-lr-mult 0.1`, `--l2sp 0.01`, `--delta 0.01`,
`--label-smoothing 0.1`, `--augment strong`. A run is scored by its last epoch's weights on the
whole validation set (153 hymenoptera or 360 digits images); while training it validates on one
held-out training image per class only, so that no epoch is chosen on the reported images and
validation costs nothing. Cells are the mean and the sample standard deviation over the seeds, each
seed drawing its own training images. Early stopping is not in the table: it saves epochs, not accuracy.

    python tools/bench_strategies.py                   # both README tables: about 35 min on 2 cores
    python tools/bench_strategies.py --tasks h10-mid --strategies default l2sp --seeds 0 --epochs 1 \\
        --val-limit 20                                 # a smoke run, a minute or so
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
MID = "until:/_blocks.7/Add"


@dataclass(frozen=True)
class Task:
    data: str  # "hymenoptera" or "digits"
    per_class: dict[str, int] | int  # training images per class
    freeze: str
    epochs: int


TASKS = {
    "h10-mid": Task("hymenoptera", 10, MID, 12),
    "h10-none": Task("hymenoptera", 10, "none", 12),
    "h30-mid": Task("hymenoptera", 30, MID, 6),
    "h30-none": Task("hymenoptera", 30, "none", 6),
    "digits-mid": Task("digits", 5, MID, 6),
    "imbalanced": Task("hymenoptera", {"ants": 30, "bees": 6}, "backbone", 30),
}
STRATEGIES = {
    "default": {},
    "--backbone-lr-mult 0.1": {"backbone_lr_mult": 0.1},
    "--l2sp 0.01": {"l2sp": 0.01},
    "--delta 0.01": {"delta": 0.01},
    "--label-smoothing 0.1": {"label_smoothing": 0.1},
    "--augment strong": {"augment": "strong"},
    "--class-weights auto": {"class_weights": "auto"},
}
MAIN_TASKS = ["h10-mid", "h10-none", "h30-mid", "h30-none", "digits-mid"]
MAIN_STRATEGIES = [s for s in STRATEGIES if s != "--class-weights auto"]
IMBALANCED_STRATEGIES = ["default", "--class-weights auto"]


def subset_lists(root: Path, task: Task, seed: int, folder: Path) -> dict[str, str]:
    """`discover` arguments for the task's few-shot training images of root/train (drawn with `seed`) and
    one other training image per class to validate on while training."""
    rng = np.random.default_rng([seed, 17])
    train, val = [], []
    for c in sorted(p.name for p in (root / "train").iterdir() if p.is_dir()):
        files = sorted((root / "train" / c).iterdir())
        n = task.per_class[c] if isinstance(task.per_class, dict) else task.per_class
        chosen = rng.permutation(len(files))[:n + 1]
        train += [f"train/{c}/{files[i].name} {c}" for i in chosen[:n]]
        val.append(f"train/{c}/{files[chosen[n]].name} {c}")
    for name, lines in (("train", train), ("val", val)):
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return {"data": str(root), "list_file": str(folder / "train.txt"), "val_list": str(folder / "val.txt")}


def score(result, val_set) -> dict[str, float]:
    """Top-1 and balanced accuracy of the run's last epoch on the whole validation set."""
    from ftonnx.evaluate import evaluate
    from ftonnx.export.inference import with_weights
    from ftonnx.train.loop import best_weights

    last = best_weights(result.run_dir, result.trainable, which="last")
    report = evaluate(with_weights(onnx.load(str(result.model_path)), last), val_set)
    recalls = [r for r in report["per_class"].values() if r is not None]
    return {"top1": report["top1"], "balanced": float(np.mean(recalls))}


def run_one(pretrained: Path, root: Path, val_set, task: Task, options: dict, seed: int, epochs: int | None,
            work: Path) -> dict[str, float]:
    """Finetune once with ftonnx's pipeline; the scores and the wall seconds."""
    from ftonnx.pipeline import data_args, finetune
    from ftonnx.train.config import TrainConfig

    folder = Path(tempfile.mkdtemp(dir=work))
    args = data_args(**subset_lists(root, task, seed, folder), seed=seed)
    config = TrainConfig(epochs=epochs or task.epochs, batch_size=16, freeze=task.freeze, seed=seed, **options)
    start = time.perf_counter()
    result = finetune(pretrained, "auto", args, folder / "run", config)
    return {**score(result, val_set), "seconds": time.perf_counter() - start}


def datasets(work: Path, val_limit: int | None) -> dict[str, tuple[Path, object]]:
    """Each data set's root and its validation set (`val_limit` of its images drawn at random, for smoke runs)."""
    import dataclasses

    from ftonnx.data import discover
    from ftonnx.demo import write_digits

    roots = {"hymenoptera": HYMENOPTERA, "digits": write_digits(work / "digits")}
    found = {}
    for name, root in roots.items():
        _, val = discover(str(root))
        if val_limit:
            chosen = np.random.default_rng(0).permutation(len(val.samples))[:val_limit]
            val = dataclasses.replace(val, samples=[val.samples[i] for i in sorted(chosen)])
        found[name] = (root, val)
    return found


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def table(results: dict, columns: list[tuple[str, str, str]], strategies: list[str]) -> str:
    """Markdown: one row per strategy, a column per (heading, task, key): mean ± sd of `key` over the seeds."""
    head = ["strategy", *(heading for heading, _, _ in columns)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in strategies:
        cells = [cell([r[key] for r in results[(t, s)]]) if results.get((t, s)) else "-" for _, t, key in columns]
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=[*MAIN_TASKS, "imbalanced"], choices=list(TASKS))
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), help="[default: per table]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="Epochs of every task [default: per task, see above].")
    parser.add_argument("--val-limit", type=int, help="Score on this many validation images (smoke runs).")
    parser.add_argument("--json", type=Path, help="Also write every run's result here.")
    args = parser.parse_args()
    from ftonnx import zoo

    start = time.perf_counter()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        work = Path(tmp)
        pretrained = work / "lite0.onnx"
        zoo.export_model("efficientnet-lite0", pretrained)
        data = datasets(work, args.val_limit)
        for task in args.tasks:
            strategies = args.strategies or (IMBALANCED_STRATEGIES if task == "imbalanced" else MAIN_STRATEGIES)
            for strategy in strategies:
                for seed in args.seeds:
                    root, val = data[TASKS[task].data]
                    r = run_one(pretrained, root, val, TASKS[task], STRATEGIES[strategy], seed, args.epochs, work)
                    results.setdefault((task, strategy), []).append({**r, "seed": seed})
                    print(f"{task} | {strategy} | seed {seed}: top-1 {r['top1']:.4f}, balanced {r['balanced']:.4f}, "
                          f"{r['seconds']:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps([{"task": t, "strategy": s, **r} for (t, s), rs in results.items()
                                         for r in rs], indent=1))
    epochs = f"{args.epochs} epochs" if args.epochs else "epochs per task"
    print(f"\nval top-1 of the last epoch, mean ± sd over seeds {args.seeds}, {epochs}\n")
    columns = [(f"{t} ({TASKS[t].freeze})", t, "top1") for t in args.tasks if t != "imbalanced"]
    print(table(results, columns, args.strategies or MAIN_STRATEGIES))
    if "imbalanced" in args.tasks:
        print("\nhymenoptera with 30 ants and 6 bees, --freeze backbone\n")
        columns = [("val top-1", "imbalanced", "top1"), ("balanced accuracy", "imbalanced", "balanced")]
        print(table(results, columns, args.strategies or IMBALANCED_STRATEGIES))
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
