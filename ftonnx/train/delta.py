"""DELTA's layers and channel attention (Li et al., 2019), measured once before training.

DELTA keeps the feature maps of chosen layers close to the pretrained network's, channel by channel,
weighting each channel by how much the target task needs it. As in the paper and its reference code,
that weight comes from the pretrained network: a linear classifier (the "probe") is fitted on its
features (the tensor the head reads) for a sample of training images, then each channel of each layer
is zeroed in turn and the rise of the probe's loss measured; the weights are softmax(z / 5) of the
standardised rises (summing to 1 over a layer's channels).

Cost: one forward pass of the pretrained model over the sample, then, per layer, one forward pass of
the part between the layer and the features per channel (batched several channels at a time), except
where that part is a global pooling alone (the default layer): pooling zeros gives zeros, so zeroing
a channel of the layer zeroes the same channel of the features, and no pass is needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.graph.select import resolve
from ftonnx.progress import log
from ftonnx.runtime import inference_session
from ftonnx.train.batches import Batches

POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "AveragePool", "MaxPool")
CHANNELWISE = ("GlobalAveragePool", "GlobalMaxPool")  # channel c of the output depends on channel c alone
SAMPLE = 32  # training images the attention is measured on
TEMPERATURE = 5.0
_CHUNK_BYTES = 64 << 20  # activations per forward pass of channel variants


def delta_layers(model: onnx.ModelProto, specs: list[str] | None, backbone: list[str]) -> list[str]:
    """The tensors DELTA regularises: `specs` resolved (default: the feature map the head pools), each
    checked to depend on a trainable backbone parameter (else it would never move)."""
    index = GraphIndex(model)
    layers = [resolve(model, spec, graph=index) for spec in specs] if specs else [default_layer(model, index)]
    moving = {o for node in index.downstream(backbone) for o in node.output}
    for spec, layer in zip(specs or ["the default layer"], layers):
        if layer not in moving:
            raise FtonnxError(f"--delta-layers {spec} ({layer}): no trainable backbone parameter comes before it, "
                              "so it never moves; name a layer after the frozen part")
    return list(dict.fromkeys(layers))


def default_layer(model: onnx.ModelProto, index: GraphIndex) -> str:
    """The feature map the head pools: the input of the pooling that computes the head's feature tensor."""
    feature = metadata.read(model).feature
    if feature is None:
        raise FtonnxError("--delta needs --delta-layers SPEC: the model has no head made by ftonnx to find its "
                          "feature map")
    producer = index.producer(feature)
    return producer.input[0] if producer is not None and producer.op_type in POOLS else feature


def channel_attention(model: onnx.ModelProto, layers: list[str], batches: Batches,
                      sample: int = SAMPLE) -> dict[str, list[float]]:
    """Each layer's channel weights, measured on up to `sample` images of `batches`' first epoch."""
    start = time.monotonic()
    meta = metadata.read(model)
    if meta.feature is None or not meta.labels:
        raise FtonnxError("DELTA's channel attention needs a head made by ftonnx (feature tensor and labels)")
    inputs, labels = _sample(batches.epoch(0), sample)
    index = GraphIndex(model)
    after = {layer: _after(index, layer, meta.feature) for layer in layers}
    values = _forward(index, inputs, [meta.feature, *(s for sources, _ in after.values() for s in sources)])
    probe = _Probe(values[meta.feature], labels, len(meta.labels))
    base = probe.loss(values[meta.feature])
    attention = {layer: _weights(_rises(index, layer, *after[layer], meta.feature, values, probe) - base)
                 for layer in layers}
    log(f"DELTA: channel attention of {', '.join(layers)} measured on {len(labels)} images in "
        f"{time.monotonic() - start:.1f} s")
    return attention


def _sample(batches: Iterable, count: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first `count` samples of an epoch's batches, concatenated."""
    inputs: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray] = []
    for x, y in batches:
        inputs.append(x)
        labels.append(y)
        if sum(len(b) for b in labels) >= count:
            break
    if not labels:
        raise FtonnxError("the training set yielded no images")
    return ({name: np.concatenate([x[name] for x in inputs])[:count] for name in inputs[0]},
            np.concatenate(labels)[:count])


