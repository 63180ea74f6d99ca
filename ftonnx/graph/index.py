"""A read-mostly index over an ONNX graph: who produces and who reads each tensor, walks up and down,
initializer and input lookups, shapes inferred once, and a builder of nodes with fresh names.

Every module that walks or edits a graph goes through here, so the traversal rules (graph order,
empty optional inputs, the default domain) live in one place. An edit builds new nodes with
`GraphIndex.node` / `constant`, hands the new list to `assign`, then `drop_unused_initializers`;
an index describes the graph as it was when built, so build a new one after an edit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ftonnx.errors import FtonnxError, first_line

Shape = list[int | str | None] | None
DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def clone(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy of `model`, to edit without touching the caller's."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def assign(field: Any, items: Iterable[Any]) -> None:
    """Replace the contents of a repeated protobuf field (nodes, inputs, initializers...) with `items`."""
    items = list(items)
    del field[:]
    field.extend(items)


def is_onnx_op(node: onnx.NodeProto, *op_types: str) -> bool:
    """Whether `node` is a default-domain (ai.onnx) op, and one of `op_types` when they are given."""
    return node.domain in DEFAULT_DOMAINS and (not op_types or node.op_type in op_types)


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version the model imports."""
    for op in model.opset_import:
        if op.domain in DEFAULT_DOMAINS:
            return op.version
    raise FtonnxError("model imports no default-domain (ai.onnx) opset")


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


SKELETON_MIN_VALUES = 64  # floating-point initializers from this size on are left out of `skeleton`s


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the bytes of its weights: each floating-point initializer of SKELETON_MIN_VALUES values
    or more becomes a graph input of its type and shape. onnx's checker and shape inference serialise and parse
    the whole model on every call (13 MB for EfficientNet-Lite0: 50-90 ms, against 6 ms for its skeleton) and
    infer the same shapes from either; smaller and integer tensors stay, as data propagation may read them."""
    result = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    result.opset_import.extend(model.opset_import)
    result.functions.extend(model.functions)
    graph, target = model.graph, result.graph
    target.name = graph.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(target, field).extend(getattr(graph, field))
    inputs = {i.name for i in graph.input}
    for tensor in graph.initializer:
        if tensor.data_type in FLOAT_TYPES and math.prod(tensor.dims) >= SKELETON_MIN_VALUES:
            if tensor.name not in inputs:
                target.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            target.initializer.append(tensor)
    return result


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`'s `skeleton` with the types and shapes of its tensors inferred (data propagation on) and the
    graph inputs the model has (the weights it left out are the model's initializers); FtonnxError when
    inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), data_prop=True)
    except Exception as exc:  # InferenceError, ValidationError, RuntimeError depending on the fault
        raise FtonnxError(f"onnx shape inference failed: {first_line(exc)}") from None
    del inferred.graph.input[len(model.graph.input):]
    return inferred


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers that no node (or subgraph node) reads and no output names; returns the count."""
    graph = model.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used.update(i for sub in attr.g.node for i in sub.input)
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        assign(graph.initializer, keep)
    return dropped


