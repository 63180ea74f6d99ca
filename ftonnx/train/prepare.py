"""Rewrite a forward graph so that ONNX Runtime's training graph behaves as ftonnx promises.

ORT 1.19.2 turns every BatchNormalization into training-mode BatchNormInternal: batch statistics
in the forward pass and running mean/variance overwritten, even when the whole layer is frozen.
`freeze_batchnorm` replaces each inference-mode BatchNormalization by the same arithmetic with the
running statistics as constants (scale and bias stay parameters of the same name and shape).

ORT's training graph also keeps an inference-mode Dropout a no-op. `dropout_masks` replaces each
Dropout by a multiplication with a mask fed as a graph input, so that the loop draws the masks
from its own seeded generator and a resumed run draws the same ones.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.inspect import tensor_shapes
from ftonnx.graph.normalize import drop_unused_initializers

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def freeze_batchnorm(model: onnx.ModelProto) -> int:
    """Replace inference-mode BatchNormalization by Sub/Mul/Add with fixed statistics; returns the count."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = tensor_shapes(model)
    nodes, count = [], 0
    for node in graph.node:
        if (node.op_type != "BatchNormalization" or node.domain not in _DEFAULT_DOMAINS
                or _attr(node, "training_mode", 0) or len([o for o in node.output if o]) > 1
                or node.input[3] not in inits or node.input[4] not in inits):
            nodes.append(node)
            continue
        x, scale, bias, mean, var = node.input[:5]
        eps = _attr(node, "epsilon", 1e-5)
        shape = shapes.get(x)
        rank = len(shape) if shape else 4
        p = f"{node.output[0]}/frozen_bn"
        broadcast = [-1] + [1] * (rank - 2)
        mean_v = numpy_helper.to_array(inits[mean]).astype(np.float32).reshape(broadcast)
        inv_std = (1.0 / np.sqrt(numpy_helper.to_array(inits[var]).astype(np.float64) + eps)).astype(np.float32)
        graph.initializer.extend([numpy_helper.from_array(mean_v, f"{p}/mean"),
                                  numpy_helper.from_array(inv_std, f"{p}/inv_std"),
                                  numpy_helper.from_array(np.array(broadcast, np.int64), f"{p}/shape")])
        nodes += [
            helper.make_node("Sub", [x, f"{p}/mean"], [f"{p}/centered"], name=f"{p}/Sub"),
            helper.make_node("Mul", [scale, f"{p}/inv_std"], [f"{p}/gain"], name=f"{p}/MulGain"),
            helper.make_node("Reshape", [f"{p}/gain", f"{p}/shape"], [f"{p}/gain_b"], name=f"{p}/ReshapeGain"),
            helper.make_node("Reshape", [bias, f"{p}/shape"], [f"{p}/bias_b"], name=f"{p}/ReshapeBias"),
            helper.make_node("Mul", [f"{p}/centered", f"{p}/gain_b"], [f"{p}/scaled"], name=f"{p}/Mul"),
            helper.make_node("Add", [f"{p}/scaled", f"{p}/bias_b"], [node.output[0]], name=f"{p}/Add"),
        ]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unused_initializers(model)
    return count


def _ratio(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> float | None:
    """The drop ratio of a Dropout node, or None when it is not a constant."""
    if len(node.input) > 1 and node.input[1]:
        return float(numpy_helper.to_array(inits[node.input[1]])) if node.input[1] in inits else None
    return float(_attr(node, "ratio", 0.5))


def dropout_masks(model: onnx.ModelProto) -> list[dict]:
    """Replace each Dropout by `x * mask` with `mask` a new graph input; returns [{input, ratio, shape}]."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    shapes = tensor_shapes(model)
    nodes, masks = [], []
    for node in graph.node:
        if node.op_type != "Dropout" or node.domain not in _DEFAULT_DOMAINS:
            nodes.append(node)
            continue
        ratio, shape = _ratio(node, inits), shapes.get(node.input[0])
        if ratio is None or (len(node.input) > 2 and node.input[2]) or (len(node.output) > 1 and node.output[1] in used):
            raise FtonnxError(f"Dropout node {node.name or node.output[0]!r} has a computed ratio, training mode or "
                              "mask in use; ftonnx trains only plain Dropout")
        if not shape or not all(isinstance(d, int) for d in shape[1:]):
            raise FtonnxError(f"Dropout node {node.name or node.output[0]!r} acts on a tensor of unknown shape; "
                              "train without dropout (--dropout 0)")
        mask = f"{node.output[0]}/dropout_mask"
        graph.input.append(helper.make_tensor_value_info(mask, TensorProto.FLOAT, ["batch", *shape[1:]]))
        nodes.append(helper.make_node("Mul", [node.input[0], mask], [node.output[0]], name=f"{mask}/Mul"))
        masks.append({"input": mask, "ratio": ratio, "shape": list(shape[1:])})
    if masks:
        del graph.node[:]
        graph.node.extend(nodes)
        drop_unused_initializers(model)
    return masks


def draw_mask(spec: dict, batch: int, rng: np.random.Generator | None) -> np.ndarray:
    """A dropout mask for `batch` samples (scaled by 1/(1-ratio)); all ones when `rng` is None (eval)."""
    shape = (batch, *spec["shape"])
    if rng is None or spec["ratio"] <= 0:
        return np.ones(shape, np.float32)
    keep = rng.random(shape) >= spec["ratio"]
    return (keep / (1.0 - spec["ratio"])).astype(np.float32)
