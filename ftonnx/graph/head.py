"""Attach a new classifier (`logits`) to a backbone's feature output, initialised as torch.nn.Linear is."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import FLOAT_TYPES, GraphIndex, assign, clone
from ftonnx.graph.inspect import format_shape
from ftonnx.graph.io import check_model

OUTPUT = "logits"
MAX_HEAD_PARAMETERS = 1 << 28  # 1 GiB of float32 weights: far beyond any classifier head


def linear_init(fan_in: int, fan_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weight (fan_out, fan_in) and bias as nn.Linear draws them: both U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform with a=sqrt(5) gives exactly that bound for the weight.)
    """
    bound = 1.0 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
    bias = rng.uniform(-bound, bound, size=fan_out).astype(np.float32)
    return weight, bias


def _feature(model: onnx.ModelProto, index: GraphIndex) -> tuple[str, int | str | None, int, bool]:
    """The backbone's single output: its name, batch dimension, channel count, and whether it is a feature
    map the head must pool (N, C, H, W); or what to do instead."""
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise FtonnxError(f"the backbone has {len(outputs)} outputs; cut it to one feature tensor first "
                          f"(ftonnx cut MODEL --node auto -o backbone.onnx)")
    feature = outputs[0]
    if feature.name == OUTPUT:
        raise FtonnxError(f"the model still has its classifier (output {OUTPUT!r}); cut it off first: "
                          f"ftonnx cut MODEL --node auto -o backbone.onnx")
    if feature.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise FtonnxError(f"feature output {feature.name!r} is not a float32 tensor")
    shape = index.shapes.get(feature.name)
    pooled = bool(shape) and len(shape) == 4 and shape[2:] != [1, 1]
    width = shape[1:2] if pooled else (shape or [None])[1:]
    if not shape or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in width):
        raise FtonnxError(f"feature output {feature.name!r} has shape {format_shape(shape)}; the head needs "
                          f"(N, C), (N, C, 1, 1) or a feature map (N, C, H, W) with C known: cut at --node auto")
    return feature.name, shape[0], int(np.prod(width)), pooled


