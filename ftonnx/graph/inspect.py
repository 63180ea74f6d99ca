"""Describe a model (I/O, opsets, nodes with inferred shapes) and find where to cut off its classifier.

The recommended cut is the output of the last global pooling on the way to the graph output. Mobile
networks also pool globally inside every squeeze-and-excitation (SE) block; those poolings are told
apart by their output being multiplied back into the very feature map they pooled.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import onnx
from onnx import numpy_helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError, printable
from ftonnx.graph.index import FLOAT_TYPES, GraphIndex, Shape, attributes, value_shape

_POOLS = ("GlobalAveragePool", "ReduceMean", "AveragePool")


def format_shape(shape: Shape) -> str:
    """`(batch, 1280, 1, 1)`; `?` for an unknown dimension or rank."""
    if shape is None:
        return "(?)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _axes(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    if len(node.input) > 1 and node.input[1] in inits:
        return [int(a) for a in numpy_helper.to_array(inits[node.input[1]]).ravel()]
    return None


def _is_global_pool(node: onnx.NodeProto, shapes: dict[str, Shape], inits: dict[str, onnx.TensorProto]) -> bool:
    """GlobalAveragePool, or ReduceMean / AveragePool covering every spatial position."""
    if node.op_type == "GlobalAveragePool":
        return True
    shape = shapes.get(node.input[0])
    if node.op_type not in _POOLS or not shape or len(shape) < 3:
        return False
    rank = len(shape)
    attrs = attributes(node)
    if node.op_type == "ReduceMean":
        axes = _axes(node, inits)
        if not axes:
            return False
        axes_set = {a % rank for a in axes}
        return axes_set in ({*range(2, rank)}, {*range(1, rank - 1)})  # channels first or last
    pads = attrs.get("pads", [])
    return (list(attrs.get("kernel_shape", [])) == list(shape[2:]) and all(isinstance(d, int) for d in shape[2:])
            and not any(pads) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def _reaches(index: GraphIndex, tensor: str, skip: onnx.NodeProto | None = None) -> list[onnx.NodeProto]:
    """Nodes that read `tensor`'s values, directly or not: the walk enters neither `skip` nor Shape."""
    return index.downstream([tensor], enters=lambda node: node is not skip and node.op_type != "Shape")


def recommended_cut(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, Any]:
    """Where to cut off the classifier: the last global pooling that is not a squeeze-and-excitation gate.

    Returns tensor, node, op_type, shape and reason; raises FtonnxError when the model has none.
    """
    index = index or GraphIndex(model)
    pools = [n for n in index.nodes if _is_global_pool(n, index.shapes, index.initializers)]
    gates, heads = [], []
    for pool in pools:
        after_nodes = _reaches(index, pool.output[0])
        beside = {o for n in _reaches(index, pool.input[0], skip=pool) for o in n.output} | {pool.input[0]}
        if any(i in beside for node in after_nodes for i in node.input):
            gates.append(pool)  # the pooled value rejoins the map it came from: an SE gate
        elif (after := {pool.output[0]} | {o for n in after_nodes for o in n.output}) & set(index.outputs):
            heads.append((pool, after, after_nodes))
    if not heads:
        found = (f"{len(pools)} global poolings, {len(gates)} of them in squeeze-and-excitation blocks, "
                 f"none leading to a graph output" if pools else
                 "no global pooling (GlobalAveragePool, or ReduceMean/AveragePool over the whole map)")
        raise FtonnxError(f"no cut point to recommend: found {found}; name one with --node")
    pool, after, after_nodes = heads[-1]
    output = next(o for o in index.outputs if o in after)
    if scorer := _class_score_conv(index, pool, output):
        return _before_scores(index, scorer, pool, output)
    ops = ", ".join(dict.fromkeys(n.op_type for n in after_nodes))
    reason = (f"output of the last global pooling ({pool.op_type}) before graph output {output!r}, "
              + (f"which it reaches through {ops} only" if ops else "which it is"))
    if gates:
        reason += (f"; skipped {len(gates)} squeeze-and-excitation poolings whose output is multiplied back "
                   f"into the feature map they pooled (e.g. {gates[-1].name or gates[-1].output[0]!r})")
    return {"tensor": pool.output[0], "node": pool.name, "op_type": pool.op_type,
            "shape": index.shapes.get(pool.output[0]), "reason": reason}


_ELEMENTWISE = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Elu", "Selu",
                "Softplus", "Tanh", "Identity", "Dropout", "Softmax", "LogSoftmax", "BatchNormalization")


def _class_score_conv(index: GraphIndex, pool: onnx.NodeProto, output: str) -> onnx.NodeProto | None:
    """The Conv that computes the class scores before the pooling, in a fully convolutional classifier (its
    output channels are the classes of `output`), or None."""
    classes = (index.shapes.get(output) or [None, None])[-1]
    node = index.producer(pool.input[0])
    while node is not None and node.op_type in _ELEMENTWISE:
        node = index.producer(node.input[0])
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or not isinstance(classes, int):
        return None
    weight = index.shapes.get(node.input[1])
    return node if weight and weight[0] == classes and classes >= 2 else None


