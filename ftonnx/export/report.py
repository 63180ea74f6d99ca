"""What each exported variant costs and how much it deviates: file size, CPU latency at batch 1, val
top-1, the largest probability difference from the float model on the val set, and the share of its
nodes each phone accelerator (NNAPI, CoreML) can take."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftonnx.data import Dataset, Loader
from ftonnx.data.images import to_array
from ftonnx.errors import FtonnxError
from ftonnx.evaluate import class_probabilities
from ftonnx.export.mobile import PROVIDERS, mobile_support
from ftonnx.metadata import Preprocess
from ftonnx.runtime import fixed_batch, image_input, inference_session

REFERENCE = "float"


@dataclass(frozen=True)
class Variant:
    """One exported file: its name in the report, its path, the channel order of the uint8 pixels it takes
    (None: the model's preprocessed input), and for the accelerator check the ONNX file checked in its place
    (an .ort file's source, a float16 file's float twin), the ONNX Runtime optimisation level it gets first,
    and whether it is then converted to float16 (see `ftonnx.export.mobile`)."""

    name: str
    path: Path
    pixels: str | None = None
    source: Path | None = None
    level: str = "basic"
    half: bool = False


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


def _batches(val: Dataset, preprocess: Preprocess):
    """(pixels uint8 NHWC, model input float32, labels) per batch: one decode feeds both kinds of variant."""
    for pixels, y in Loader(val, preprocess, batch_size=32, pixels=True).epoch(0):
        yield pixels, np.stack([to_array(p, preprocess) for p in pixels]), y


def _in_order(pixels: np.ndarray, order: str) -> np.ndarray:
    """Decoded RGB (or gray) pixels in the channel order a pixel variant takes."""
    return np.ascontiguousarray(pixels[..., ::-1]) if order == "BGR" else pixels


def accuracy_and_drift(variants: list[Variant], val: Dataset, preprocess: Preprocess) -> dict[str, dict]:
    """Per variant, val top-1 and the largest |probability - the float model's probability| over `val`.

    One decode pass feeds every variant (pixel variants the decoded image, the others its preprocessed
    tensor), so the report costs one forward pass per variant; top-1 is the argmax of the probabilities,
    as `ftonnx.evaluate.evaluate` counts it from the logits.
    """
    sessions = {v.name: (inference_session(v.path), v.pixels) for v in variants}
    worst, hits, count = dict.fromkeys(sessions, 0.0), dict.fromkeys(sessions, 0), 0
    for pixels, x, y in _batches(val, preprocess):
        probs = {name: class_probabilities(s, x if order is None else _in_order(pixels, order))
                 for name, (s, order) in sessions.items()}
        for name, p in probs.items():
            worst[name] = max(worst[name], float(np.abs(p - probs[REFERENCE]).max()))
            hits[name] += int((p.argmax(axis=1) == y).sum())
        count += len(y)
    if not count:
        raise FtonnxError("no validation image could be decoded; nothing to report accuracy on")
    return {name: {"top1": hits[name] / count, "max_prob_diff": worst[name]} for name in sessions}


def _mobile(variant: Variant) -> dict[str, Any]:
    return mobile_support(variant.source or variant.path, level=variant.level, half=variant.half)


def measure(variants: list[Variant], val: Dataset | None, preprocess: Preprocess, sample: np.ndarray, *,
            threads: int = 1, warmup: int = 10, runs: int = 50) -> dict[str, Any]:
    """The report for `variants` (the one named REFERENCE is the float model); accuracy entries are None
    without a val set. `sample` is one decoded image, uint8 (H, W, channels), for the latency runs: batch 1,
    or a variant's fixed batch of copies of it."""
    quality = accuracy_and_drift(variants, val, preprocess) if val else {}
    float_bytes = next(v.path for v in variants if v.name == REFERENCE).stat().st_size
    tensor = to_array(sample, preprocess)[None]
    rows = []
    for v in variants:
        size = v.path.stat().st_size
        session = inference_session(v.path, threads=threads)
        x = np.repeat(tensor if v.pixels is None else _in_order(sample[None], v.pixels), fixed_batch(session) or 1,
                      axis=0)
        rows.append({"name": v.name, "file": v.path.name, "bytes": size, "size_vs_float": size / float_bytes,
                     "latency_ms": latency_ms(session, x, warmup=warmup, runs=runs),
                     **quality.get(v.name, {"top1": None, "max_prob_diff": None}), "mobile": _mobile(v)})
    return {"threads": threads, "warmup": warmup, "runs": runs, "val_images": len(val.samples) if val else 0,
            "variants": rows}


def _share(row: dict[str, Any], key: str) -> str:
    mobile = row.get("mobile") or {}
    return f"{100 * mobile[key]['share']:.0f}%" if key in mobile else "-"


def _not_taken(report: dict[str, Any]) -> list[str]:
    """For the variants with fixed shapes (their .ort twins alike), what each accelerator leaves out, and why;
    variants with the same reasons share a line."""
    reasons: dict[str, list[str]] = {}
    for row in report["variants"]:
        mobile = row.get("mobile") or {}
        if row["name"].endswith(".ort") or any("dynamic input shape" in m["unsupported"] for m in mobile.values()):
            continue
        left = "; ".join(f"{PROVIDERS[key][0]}: " + ", ".join(f"{why} ({n})" for why, n in m["unsupported"].items())
                         for key, m in mobile.items() if m["unsupported"])
        if left:
            reasons.setdefault(left, []).append(row["name"])
    return [f"  {', '.join(names)}: {left}" for left, names in reasons.items()]


def _notes(report: dict[str, Any]) -> list[str]:
    """The lines under the table: how it was measured, accelerators, int8, on-device steps, formats."""
    text = [f"CPU latency: batch 1 (fixed-shape variants: their batch), median of {report['runs']} runs after "
            f"{report['warmup']} warm-up, {report['threads']} intra-op thread(s); accuracy on {report['val_images']} "
            "val images",
            "NNAPI, CoreML (NeuralNetwork), CoreML ML (ML Program): share of nodes ONNX Runtime's mobile checker gives "
            "the accelerator; a dynamic shape gives it none (--static fixes the shapes)"]
    if not_taken := _not_taken(report):
        text += ["left to the CPU in the fixed-shape variants:", *not_taken]
    if int8 := report.get("int8"):
        kept = ", ".join(int8["keep_float"]) or "none"
        if int8.get("scales") == "qat":
            text.append(f"int8: QAT scales ({int8['qat_tensors']} tensors, as the run trained with them), the outputs' "
                        f"ranges their extremes on {int8['images']} images, no bias correction; kept in float: {kept}")
        else:
            text.append(f"int8: {int8['method']} calibration on {int8['images']} images, bias corrected; kept in "
                        f"float: {kept}")
    if step := report.get("on_device_step"):
        text.append(f"on-device training step, batch {step['batch']}: whole graph {step['whole_graph_ms']:.1f} ms, "
                    f"head on stored features {step['head_ms']:.3f} ms ({step['speedup']:.0f}x; the features "
                    f"computed once: {step['features_once_ms']:.1f} ms)")
    names = {r["name"] for r in report["variants"]}
    if any(n.startswith("fp16") for n in names):
        text.append("fp16 targets GPUs and NPUs: a CPU without float16 kernels runs it through casts, slower")
    if any(n.endswith(".ort") for n in names):
        text.append(".ort files: every CPU optimisation applied once (no x86 NCHWc layout: slower on x86), except "
                    "for fixed-shape variants, which keep the standard ops NNAPI and CoreML take")
    return text


def format_table(report: dict[str, Any]) -> str:
    """The report as an aligned text table, with lines saying how it was measured, which nodes each
    accelerator leaves to the CPU in the fixed-shape variants, what int8 kept in float, and what an
    on-device training step costs each way."""
    head = ["variant", "file", "size MB", "of float", "latency ms", "val top-1", "max |dp|", "NNAPI", "CoreML",
            "CoreML ML"]
    lines = [[r["name"], r["file"], f"{r['bytes'] / 1e6:.2f}", f"{100 * r['size_vs_float']:.0f}%",
              f"{r['latency_ms']:.2f}", "-" if r["top1"] is None else f"{100 * r['top1']:.2f}%",
              "-" if r["max_prob_diff"] is None else f"{r['max_prob_diff']:.4f}",
              *(_share(r, key) for key in PROVIDERS)] for r in report["variants"]]
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [head, *lines]]
    return "\n".join(text + _notes(report))
