"""Train chosen parameters as an offset from their pretrained values: w = w0 + s * delta.

ONNX Runtime 1.19.2's optimizers apply one learning rate to every parameter. Training the offset
`delta` (starting at zero) in place of `w`, with `w0` kept as a frozen copy under the parameter's own
name, gives the group its own rate: Adam ignores a gradient's scale, so w moves s times as far per
step as a plain parameter would (s = k for a rate k * lr); plain SGD moves delta by s * lr * grad and
w by s**2 * lr * grad (s = sqrt(k)). It also makes the distance to the starting point a cheap
tensor, ||w - w0||^2 = s^2 * ||delta||^2 (L2-SP), and keeps w0 at hand for a reference forward
(DELTA). Folding back is w0 + s * delta, computed as the graph computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign, clone


@dataclass
class Reparametrised:
    """The rewritten model; for each parameter, its trainable offset (`deltas`) and the tensor the graph
    now reads in its place (`effective`); the scale s."""

    model: onnx.ModelProto
    scale: float = 1.0
    deltas: dict[str, str] = field(default_factory=dict)
    effective: dict[str, str] = field(default_factory=dict)


def reparametrise(model: onnx.ModelProto, params: list[str], scale: float) -> Reparametrised:
    """A copy of `model` in which every node that read a parameter in `params` reads w0 + scale * delta,
    delta being a new zero initializer `<param>/delta`; the parameter keeps its name and value (w0)."""
    if not scale > 0:
        raise FtonnxError(f"the reparametrisation scale must be positive, not {scale}")
    out = clone(model)
    g = GraphIndex(out)
    missing = [p for p in params if p not in g.initializers]
    if missing:
        raise FtonnxError(f"not initializers of the model: {', '.join(missing[:5])}")
    result = Reparametrised(out, scale)
    added: list[onnx.NodeProto] = []
    for name in params:
        delta = g.fresh(name, "delta")
        w0 = g.initializers[name]
        out.graph.initializer.append(numpy_helper.from_array(
            np.zeros(tuple(w0.dims), onnx.helper.tensor_dtype_to_np_dtype(w0.data_type)), delta))
        step = delta
        if scale != 1.0:
            factor = g.constant(name, "scale", np.array(scale, np.float32))
            mul = g.node("Mul", [delta, factor.output[0]], name, "step")
            added += [factor, mul]
            step = mul.output[0]
        add = g.node("Add", [name, step], name, "w")
        added.append(add)
        result.deltas[name], result.effective[name] = delta, add.output[0]
    for node in g.nodes:
        assign(node.input, [result.effective.get(i, i) for i in node.input])
    assign(out.graph.node, [*added, *g.nodes])
    return result


def fold(w0: np.ndarray, delta: np.ndarray, scale: float) -> np.ndarray:
    """w0 + scale * delta in float32, rounded as the training graph rounds it."""
    step = delta.astype(np.float32) if scale == 1.0 else delta.astype(np.float32) * np.float32(scale)
    return w0.astype(np.float32) + step