def _after(index: GraphIndex, layer: str, feature: str) -> tuple[list[str], bool]:
    """(the tensors the part from `layer` to `feature` reads, `layer` first; whether it must run to see a
    channel zeroed, i.e. is more than channelwise pooling)."""
    upstream = {id(n) for n in index.upstream([feature])}
    nodes = [n for n in index.downstream([layer]) if id(n) in upstream]
    produced = {o for n in nodes for o in n.output}
    reads = [i for n in nodes for i in n.input if i and i not in produced and i not in index.initializers]
    sources = list(dict.fromkeys([layer, *reads]))
    return sources, not (sources == [layer] and all(n.op_type in CHANNELWISE for n in nodes))


def _forward(index: GraphIndex, inputs: dict[str, np.ndarray], tensors: list[str]) -> dict[str, np.ndarray]:
    """The values of `tensors` for `inputs` (graph inputs among them are taken as they are)."""
    computed = [t for t in dict.fromkeys(tensors) if t not in inputs]
    values = {t: inputs[t] for t in tensors if t in inputs}
    if computed:
        session = inference_session(index.extract(index.inputs, computed), throughput=True)
        feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
        values.update(zip(computed, session.run(computed, feeds)))
    return values


def _rises(index: GraphIndex, layer: str, sources: list[str], runs: bool, feature: str,
           values: dict[str, np.ndarray], probe: "_Probe") -> np.ndarray:
    """The probe's loss with each channel (axis 1) of `layer` zeroed in turn."""
    fm = values[layer] if runs else values[feature]
    n, channels = fm.shape[:2]
    session = inference_session(index.extract(sources, [feature]), throughput=True) if runs else None
    per_pass = max(1, _CHUNK_BYTES // max(1, fm.nbytes))
    losses = np.empty(channels)
    for first in range(0, channels, per_pass):
        chosen = range(first, min(channels, first + per_pass))
        zeroed = np.repeat(fm[None], len(chosen), axis=0)
        for k, c in enumerate(chosen):
            zeroed[k, :, c] = 0
        zeroed = zeroed.reshape(-1, *fm.shape[1:])
        if session is not None:
            feeds = {s: np.concatenate([values[s]] * len(chosen)) for s in sources[1:]}
            features = session.run([feature], {**feeds, layer: zeroed})[0]
        else:
            features = zeroed
        for k, c in enumerate(chosen):
            losses[c] = probe.loss(features[k * n:(k + 1) * n])
    return losses


def _weights(rises: np.ndarray) -> list[float]:
    """softmax(standardised rises / TEMPERATURE), as DELTA's reference code weighs channels."""
    spread = rises.std()
    z = (rises - rises.mean()) / spread if spread > 0 else np.zeros_like(rises)
    e = np.exp(z / TEMPERATURE - (z / TEMPERATURE).max())
    return (e / e.sum()).tolist()


class _Probe:
    """A multinomial logistic regression on standardised features, fitted by gradient descent with a
    small L2 penalty (the step is the inverse of the loss's curvature bound, so it converges)."""

    L2, STEPS = 1e-3, 300

    def __init__(self, features: np.ndarray, labels: np.ndarray, classes: int) -> None:
        x = features.reshape(len(features), -1).astype(np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        x = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
        onehot = np.eye(classes)[labels]
        step = 1.0 / (np.linalg.norm(x, 2) ** 2 / len(x) + self.L2)
        self.w = np.zeros((x.shape[1], classes))
        for _ in range(self.STEPS):
            p = _softmax(x @ self.w)
            self.w -= step * (x.T @ (p - onehot) / len(x) + self.L2 * self.w)
        self.labels = labels

    def loss(self, features: np.ndarray) -> float:
        """Mean cross-entropy of the probe on `features` of the fitted images."""
        x = (features.reshape(len(features), -1).astype(np.float64) - self.mean) / self.std
        p = _softmax(np.hstack([x, np.ones((len(x), 1))]) @ self.w)
        return float(-np.log(p[np.arange(len(x)), self.labels] + 1e-12).mean())


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
