"""Split a model at its freeze boundary into a frozen prefix and a trainable suffix.

When every trainable parameter sits after a frozen part, that part's outputs do not change during
training: they can be computed once per image (see `ftonnx.train.cache`) and the suffix trained on
them. The boundary is the set of tensors the trainable part reads from the frozen part; with skip
connections there may be several.
"""

from __future__ import annotations

from typing import Callable

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
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
    index = GraphIndex(model)
    unknown = sorted(set(trainable) - set(index.initializers))
    if unknown:
        raise FtonnxError(f"trainable parameters not in the model: {', '.join(unknown[:5])}")
    readers = [n for n in index.nodes if set(n.input) & set(trainable)]
    if not readers:
        raise FtonnxError("no node reads the trainable parameters; nothing to train")
    suffix = {id(n): n for n in readers + index.downstream(o for n in readers for o in n.output)}
    for out in index.outputs:
        if id(index.producer(out)) not in suffix:
            raise NotPrefixError(f"not a prefix: output {out!r} does not depend on the trainable parameters")
    batched = _batched(index)
    while True:
        crossing = {t for n in suffix.values() for t in n.input
                    if t and t not in index.initializers and id(index.producer(t)) not in suffix}
        if read := sorted(crossing & set(index.inputs)):
            node = next(n for n in index.in_order(suffix.values()) if read[0] in n.input)
            raise NotPrefixError(f"not a prefix: node {node.name or node.output[0]!r} ({node.op_type}) of the "
                                 f"trainable part reads graph input {read[0]!r}")
        shapes = [index.producer(t) for t in crossing if not batched(t)]
        if not shapes:
            return sorted(crossing, key=lambda t: index.position(index.producer(t)))
        suffix.update((id(n), n) for n in shapes)


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
    if not cut:
        raise FtonnxError("the boundary is empty: no tensor to split at")
    index = GraphIndex(model)
    missing = [t for t in cut if not index.is_computed(t)]
    if missing:
        raise FtonnxError(f"no tensor {missing[0]!r} is computed in the model")
    prefix = index.extract(index.inputs, list(cut))
    suffix = index.extract(list(cut), index.outputs)
    batch, batched = _batch_dim(index), _batched(index)
    for value in list(prefix.graph.output) + list(suffix.graph.input):
        dims = value.type.tensor_type.shape.dim
        if dims and batch is not None and batched(value.name):
            dims[0].CopyFrom(batch)  # keep the batch dynamic even where inference lost its name
    meta = metadata.read(model)
    metadata.write(prefix, metadata.Meta(preprocess=meta.preprocess, source=meta.source,
                                         extra={"boundary": list(cut)}))
    metadata.copy(model, suffix)
    metadata.update(suffix, boundary=list(cut))
    for name, part in (("prefix", prefix), ("suffix", suffix)):
        check_model(part, f"the {name} split off at {', '.join(cut)}")
    return prefix, suffix


def _batch_dim(index: GraphIndex) -> onnx.TensorShapeProto.Dimension | None:
    """The first dimension of the first graph input: the batch, by the convention of image models."""
    for value in index.inferred.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims:
            return dims[0]
    return None


def _batched(index: GraphIndex) -> Callable[[str], bool]:
    """A predicate: may tensor `name` have one row per image? False only for tensors known not to:
    scalars, and tensors whose first dimension is fixed while the batch is not (or differs from it)."""
    batch = _batch_dim(index)
    graph = index.inferred.graph
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
