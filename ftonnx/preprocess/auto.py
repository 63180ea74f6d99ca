"""`--preprocess auto`: choose the normalisation by evidence, not by guess.

The pretrained model's own classifier is run on a sample of the user's images under every candidate
(each preset, in RGB and in BGR channel order); a model fed the way it was trained is confident, so
the candidate with the lowest mean prediction entropy wins. Layout, size and channel count come from
the input shape or the flags as usual: only the normalisation and the channel order are chosen here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from ftonnx.data import Dataset, Loader
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.metadata import Preprocess
from ftonnx.preprocess.presets import PRESETS, PreprocessFlags
from ftonnx.preprocess.resolve import resolve
from ftonnx.runtime import image_input, inference_session

SAMPLE = 32


@dataclass(frozen=True)
class Choice:
    """The chosen preprocessing, and every candidate's mean prediction entropy (nats), lowest first."""

    preprocess: Preprocess
    scores: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.scores[0][0]

    def summary(self) -> str:
        (best, best_score), (second, second_score) = self.scores[:2]
        return (f"--preprocess auto chose {best}: mean prediction entropy {best_score:.3f} nats on the sample, "
                f"runner-up {second} {second_score:.3f}")


def classifier_output(model: onnx.ModelProto) -> str:
    """The model's class-score output: the first output of shape (N, K) with K >= 2, or FtonnxError."""
    index = GraphIndex(model)
    for name in index.outputs:
        shape = index.shapes.get(name)
        if shape and len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2:
            return name
    raise FtonnxError("--preprocess auto judges by the pretrained model's own classifier output (N, classes), "
                      "and this model has none; pass --preprocess imagenet|inception|caffe|unit|raw")


def _candidates(model: onnx.ModelProto, flags: PreprocessFlags) -> list[tuple[str, Preprocess]]:
    """Every preset in its own channel order and, unless the order is fixed (--bgr, --gray), the other."""
    found = []
    for name in PRESETS:
        pre = resolve(model, dataclasses.replace(flags, preset=name)).require()
        found.append((f"{name} ({pre.channel_order})", pre))
        if pre.channel_order != "GRAY" and not flags.bgr:
            other = "RGB" if pre.channel_order == "BGR" else "BGR"
            flipped = dataclasses.replace(pre, channel_order=other, mean=pre.mean[::-1], std=pre.std[::-1])
            found.append((f"{name} ({other})", flipped))
    return found


def _entropy(scores: np.ndarray) -> float:
    """Mean entropy of the predicted distributions; `scores` are logits, or probabilities summing to 1."""
    scores = scores.astype(np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        p = scores
    else:
        z = np.exp(scores - scores.max(axis=1, keepdims=True))
        p = z / z.sum(axis=1, keepdims=True)
    return float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1).mean())


def choose(model: onnx.ModelProto, images: Dataset, flags: PreprocessFlags, *, sample: int = SAMPLE,
           seed: int = 0) -> Choice:
    """Run `model` on `sample` images of `images` under each candidate; the most confident one wins."""
    output = classifier_output(model)
    if not images.samples:
        raise FtonnxError("--preprocess auto needs images to judge by, and there are none")
    pick = sorted(np.random.default_rng(seed).permutation(len(images.samples))[:sample])
    subset = dataclasses.replace(images, samples=[images.samples[i] for i in pick])
    session = inference_session(model)
    name, _ = image_input(session)
    scores = []
    for label, pre in _candidates(model, flags):
        outputs = [session.run([output], {name: x})[0] for x, _ in Loader(subset, pre, batch_size=16).epoch(0)]
        scores.append((_entropy(np.concatenate(outputs)), label, pre))
    scores.sort(key=lambda s: s[0])
    return Choice(scores[0][2], [(label, score) for score, label, _ in scores])