def head_classes(count: int | None, labels: list[str] | None, data_classes: list[str] | None) -> list[str]:
    """The class names of a new head from what was given: a count, names, the classes a data set has
    (they must agree when several are given); class_0, class_1, ... when only a count is."""
    given = [names for names in (labels, data_classes) if names is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise FtonnxError(f"--labels ({', '.join(labels[:5])}) differ from the data's classes "
                          f"({', '.join(data_classes[:5])}); give one of them")
    names = given[0] if given else None
    if count is None and names is None:
        raise FtonnxError("give --classes N, --labels A,B,... or --data DIR (the classes of your images)")
    if count is not None and names is not None and count != len(names):
        raise FtonnxError(f"{len(names)} labels given for {count} classes")
    if count is not None and count < 2:
        raise FtonnxError(f"a classifier needs at least 2 classes, got {count}")
    if count is not None and count > metadata.MAX_CLASSES:
        raise FtonnxError(f"{count:,} classes is more than ftonnx's limit of {metadata.MAX_CLASSES:,}")
    return list(names) if names is not None else [f"class_{i}" for i in range(count)]


def add_head(model: onnx.ModelProto, num_classes: int, *, hidden: int | None = None, dropout: float = 0.0,
             seed: int = 0, labels: list[str] | None = None) -> onnx.ModelProto:
    """A copy of backbone `model` with a classifier on its output: flatten, [dropout,] linear -> `logits`
    (a feature map (N, C, H, W) is averaged over H and W first).

    With `hidden`: flatten, linear, ReLU, [dropout,] linear. Parameters are `head.fc.*` (or `head.fc1.*`,
    `head.fc2.*`); the metadata records labels, head_params, backbone_params and the feature tensor.
    """
    if num_classes < 2:
        raise FtonnxError(f"a classifier needs at least 2 classes, got {num_classes}")
    if num_classes > metadata.MAX_CLASSES:
        raise FtonnxError(f"{num_classes:,} classes is more than ftonnx's limit of {metadata.MAX_CLASSES:,}")
    if hidden is not None and hidden < 1:
        raise FtonnxError(f"--hidden must be a positive width, got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise FtonnxError(f"--dropout must be in [0, 1), got {dropout}")
    labels = list(labels) if labels else [f"class_{i}" for i in range(num_classes)]
    if len(labels) != num_classes:
        raise FtonnxError(f"{len(labels)} labels given for {num_classes} classes")
    index = GraphIndex(model)
    feature, batch, fan_in, pooled = _feature(model, index)
    size = fan_in * (hidden or num_classes) + (hidden or 0) * num_classes
    if size > MAX_HEAD_PARAMETERS:
        raise FtonnxError(f"the head would hold {size:,} weights ({fan_in:,} features in, {num_classes:,} classes out"
                          f"{f', {hidden:,} hidden' if hidden else ''}), over ftonnx's limit of "
                          f"{MAX_HEAD_PARAMETERS:,}; cut after the global pooling (--node auto)")
    taken = {o for n in index.nodes for o in n.output} | set(index.initializers)
    if OUTPUT in taken or any(name.startswith("head.") for name in taken):
        raise FtonnxError(f"the model already has a tensor {OUTPUT!r} or head.*; cut it back to its backbone first")
    nodes, params = _head_nodes(index, feature, fan_in, num_classes, hidden, dropout, np.random.default_rng(seed),
                                pool=pooled)
    result = clone(model)
    result.graph.node.extend(nodes)
    result.graph.initializer.extend(params)
    assign(result.graph.output, [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, num_classes])])
    metadata.update(result, labels=labels, feature=feature,
                    head_params=[t.name for t in params if t.name != _DROPOUT_RATIO],
                    backbone_params=[t.name for t in model.graph.initializer if t.data_type in FLOAT_TYPES])
    check_model(result, "the model with its new head")
    return result


_DROPOUT_RATIO = "head.dropout.ratio"


def _head_nodes(index: GraphIndex, feature: str, fan_in: int, num_classes: int, hidden: int | None,
                dropout: float, rng: np.random.Generator, *,
                pool: bool = False) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """[Global average pooling of a feature map,] flatten, [linear, ReLU,] [dropout,] linear -> `logits`: the
    nodes, and the parameters then the dropout ratio as initializers."""
    nodes = [index.node("GlobalAveragePool", [feature], "/head", "GlobalAveragePool", output="head.pool")] if pool \
        else []
    nodes.append(index.node("Flatten", [nodes[0].output[0] if pool else feature], "/head", "Flatten",
                            output="head.flat", axis=1))
    params: list[onnx.TensorProto] = []
    consts: list[onnx.TensorProto] = []

    def linear(name: str, x: str, width: int, out: int, y: str) -> None:
        weight, bias = linear_init(width, out, rng)
        params.extend([numpy_helper.from_array(weight, f"head.{name}.weight"),
                       numpy_helper.from_array(bias, f"head.{name}.bias")])
        nodes.append(index.node("Gemm", [x, f"head.{name}.weight", f"head.{name}.bias"], f"/head/{name}", "Gemm",
                                output=y, transB=1))

    x, width, last = "head.flat", fan_in, "fc"
    if hidden:
        linear("fc1", x, fan_in, hidden, "head.fc1")
        nodes.append(index.node("Relu", ["head.fc1"], "/head", "Relu", output="head.relu"))
        x, width, last = "head.relu", hidden, "fc2"
    if dropout > 0:
        consts.append(numpy_helper.from_array(np.array(dropout, np.float32), _DROPOUT_RATIO))
        nodes.append(index.node("Dropout", [x, _DROPOUT_RATIO], "/head", "Dropout", output="head.dropout"))
        x = "head.dropout"
    linear(last, x, width, num_classes, OUTPUT)
    return nodes, params + consts
