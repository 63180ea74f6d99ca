"""Decode throughput of ftonnx's Loader: one thread against the thread pool, with and without JPEG draft mode.

Decodes every image of hymenoptera's train and val sets (398) at 224x224 (shorter side 256, center
crop, normalised, NCHW) and prints images per second for each setting.

    python tools/bench_decode.py [--data ../shared/datasets/hymenoptera] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ftonnx.data import Dataset, Loader, discover
from ftonnx.metadata import Preprocess

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera"


def rate(dataset: Dataset, workers: int, draft: bool, repeat: int, batch_size: int) -> float:
    """Best images/s over `repeat` full passes."""
    loader = Loader(dataset, Preprocess(), batch_size=batch_size, workers=workers, draft=draft)
    best = 0.0
    for epoch in range(repeat):
        start = time.perf_counter()
        count = sum(len(y) for _, y in loader.epoch(epoch))
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a folder with train/ and val/")
    parser.add_argument("--repeat", type=int, default=2, help="passes per setting; the best is reported")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    train, val = discover(args.data)
    dataset = Dataset(train.samples + (val.samples if val else []), train.classes)
    for path, _ in dataset.samples:  # read every file once so that the first setting is not timing the disk
        Path(path).read_bytes()
    pool = os.cpu_count() or 1
    print(f"{len(dataset.samples)} images -> 224x224, best of {args.repeat}, {pool} CPU cores")
    print(f"{'threads':>8}  {'draft':>5}  {'images/s':>9}  {'speed-up':>8}")
    base = None
    for workers in (1, pool):
        for draft in (False, True):
            r = rate(dataset, workers, draft, args.repeat, args.batch_size)
            base = base or r
            print(f"{workers:>8}  {'on' if draft else 'off':>5}  {r:>9.1f}  {r / base:>7.2f}x")


if __name__ == "__main__":
    main()
