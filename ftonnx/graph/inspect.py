"""Describe a model (I/O, opsets, nodes with inferred shapes) and find where to cut off its classifier.

The recommended cut is the output of the last global pooling on the way to the graph output. Mobile
networks also pool globally inside every squeeze-and-excitation (SE) block; those poolings are told
apart by their output being multiplied back into the very feature map they pooled.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError
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
    ops = ", ".join(dict.fromkeys(n.op_type for n in after_nodes))
    reason = (f"output of the last global pooling ({pool.op_type}) before graph output {output!r}, "
              + (f"which it reaches through {ops} only" if ops else "which it is"))
    if gates:
        reason += (f"; skipped {len(gates)} squeeze-and-excitation poolings whose output is multiplied back "
                   f"into the feature map they pooled (e.g. {gates[-1].name or gates[-1].output[0]!r})")
    return {"tensor": pool.output[0], "node": pool.name, "op_type": pool.op_type,
            "shape": index.shapes.get(pool.output[0]), "reason": reason}


def _io(infos: Any) -> list[dict[str, Any]]:
    return [{"name": i.name, "dtype": onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower(),
             "shape": value_shape(i)} for i in infos]


def summarize(model: onnx.ModelProto, *, changes: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything `ftonnx inspect` reports, JSON-serialisable; `changes` are what normalising did."""
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
        "parameter_count": int(sum(np.prod(t.dims, dtype=np.int64) for t in float_inits)),
        "initializer_count": len(model.graph.initializer),
        "op_counts": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "metadata": {"num_classes": meta.num_classes, "preprocess": meta.preprocess and meta.preprocess.to_json(),
                     "feature": meta.feature, "source": meta.source, "head_params": meta.head_params,
                     "backbone_param_count": len(meta.backbone_params)},
        "normalize": list(changes),
        "nodes": [{"name": n.name, "op_type": n.op_type,
                   "outputs": [{"name": o, "shape": shapes.get(o)} for o in n.output if o]}
                  for n in model.graph.node],
        "recommended_cut": cut,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable form of `summarize`'s result."""
    def io_line(i: dict[str, Any]) -> str:
        return f"  {i['name']}  {i['dtype']}{format_shape(i['shape'])}"

    opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
    ops = ", ".join(f"{op} {n}" for op, n in summary["op_counts"].items())
    lines = [f"producer: {summary['producer'] or '?'}   IR version: {summary['ir_version']}   opsets: {opsets}",
             "inputs:", *map(io_line, summary["inputs"]), "outputs:", *map(io_line, summary["outputs"]),
             f"nodes: {summary['node_count']} ({ops})",
             f"parameters: {summary['parameter_count']:,} floating-point values; "
             f"{summary['initializer_count']} initializers"]
    meta = {k: v for k, v in summary["metadata"].items() if v}
    if meta:
        lines.append("ftonnx metadata: " + "; ".join(f"{k}={json.dumps(v)}" for k, v in meta.items()))
    lines += ["normalized on load: " + ("; ".join(summary["normalize"]) or "nothing to change"), "", "nodes:"]
    width = max((len(n["name"]) for n in summary["nodes"]), default=0)
    for node in summary["nodes"]:
        shapes = " ".join(format_shape(o["shape"]) for o in node["outputs"])
        lines.append(f"  {node['name']:<{width}}  {node['op_type']:<18} {shapes}")
    cut = summary["recommended_cut"]
    lines.append("")
    if cut["tensor"] is None:
        lines.append(f"recommended cut: none ({cut['reason']})")
    else:
        lines += [f"recommended cut: {cut['node']} -> {cut['tensor']} {format_shape(cut['shape'])}",
                  f"  why: {cut['reason']}"]
    return "\n".join(lines)
