"""Split a model at its freeze boundary into a frozen prefix and a trainable suffix.

When every trainable parameter sits after a frozen part, that part's outputs do not change during
training: they can be computed once per image (see `ftonnx.train.cache`) and the suffix trained on
them. The boundary is the set of tensors the trainable part reads from the frozen part; with skip
connections there may be several.
"""

from __future__ import annotations

from typing import Callable

import onnx
from onnx import shape_inference, utils

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.io import check_model


class NotPrefixError(FtonnxError):
    """The frozen parameters do not form a prefix of the network, so activations cannot be cached."""


def boundary(model: onnx.ModelProto, trainable: list[str]) -> list[str]:
    """The tensors the trainable part of `model` reads from its frozen prefix, in graph order.

    The trainable part is every node that reads a parameter in `trainable` plus every node downstream
    of one. Shape tensors it reads (no batch dimension, e.g. Shape -> Gather -> Concat for a Reshape)
    are recomputed in the suffix rather than cached, so every boundary tensor has one row per image.
    Raises `NotPrefixError` (its message says why) when the trainable part reads a graph input
    directly or a graph output does not depend on any trainable parameter.
    """
    graph = _inferred(model).graph
    inits = {t.name for t in graph.initializer}
    unknown = sorted(set(trainable) - inits)
    if unknown:
        raise FtonnxError(f"trainable parameters not in the model: {', '.join(unknown[:5])}")
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    suffix = _downstream(graph, {i for i, n in enumerate(graph.node) if set(n.input) & set(trainable)})
    if not suffix:
        raise FtonnxError("no node reads the trainable parameters; nothing to train")
    for out in graph.output:
        if producer.get(out.name) not in suffix:
            raise NotPrefixError(f"not a prefix: output {out.name!r} does not depend on the trainable parameters")
    inputs = {i.name for i in graph.input}
    batched = _batched(graph)
    while True:
        crossing = {t for i in suffix for t in graph.node[i].input
                    if t and t not in inits and producer.get(t) not in suffix}
        if crossing & inputs:
            node = next(graph.node[i] for i in sorted(suffix) if set(graph.node[i].input) & inputs)
            raise NotPrefixError(f"not a prefix: node {node.name or node.output[0]!r} ({node.op_type}) of the "
                                 f"trainable part reads graph input {sorted(crossing & inputs)[0]!r}")
        shapes = {t for t in crossing if not batched(t)}
        if not shapes:
            return sorted(crossing, key=lambda t: producer[t])
        suffix |= {producer[t] for t in shapes}


def is_prefix(model: onnx.ModelProto, trainable: list[str]) -> bool:
    """Whether the frozen part of `model` is a prefix, i.e. whether `boundary` succeeds."""
    try:
        boundary(model, trainable)
    except NotPrefixError:
        return False
    return True


def split(model: onnx.ModelProto, cut: list[str]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Split `model` at the tensors `cut` into (prefix: graph inputs -> cut, suffix: cut -> outputs).

    Both keep the batch dimension dynamic and carry only the initializers they use. The suffix keeps
    all of the model's metadata and records `boundary`; the prefix keeps the preprocessing and source.
    """
    inferred = _inferred(model)
    known = {n for node in inferred.graph.node for n in node.output}
    if not cut:
        raise FtonnxError("the boundary is empty: no tensor to split at")
    missing = [t for t in cut if t not in known]
    if missing:
        raise FtonnxError(f"no tensor {missing[0]!r} is computed in the model")
    outputs = [o.name for o in model.graph.output]
    extractor = utils.Extractor(inferred)
    prefix = extractor.extract_model([i.name for i in model.graph.input], list(cut))
    suffix = extractor.extract_model(list(cut), outputs)
    batch, batched = _batch_dim(inferred.graph), _batched(inferred.graph)
    for value in list(prefix.graph.output) + list(suffix.graph.input):
        dims = value.type.tensor_type.shape.dim
        if dims and batch is not None and batched(value.name):
            dims[0].CopyFrom(batch)  # keep the batch dynamic even where inference lost its name
    meta = metadata.read(model)
    for part in (prefix, suffix):
        part.ir_version = model.ir_version
        part.producer_name, part.producer_version = model.producer_name, model.producer_version
        part.graph.name = model.graph.name
    metadata.write(prefix, metadata.Meta(preprocess=meta.preprocess, source=meta.source,
                                         extra={"boundary": list(cut)}))
    metadata.copy(model, suffix)
    metadata.update(suffix, boundary=list(cut))
    for name, part in (("prefix", prefix), ("suffix", suffix)):
        check_model(part, f"the {name} split off at {', '.join(cut)}")
    return prefix, suffix


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the shapes of its intermediate tensors (the split needs them as value_info)."""
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise FtonnxError(f"shape inference fails on the model: {str(exc).splitlines()[0]}") from None


def _downstream(graph: onnx.GraphProto, start: set[int]) -> set[int]:
    """`start` plus every node that reads, directly or not, an output of a node in it."""
    seen = set(start)
    produced = {o for i in start for o in graph.node[i].output if o}
    for i, node in enumerate(graph.node):  # nodes are topologically sorted
        if i not in seen and produced & set(node.input):
            seen.add(i)
            produced.update(o for o in node.output if o)
    return seen


def _batch_dim(graph: onnx.GraphProto) -> onnx.TensorShapeProto.Dimension | None:
    """The first dimension of the first graph input: the batch, by the convention of image models."""
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            return dims[0]
    return None


def _batched(graph: onnx.GraphProto) -> Callable[[str], bool]:
    """A predicate: may tensor `name` have one row per image? False only for tensors known not to:
    scalars, and tensors whose first dimension is fixed while the batch is not (or differs from it)."""
    batch = _batch_dim(graph)
    shapes = {v.name: v.type.tensor_type for v in list(graph.value_info) + list(graph.output)}

    def batched(name: str) -> bool:
        tensor = shapes.get(name)
        if batch is None or tensor is None or not tensor.HasField("shape"):
            return True
        dims = tensor.shape.dim
        if not dims:
            return False
        return not dims[0].HasField("dim_value") or dims[0] == batch

    return batched