def _before_scores(index: GraphIndex, scorer: onnx.NodeProto, pool: onnx.NodeProto, output: str) -> dict[str, Any]:
    """The cut of a fully convolutional classifier: the feature map its class-score convolution reads."""
    tensor = scorer.input[0]
    producer = index.producer(tensor)
    reason = (f"input of the convolution {scorer.name or scorer.output[0]!r}, which computes the "
              f"{index.shapes[scorer.input[1]][0]} class scores of {output!r} before the global pooling "
              f"({pool.op_type}): cutting after the pooling would train a head on the old class scores")
    return {"tensor": tensor, "node": producer.name if producer else "", "op_type": producer.op_type if producer
            else None, "shape": index.shapes.get(tensor), "reason": reason}


def _io(infos: Any) -> list[dict[str, Any]]:
    return [{"name": i.name, "dtype": onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower(),
             "shape": value_shape(i)} for i in infos]


def summarize(model: onnx.ModelProto, *, changes: list[str] | tuple[str, ...] = (),
              preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `ftonnx inspect` reports, JSON-serialisable; `changes` are what normalising did and
    `preprocess` the preprocessing per field with its source (`ftonnx.preprocess.describe`)."""
    index = GraphIndex(model)
    shapes = index.shapes
    meta = metadata.read(model)
    float_inits = [t for t in model.graph.initializer if t.data_type in FLOAT_TYPES]
    try:
        cut = recommended_cut(model, index)
    except FtonnxError as exc:
        cut = {"tensor": None, "node": None, "op_type": None, "shape": None, "reason": str(exc)}
    return {
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": model.ir_version,
        "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "inputs": _io(model.graph.input),
        "outputs": _io(model.graph.output),
        "node_count": len(model.graph.node),
        "parameter_count": sum(math.prod(t.dims) for t in float_inits),
        "initializer_count": len(model.graph.initializer),
        "op_counts": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "metadata": {"num_classes": meta.num_classes, "preprocess": meta.preprocess and meta.preprocess.to_json(),
                     "feature": meta.feature, "source": meta.source, "head_params": meta.head_params,
                     "backbone_param_count": len(meta.backbone_params)},
        "preprocess": preprocess,
        "normalize": list(changes),
        "nodes": [{"name": n.name, "op_type": n.op_type,
                   "outputs": [{"name": o, "shape": shapes.get(o)} for o in n.output if o]}
                  for n in model.graph.node],
        "recommended_cut": cut,
    }


def _preprocess_lines(described: dict[str, Any]) -> list[str]:
    """The preprocessing, one field per line with its source, and how to give what is missing."""
    lines = ["preprocessing:"]
    for name, field in described.items():
        value = field["value"]
        shown = "-" if value is None else ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
            if isinstance(value, list) else str(value)
        lines.append(f"  {name:<13} {shown:<24} ({field['source']})")
    missing = [name for name, field in described.items() if field["source"] == "missing"]
    hints = (["--size H[,W]"] if "size" in missing else []) + \
        (["--preprocess imagenet|inception|caffe|unit|raw|auto (or --mean and --std)"] if "mean" in missing else [])
    if missing:
        lines.append(f"  {', '.join(missing)} unknown: commands that feed images need {' and '.join(hints)}")
    return lines


def format_summary(summary: dict[str, Any], *, nodes: bool = False) -> str:
    """The human-readable form of `summarize`'s result: a short summary, the node table with `nodes`; names
    from the model have their control characters escaped, line by line."""
    def io_line(i: dict[str, Any]) -> str:
        return f"  {i['name']}  {i['dtype']}{format_shape(i['shape'])}"

    opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
    ops = ", ".join(f"{op} {n}" for op, n in list(summary["op_counts"].items())[:8])
    more = ", ..." if len(summary["op_counts"]) > 8 else ""
    cut = summary["recommended_cut"]
    lines = [f"producer: {summary['producer'] or '?'}   IR version: {summary['ir_version']}   opsets: {opsets}",
             "inputs:", *map(io_line, summary["inputs"]), "outputs:", *map(io_line, summary["outputs"])]
    if cut["tensor"] is None:
        lines.append(f"recommended cut: none ({cut['reason']})")
    else:
        lines += [f"recommended cut: {cut['node']} -> {cut['tensor']} {format_shape(cut['shape'])}",
                  f"  why: {cut['reason']}"]
    if summary.get("preprocess"):
        lines += _preprocess_lines(summary["preprocess"])
    meta = {k: v for k, v in summary["metadata"].items() if v and k != "preprocess"}
    if meta:
        lines.append("ftonnx metadata: " + "; ".join(f"{k}={json.dumps(v)}" for k, v in meta.items()))
    lines += [f"nodes: {summary['node_count']} ({ops}{more}); parameters: {summary['parameter_count']:,} "
              f"floating-point values in {summary['initializer_count']} initializers",
              "normalized on load: " + ("; ".join(summary["normalize"]) or "nothing to change")]
    if not nodes:
        return "\n".join(map(printable, lines + ["(ftonnx inspect MODEL --nodes lists every node with its "
                                                  "output shapes)"]))
    width = max((len(n["name"]) for n in summary["nodes"]), default=0)
    lines += ["", "nodes:"] + [f"  {n['name']:<{width}}  {n['op_type']:<18} "
                               + " ".join(format_shape(o["shape"]) for o in n["outputs"]) for n in summary["nodes"]]
    return "\n".join(map(printable, lines))
