"""Which parameters train: the trainable-kind initializers of a model, and the `--freeze` policies.

A parameter is a float32 initializer in a position that gradient descent may change: weights and
biases of Conv, ConvTranspose, Gemm and MatMul (and the bias `Add` after them), the scale and bias
of the normalisations, PRelu slopes. Never clip bounds, shapes, ratios or BatchNormalization's
running mean and variance (running statistics stay as the pretrained model has them).
"""

from __future__ import annotations

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, is_onnx_op
from ftonnx.graph.select import resolve
from ftonnx.train.config import FREEZE_POLICIES

# op type -> the input positions that hold trainable parameters
_POSITIONS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "PRelu": (1,),
}
_BIAS_AFTER = {"MatMul", "Gemm", "Conv"}


def parameter_names(model: onnx.ModelProto, index: GraphIndex | None = None) -> list[str]:
    """The float32 initializers in trainable positions, in initializer order."""
    index = index or GraphIndex(model)
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    found: set[str] = set()
    for node in index.nodes:
        if not is_onnx_op(node):
            continue
        positions = _POSITIONS.get(node.op_type, ())
        producers = [index.producer(i) for i in node.input]
        if node.op_type == "Add" and any(p is not None and p.op_type in _BIAS_AFTER for p in producers):
            positions = tuple(range(len(node.input)))
        found.update(node.input[i] for i in positions if i < len(node.input) and node.input[i] in floats)
    return [t.name for t in model.graph.initializer if t.name in found]


def downstream_parameters(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The parameters read by nodes that depend on `tensor`."""
    index = GraphIndex(model)
    read = {i for node in index.downstream([tensor]) for i in node.input}
    return [p for p in parameter_names(model, index) if p in read]


def trainable_parameters(model: onnx.ModelProto, policy: str) -> list[str]:
    """The parameters that train under `policy`: "backbone" (head only), "none" (all), "until:SPEC"."""
    if policy == "none":
        names = parameter_names(model)
    elif policy == "backbone":
        head = set(metadata.read(model).head_params)
        if not head:
            raise FtonnxError("--freeze backbone needs a model with a head made by ftonnx (no head_params in its "
                              "metadata); use --freeze none or --freeze until:SPEC")
        names = [p for p in parameter_names(model) if p in head]
    elif policy.startswith("until:") and policy[len("until:"):].strip():
        names = downstream_parameters(model, resolve(model, policy[len("until:"):].strip()))
    else:
        raise FtonnxError(f"unknown freeze policy {policy!r}; use one of {', '.join(FREEZE_POLICIES)}")
    if not names:
        raise FtonnxError(f"--freeze {policy} leaves no parameter to train; freeze less "
                          f"(e.g. --freeze until: an earlier node, or --freeze none)")
    return names
