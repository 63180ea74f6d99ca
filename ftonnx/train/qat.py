"""Quantisation-aware training's share of the training graph and of a run's results.

The forward graph, once made trainable, gets fake quantisation where the run's int8 model quantises
(`ftonnx.graph.fakequant`, from the plan `ftonnx.export.qat` reads off the int8 model the run starts
from). Activation scales downstream of a trained parameter are learned as s0 * exp(gain * t): Adam moves
t by about the learning rate per step, so gain = SCALE_RATE / (peak rate) lets a scale change by about
1 % per step at most, whatever the rate (a run of 80 steps can double or halve one). The learned t are
parameters like any other (checkpointed, resumed); the manifest says how to turn them back into the ranges
the export quantises with (`learned_ranges`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ftonnx.errors import FtonnxError
from ftonnx.graph.fakequant import add_fake_quant
from ftonnx.graph.index import clone
from ftonnx.graph.qdqplan import ActivationQuant, QuantPlan
from ftonnx.graph.trainable import TrainableGraph
from ftonnx.train.run import RunFolder

SCALE_RATE = 0.01


def scale_gain(lr: float) -> float:
    """The gain of learned scales for a run whose peak learning rate is `lr`."""
    return SCALE_RATE / lr


def fake_quantised(forward: TrainableGraph, plan: QuantPlan, trainable: list[str],
                   gain: float) -> tuple[TrainableGraph, list[str], dict[str, Any]]:
    """(`forward` with fake quantisation, the learned scales' parameters, the manifest's "qat" entry)."""
    model = clone(forward.model)
    result = add_fake_quant(model, plan, trainable, gain)
    manifest = {"gain": gain, "learned": result.learned, "fixed": result.fixed, "weights": result.weights,
                "outputs": result.outputs}
    return dataclasses.replace(forward, model=result.model), [g["param"] for g in result.learned.values()], manifest


def describe(manifest: dict[str, Any]) -> str:
    """One line on what a manifest's "qat" entry fake-quantises."""
    learned = sum(len(g["tensors"]) for g in manifest["learned"].values())
    outputs = f"; left in float: {', '.join(manifest['outputs'])}" if manifest["outputs"] else ""
    return (f"qat: fake quantisation of {len(manifest['weights'])} weights (per channel) and "
            f"{learned + len(manifest['fixed'])} activations ({learned} with learned scales){outputs}")


def learned_ranges(run_dir: str | os.PathLike, manifest: dict[str, Any], which: str = "best") -> dict[str, list[float]]:
    """{tensor: [lowest, highest]} of the learned scales in the run's `which` checkpoint, as the graph computes
    them (float32 s0 * exp(gain * t)); the export's quantiser gives back those scales and zero points."""
    from onnxruntime.training.api import CheckpointState

    run = RunFolder(run_dir)
    sidecar = run.sidecar(which)
    if sidecar is None:
        raise FtonnxError(f"{run}: no {which} checkpoint; has an epoch completed?")
    state = CheckpointState.load_checkpoint(str(run.checkpoint_path(sidecar)))
    gain = np.float32(manifest["gain"])
    ranges = {}
    for group in manifest["learned"].values():
        t = np.array(state.parameters[group["param"]].data, np.float32)
        scale = float(np.exp(gain * t) * np.float32(group["scale"]))
        quant = ActivationQuant(group["scale"], group["zero_point"], group["qmin"], group["qmax"], "")
        ranges.update({tensor: list(quant.range(scale)) for tensor in group["tensors"]})
    return ranges