def prune(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are `outputs` alone, without the nodes they do not need."""
    result = clone(model)
    needed = GraphIndex(result).upstream(outputs)
    assign(result.graph.output, [o for o in result.graph.output if o.name in outputs])
    assign(result.graph.node, needed)
    drop_unused_initializers(result)
    return result


def _dims(tensor_type: onnx.TypeProto.Tensor) -> Shape:
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else _symbol(d.dim_param) for d in tensor_type.shape.dim]


def _symbol(name: str) -> str | None:
    """A named dimension, or None for none or one that shape inference made up (`unk__3`)."""
    return None if not name or name.startswith("unk__") else name


def value_shape(info: onnx.ValueInfoProto) -> Shape:
    """The shape a ValueInfo declares: ints, symbolic names, None where unknown; None for no shape."""
    return _dims(info.type.tensor_type)


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """What the nodes of `node`'s subgraphs (If, Loop, Scan bodies) read, outer-scope names included."""
    graphs = [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
    return [i for g in graphs for n in g.node for i in [*n.input, *_subgraph_inputs(n)]]


def _functions(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.FunctionProto]:
    """The model's local functions that `nodes` call, directly or through other functions."""
    local = {(f.domain, f.name): f for f in model.functions}
    found: dict[tuple[str, str], onnx.FunctionProto] = {}
    todo = list(nodes)
    while todo:
        node = todo.pop()
        key = (node.domain, node.op_type)
        if key in local and key not in found:
            found[key] = local[key]
            todo.extend(local[key].node)
    return [f for key, f in local.items() if key in found]


class GraphIndex:
    """Producers, consumers and lookups of one model's main graph, built once."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.inputs: list[str] = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs: list[str] = [o.name for o in graph.output]
        self._position = {id(n): i for i, n in enumerate(self.nodes)}
        self._producer = {o: n for n in self.nodes for o in n.output if o}
        self._consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in dict.fromkeys(i for i in node.input if i):
                self._consumers[name].append(node)
        self._taken = {*self.initializers, *(i.name for i in graph.input), *self.outputs}
        self._taken |= {x for n in self.nodes for x in [*n.input, *n.output, n.name] if x}

    # lookups
    def producer(self, tensor: str) -> onnx.NodeProto | None:
        """The node that computes `tensor` (None for inputs, initializers and unknown names)."""
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes that read `tensor`, in graph order."""
        return self._consumers.get(tensor, [])

    def is_computed(self, tensor: str) -> bool:
        """Whether a node of the graph outputs `tensor`."""
        return tensor in self._producer

    def position(self, node: onnx.NodeProto) -> int:
        """Where `node` stands in the graph's (topological) order."""
        return self._position[id(node)]

    def in_order(self, nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """`nodes` sorted in graph order, each once."""
        unique = {id(n): n for n in nodes}
        return sorted(unique.values(), key=self.position)

    # walks
    def upstream(self, tensors: Iterable[str], *, stop: Iterable[str] = ()) -> list[onnx.NodeProto]:
        """The nodes `tensors` are computed from, directly or not, in graph order; the walk does not go past
        the tensors `stop`."""
        todo, seen, found, stop = list(tensors), set(), [], set(stop)
        while todo:
            tensor = todo.pop()
            node = None if tensor in stop else self._producer.get(tensor)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            found.append(node)
            todo.extend(i for i in node.input if i)
        return self.in_order(found)

    def needed_inputs(self, tensor: str) -> list[str]:
        """The graph inputs `tensor` depends on, in the graph's input order."""
        read = {i for n in self.upstream([tensor]) for i in n.input} | {tensor}
        return [name for name in self.inputs if name in read]

    def downstream(self, tensors: Iterable[str], *,
                   enters: Callable[[onnx.NodeProto], bool] = lambda node: True) -> list[onnx.NodeProto]:
        """The nodes that read `tensors`, directly or not, in graph order; the walk goes only into
        nodes for which `enters` is true (and on from their outputs)."""
        todo, seen, found = list(tensors), set(), []
        while todo:
            for node in self.consumers(todo.pop()):
                if id(node) in seen or not enters(node):
                    continue
                seen.add(id(node))
                found.append(node)
                todo.extend(o for o in node.output if o)
        return self.in_order(found)

    def computable(self, known: Iterable[str], accept: Callable[[onnx.NodeProto], bool]) -> list[onnx.NodeProto]:
        """The accepted nodes whose every input is in `known` or an output of such a node, in graph order."""
        known = set(known)
        found = []
        for node in self.nodes:  # graph order: a node's producers come first
            if accept(node) and all(i == "" or i in known for i in node.input):
                found.append(node)
                known.update(o for o in node.output if o)
        return found

    # shapes and types
    @cached_property
    def inferred(self) -> onnx.ModelProto:
        """The model's graph with inferred types and shapes of its tensors, without its large weights (see
        `infer_shapes`; computed once): read value infos from it, initializers from the model."""
        return infer_shapes(self.model)

    @cached_property
    def _types(self) -> dict[str, onnx.TypeProto.Tensor]:
        graph = self.inferred.graph
        types = {i.name: i.type.tensor_type for i in [*graph.input, *graph.value_info, *graph.output]
                 if i.type.HasField("tensor_type")}
        types.update({t.name: onnx.TypeProto.Tensor(elem_type=t.data_type) for t in self.model.graph.initializer})
        return types

    @cached_property
    def shapes(self) -> dict[str, Shape]:
        """Shape of every typed tensor: ints, symbolic names, None where unknown (None: rank unknown too)."""
        shapes: dict[str, Shape] = {t.name: list(t.dims) for t in self.model.graph.initializer}
        graph = self.inferred.graph
        shapes.update({i.name: value_shape(i) for i in [*graph.input, *graph.value_info, *graph.output]})
        return shapes

    def static_shape(self, tensor: str) -> list[int | None] | None:
        """Dims with None where not a fixed size, or None when even the rank is unknown."""
        shape = self.shapes.get(tensor)
        return None if shape is None else [d if isinstance(d, int) else None for d in shape]

    def dtype(self, tensor: str) -> np.dtype:
        """numpy dtype of a tensor (float32 when shape inference could not tell)."""
        t = self._types.get(tensor)
        return helper.tensor_dtype_to_np_dtype(t.elem_type) if t is not None and t.elem_type else np.dtype(np.float32)

    def extract(self, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
        """The part of the model from tensors `inputs` to tensors `outputs`: the nodes between them with the
        initializers, value infos and local functions they use, inputs and outputs typed by shape inference;
        the model's IR version, opsets, producer, version and graph name kept (not its metadata). What onnx's
        Extractor does, without inferring the shapes of the whole model again."""
        graph = self.inferred.graph
        infos = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
        if untyped := next((name for name in [*inputs, *outputs] if name not in infos), None):
            raise FtonnxError(f"onnx shape inference could not type {untyped!r}; cut at another node")
        nodes = [graph.node[self.position(n)] for n in self.upstream(outputs, stop=inputs)]
        used = set(outputs) | {name for n in nodes for name in [*n.input, *n.output, *_subgraph_inputs(n)]}
        result = onnx.ModelProto()  # filled in place: make_graph and make_model would each copy the weights again
        for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(result, field, getattr(self.model, field))
        result.opset_import.extend(self.model.opset_import)
        result.functions.extend(_functions(self.model, nodes))
        target = result.graph
        target.name = self.model.graph.name
        target.node.extend(nodes)
        target.input.extend(infos[i] for i in inputs)
        target.output.extend(infos[o] for o in outputs)
        target.initializer.extend(t for t in self.model.graph.initializer if t.name in used)
        target.value_info.extend(v for v in graph.value_info if v.name in used)
        return result

    # building
    def fresh(self, base: str, suffix: str) -> str:
        """A tensor or node name not yet used in the graph, readable as `base/suffix`."""
        candidate, i = f"{base}/{suffix}", 1
        while candidate in self._taken:
            candidate, i = f"{base}/{suffix}_{i}", i + 1
        self._taken.add(candidate)
        return candidate

    def unused(self, wanted: str) -> str:
        """`wanted` when no tensor, node or input has that name yet, else a fresh `wanted/1`-style name."""
        if wanted in self._taken:
            return self.fresh(wanted, "1")
        self._taken.add(wanted)
        return wanted

    def node(self, op: str, inputs: list[str], base: str, suffix: str, output: str | None = None,
             **attrs: Any) -> onnx.NodeProto:
        """A node named `base/suffix` (made unique) whose single output is `output` or a fresh name."""
        return helper.make_node(op, inputs, [output or self.fresh(base, suffix)], name=self.fresh(base, suffix),
                                **attrs)

    def constant(self, base: str, suffix: str, value: np.ndarray) -> onnx.NodeProto:
        """A Constant node: never an initializer, so no parameter list can take it for a weight."""
        out = self.fresh(base, suffix)
        return helper.make_node("Constant", [], [out], name=self.fresh(base, suffix + "_const"),
                                value=onnx.numpy_helper.from_array(value, out))
