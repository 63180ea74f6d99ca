"""What each exported variant costs and how much it deviates: file size, CPU latency at batch 1, val
top-1, and the largest probability difference from the float model on the val set."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ftonnx.data import Dataset, Loader
from ftonnx.errors import FtonnxError
from ftonnx.evaluate import class_probabilities
from ftonnx.metadata import Preprocess
from ftonnx.runtime import image_input, inference_session

REFERENCE = "float"


def latency_ms(session: Any, sample: np.ndarray, *, warmup: int = 10, runs: int = 50) -> float:
    """Median wall time in milliseconds of `runs` runs on `sample`, after `warmup` untimed runs."""
    feed = {image_input(session)[0]: sample}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def accuracy_and_drift(variants: dict[str, Path], val: Dataset, preprocess: Preprocess) -> dict[str, dict]:
    """Per variant, val top-1 and the largest |probability - the float model's probability| over `val`.

    One decode pass feeds every variant, so the report costs one forward pass per variant; top-1 is
    the argmax of the probabilities, as `ftonnx.evaluate.evaluate` counts it from the logits.
    """
    sessions = {name: inference_session(path) for name, path in variants.items()}
    worst, hits, count = dict.fromkeys(sessions, 0.0), dict.fromkeys(sessions, 0), 0
    for x, y in Loader(val, preprocess, batch_size=32).epoch(0):
        probs = {name: class_probabilities(s, x) for name, s in sessions.items()}
        for name, p in probs.items():
            worst[name] = max(worst[name], float(np.abs(p - probs[REFERENCE]).max()))
            hits[name] += int((p.argmax(axis=1) == y).sum())
        count += len(y)
    if not count:
        raise FtonnxError("no validation image could be decoded; nothing to report accuracy on")
    return {name: {"top1": hits[name] / count, "max_prob_diff": worst[name]} for name in sessions}


def measure(variants: dict[str, Path], val: Dataset | None, preprocess: Preprocess, sample: np.ndarray, *,
            threads: int = 1, warmup: int = 10, runs: int = 50) -> dict[str, Any]:
    """The report for `variants` (name -> file; REFERENCE is the float model); accuracy entries are
    None without a val set. `sample` is one input batch of size 1 for the latency runs."""
    quality = accuracy_and_drift(variants, val, preprocess) if val else {}
    float_bytes = variants[REFERENCE].stat().st_size
    rows = []
    for name, path in variants.items():
        size = path.stat().st_size
        rows.append({"name": name, "file": path.name, "bytes": size, "size_vs_float": size / float_bytes,
                     "latency_ms": latency_ms(inference_session(path, threads=threads), sample, warmup=warmup,
                                              runs=runs),
                     **quality.get(name, {"top1": None, "max_prob_diff": None})})
    return {"threads": threads, "warmup": warmup, "runs": runs, "val_images": len(val.samples) if val else 0,
            "variants": rows}


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table with a line saying how latency was measured."""
    head = ["variant", "file", "size MB", "of float", "latency ms", "val top-1", "max |dp|"]
    lines = [[r["name"], r["file"], f"{r['bytes'] / 1e6:.2f}", f"{100 * r['size_vs_float']:.0f}%",
              f"{r['latency_ms']:.2f}", "-" if r["top1"] is None else f"{100 * r['top1']:.2f}%",
              "-" if r["max_prob_diff"] is None else f"{r['max_prob_diff']:.4f}"] for r in report["variants"]]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [head, *lines]]
    text.append(f"CPU latency: batch 1, median of {report['runs']} runs after {report['warmup']} warm-up, "
                f"{report['threads']} intra-op thread(s); accuracy on {report['val_images']} val images")
    names = {r["name"] for r in report["variants"]}
    if "fp16" in names:
        text.append("fp16 targets GPUs and NPUs: a CPU without float16 kernels runs it through casts, slower")
    if any(n.endswith(".ort") for n in names):
        text.append(".ort files hold the optimisations every CPU can run (no x86 NCHWc layout): slower on x86")
    return "\n".join(text)
