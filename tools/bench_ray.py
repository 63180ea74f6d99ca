"""The activation cache built locally vs on Ray (`--ray`), and what that predicts for a cluster.

On hymenoptera (245 training + 153 validation images) with EfficientNet-Lite0 (the zoo's ONNX export) cut at
its pooling, as `ftonnx finetune lite0.onnx --node AvgPool` caches it, decoding included:

- local: `ActivationCache.build` of both sets, one ONNX Runtime session on every core (the default path);
- ray, first job: `ftonnx.train.raycache.build_caches` on a local Ray cluster already started (one actor of
  1 CPU per core: actor start, session creation, the job);
- ray, second job: the same again (actors started afresh, the cluster warm);
- ray with start and stop: what `--ray` costs end to end (start a local cluster, the job, stop it).

Each row is the median of --repeat runs. It checks that the Ray cache equals the local one (within 1e-6),
then prints the table, the overhead ratios, the bytes per image in and out, the rate per core (the second
job's images/s over its actors), and the time that rate predicts for 1 M images on 8 nodes of 16 cores
(one core kept for Ray's reads and the driver). docs/scale.md explains the model.

    python tools/bench_ray.py                  # the full set, 3 repeats (a few minutes on 2 cores)
    python tools/bench_ray.py --limit 32 --repeat 1    # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
IMAGES, NODES, CORES = 1_000_000, 8, 16


def prefix_and_sets(limit: int | None):
    """Lite0's frozen prefix (cut at AvgPool, a 2-class head) and hymenoptera's two sets (`limit` images each)."""
    from ftonnx import zoo
    from ftonnx.data import discover
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head
    from ftonnx.graph.split import split

    with tempfile.TemporaryDirectory() as folder:
        model = zoo.export_model("efficientnet-lite0", Path(folder) / "lite0.onnx")
    prefix = split(add_head(cut(model, "AvgPool"), 2), ["head.flat"])[0]
    sets = discover(str(HYMENOPTERA))
    if limit:
        sets = tuple(dataclasses.replace(s, samples=s.samples[::max(1, len(s.samples) // limit)][:limit]) for s in sets)
    return prefix, sets


def timed(step, repeat: int) -> tuple[float, object]:
    """The median wall time of `repeat` runs of `step()`, and its last result."""
    seconds, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def measure(prefix, sets, repeat: int) -> dict[str, float]:
    from ftonnx import cluster
    from ftonnx.train.cache import ActivationCache
    from ftonnx.train.raycache import build_caches

    jobs = [(sets[0], 1), (sets[1], 1)]
    rows = {}
    rows["local"], local = timed(lambda: [ActivationCache.build(prefix, s) for s in sets], repeat)
    with cluster.connected() as where:
        print(f"ray: {where}", file=sys.stderr)
        rows["ray, first job"], remote = timed(lambda: build_caches(prefix, jobs), 1)
        rows["ray, second job"], _ = timed(lambda: build_caches(prefix, jobs), repeat)

    def end_to_end():
        with cluster.connected():
            return build_caches(prefix, jobs)

    rows["ray with start and stop"], _ = timed(end_to_end, repeat)
    for mine, theirs in zip(remote, local):
        for name in theirs.names:
            np.testing.assert_allclose(mine.arrays[name], theirs.arrays[name], rtol=0, atol=1e-6)
    rows["bytes out"] = sum(a[0].nbytes for a in local[0].arrays.values())
    return rows


def report(rows: dict[str, float], sets, repeat: int) -> None:
    images = sum(len(s.samples) for s in sets)
    bytes_in = statistics.mean(os.path.getsize(path) for s in sets for path, _ in s.samples)
    actors = os.cpu_count() or 1
    print(f"\n{images} images, {actors} cores, median of {repeat}\n")
    print("| build | wall s | images/s | / local |")
    print("|---|---|---|---|")
    for name in ("local", "ray, first job", "ray, second job", "ray with start and stop"):
        print(f"| {name} | {rows[name]:.2f} | {images / rows[name]:.1f} | {rows[name] / rows['local']:.2f}x |")
    per_core = images / rows["ray, second job"] / actors
    cluster = per_core * (NODES * CORES - 1)
    print(f"\nin: {bytes_in / 1024:.1f} KiB per image (the encoded file); out: {rows['bytes out']:.0f} B per image "
          f"({rows['bytes out'] * IMAGES / 1e9:.2f} GB for {IMAGES:,} images)")
    print(f"rate per core (second job / actors): {per_core:.1f} images/s")
    print(f"{IMAGES:,} images on {NODES} nodes x {CORES} cores ({NODES * CORES - 1} actors): "
          f"{IMAGES / cluster / 60:.1f} min at {cluster:.0f} images/s; "
          f"{bytes_in * IMAGES / 1e9:.0f} GB in, {rows['bytes out'] * IMAGES / 1e9:.2f} GB out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="Images of each set (default: all 245 + 153).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per row (the median is shown).")
    args = parser.parse_args()
    prefix, sets = prefix_and_sets(args.limit)
    report(measure(prefix, sets, args.repeat), sets, args.repeat)


if __name__ == "__main__":
    main()
