"""Checks of a model from outside, before any native code reads it: a malformed model is one FtonnxError
naming what is wrong, never a crash.

onnx's shape inference and ONNX Runtime are C++ that crash outright on some malformed graphs (a Conv
whose weight has the wrong rank: SIGSEGV; a zero stride: SIGFPE). `check_structure` catches the known
classes in Python and names the node: text that is not UTF-8, tensors whose data do not fit their
shape or whose type is unknown, and the weight ranks and window attributes of convolutions, poolings,
Gemm, MatMul and normalisations. `check_untrusted` then runs onnx's full check and shape inference (on
the graph's `skeleton`) in a forked child (`ftonnx.isolated`), so that any crash left becomes an error
naming the first node whose inference crashes (`crashing_node`: bisecting the node list, one child per
step). ONNX Runtime, which aborts on some graphs onnx accepts, gets the same treatment in `ftonnx.runtime`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import onnx
from onnx import helper

from ftonnx import isolated
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.index import attributes, clone, is_onnx_op, skeleton, value_shape

_WINDOW_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
               "MaxUnpool", "MaxRoiPool"}
_PER_CHANNEL = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
_PACKED = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def check_structure(model: onnx.ModelProto, what: str = "the model") -> None:
    """FtonnxError about `what` for text that is not UTF-8, inconsistent tensors, or a node whose weights or
    window attributes break its op's rules (only ranks known from initializers and graph inputs count)."""
    try:
        _check_structure(model)
    except FtonnxError as exc:
        raise FtonnxError(f"{what}: {exc}") from None


def node_name(node: onnx.NodeProto) -> str:
    """How messages name a node: node 'name' (OpType), or its first output when it has no name."""
    return f"node {node.name or node.output[:1]!r} ({node.op_type})"


def _check_structure(model: onnx.ModelProto) -> None:
    _check_text(model, "the model")
    for tensor in model.graph.initializer:
        _check_tensor(tensor, f"initializer {tensor.name!r}")
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    ranks.update({i.name: len(shape) for i in model.graph.input if (shape := value_shape(i)) is not None})
    for node in model.graph.node:
        for attr in node.attribute:
            for tensor in [attr.t] if attr.HasField("t") else list(attr.tensors):
                _check_tensor(tensor, node_name(node))
        if is_onnx_op(node):
            _check_node(node, ranks)


def check_untrusted(model: onnx.ModelProto, what: str, *, structure: bool = True) -> None:
    """`check_structure` (unless `structure` is False: it has passed on this very model), then onnx's full check
    and shape inference (with data propagation, as `GraphIndex.shapes` runs it) in a child process; FtonnxError
    about `what` on any fault or crash."""
    if structure:
        check_structure(model, what)
    try:
        isolated.run(lambda: _native_check(model))
    except isolated.Crashed as crash:
        node = crashing_node(model)
        where = node_name(node) if node is not None else "onnx's checker"
        raise FtonnxError(f"{what} is malformed: {where} crashes onnx's shape inference ({crash.signal}); check "
                          "its inputs' shapes and its attributes") from None
    except FtonnxError as exc:
        raise FtonnxError(f"{what} fails onnx's checker: {exc}") from None


def check_inference(model: onnx.ModelProto, what: str) -> None:
    """FtonnxError naming the node when onnx's shape inference of `model` crashes (run in child processes);
    for a step that infers shapes in-process before the full check can run. Inference errors are not
    judged here."""
    node = crashing_node(model)
    if node is not None:
        raise FtonnxError(f"{what} is malformed: {node_name(node)} crashes onnx's shape inference; check its inputs' "
                          "shapes and its attributes")


def _native_check(model: onnx.ModelProto) -> None:
    """onnx's full check (strict shape inference included), then its inference with data propagation, on the
    model's `skeleton`: the same graph, types and shapes without the bytes of the large weights, whose
    consistency `check_structure` has checked (serialising them for onnx would double the time of a load)."""
    try:
        shapes_only = skeleton(model)
        onnx.checker.check_model(shapes_only, full_check=True)
        onnx.shape_inference.infer_shapes(shapes_only, data_prop=True)
    except Exception as exc:  # ValidationError, InferenceError and others, depending on the check
        raise FtonnxError(first_line(exc)) from None


def crashing_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The node whose shape inference crashes: the shortest prefix of the node list that crashes ends with it;
    None when inference of the whole graph does not crash."""
    nodes = list(model.graph.node)
    if not _crashes(model, len(nodes)):
        return None  # the checker crashed, not the inference of one node
    good, bad = 0, len(nodes)
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (good, middle) if _crashes(model, middle) else (middle, bad)
    return nodes[bad - 1]


def _crashes(model: onnx.ModelProto, count: int) -> bool:
    """Whether shape inference of the graph cut to its first `count` nodes crashes (in a child process)."""
    def infer() -> None:
        prefix = clone(model)
        del prefix.graph.node[count:]
        try:
            onnx.shape_inference.infer_shapes(prefix, data_prop=True)
        except Exception:  # an error is not a crash
            pass
    try:
        isolated.run(infer)
    except isolated.Crashed:
        return True
    return False


def _check_text(message: Any, where: str) -> None:
    """Every string field of `message` and the messages in it is text: protobuf hands over bytes that are
    not UTF-8 as bytes, which every later step would trip over."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_STRING:
            bad = next((v for v in values if isinstance(v, bytes)), None)
            if bad is not None:
                raise FtonnxError(f"{where}: field {field.name!r} is not UTF-8 text ({bad[:40]!r}); the file is "
                                  "damaged or not what an ONNX exporter writes")
        elif field.type == field.TYPE_MESSAGE and field.message_type.name != "TensorProto":
            for item in values:
                _check_text(item, where)
        elif field.type == field.TYPE_MESSAGE:  # a tensor: its data are bytes, its name is text
            if any(isinstance(t.name, bytes) for t in values):
                raise FtonnxError(f"{where}: a tensor's name is not UTF-8 text; the file is damaged")


def _check_tensor(tensor: onnx.TensorProto, where: str) -> None:
    """A tensor's type is known, its dims are not negative, and its data hold exactly dims' elements."""
    if tensor.data_type not in onnx.TensorProto.DataType.values() or tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise FtonnxError(f"{where}: unknown element type {tensor.data_type}")
    if any(d < 0 for d in tensor.dims):
        raise FtonnxError(f"{where}: negative dimension in {list(tensor.dims)}")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # external data that could not be read has failed to load already
    count = math.prod(tensor.dims)  # exact, however large: Python's integers do not overflow
    if tensor.HasField("raw_data"):
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        expected = -(-count // 2) if tensor.data_type in _PACKED else count * itemsize
        have, unit = len(tensor.raw_data), "bytes"
    else:
        field = helper.tensor_dtype_to_field(tensor.data_type)
        per = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
        expected = count * per if tensor.data_type not in _PACKED else -(-count // 2)
        have, unit = len(getattr(tensor, field)), "values"
    if have != expected:
        raise FtonnxError(f"{where}: holds {have} {unit} of data for shape {list(tensor.dims)} ({expected} "
                          "expected); the file is damaged")


def _check_node(node: onnx.NodeProto, ranks: dict[str, int]) -> None:
    """The op's rules for weight ranks and window attributes, where the ranks involved are known."""
    name = node_name(node)
    rank = [ranks.get(i) if i else None for i in node.input]
    for rule in _RULES.get(node.op_type, ()):
        try:
            problem = rule(node, rank)
        except (ValueError, TypeError) as exc:  # an attribute of an unknown or unfitting type
            problem = f"malformed attribute ({first_line(exc)})"
        if problem:
            raise FtonnxError(f"{name}: {problem}")


def _window(node: onnx.NodeProto, rank: list[int | None]) -> str | None:
    """Convolution and pooling: a weight of the input's rank (>= 3), windows of at least 1, pads >= 0."""
    attrs = attributes(node)
    weight = rank[1] if node.op_type.startswith("Conv") and len(rank) > 1 else None
    if node.op_type == "QLinearConv":
        weight = rank[3] if len(rank) > 3 else None
    if weight is not None and weight < 3:
        return f"weight {node.input[1 if node.op_type != 'QLinearConv' else 3]!r} has rank {weight}; it needs " \
               "(out channels, in channels, *window), rank 3 or more"
    if weight is not None and rank[0] is not None and weight != rank[0]:  # a weight means an input too
        return f"weight {node.input[1]!r} has rank {weight} but input {node.input[0]!r} has rank {rank[0]}; " \
               "they must match"
    spatial = (weight or (rank[0] if rank else None) or 0) - 2
    for key in ("strides", "dilations", "kernel_shape"):
        values = attrs.get(key)
        if values is not None and (not isinstance(values, list) or any(v < 1 for v in values)):
            return f"attribute {key} {values} must hold values of at least 1"
        if values is not None and spatial > 0 and len(values) != spatial:
            return f"attribute {key} {values} has {len(values)} values for {spatial} spatial dimensions"
    pads = attrs.get("pads")
    if pads is not None and (not isinstance(pads, list) or any(v < 0 for v in pads)
                             or (spatial > 0 and len(pads) != 2 * spatial)):
        return f"attribute pads {pads} must hold {2 * spatial if spatial > 0 else 'two per spatial dimension'} " \
               "values of at least 0"
    group = attrs.get("group", 1)
    if not isinstance(group, int) or group < 1:
        return f"attribute group {group} must be a whole number of at least 1"
    return None


def _gemm(node: onnx.NodeProto, rank: list[int | None]) -> str | None:
    bad = next((i for i in (0, 1) if i < len(rank) and rank[i] not in (None, 2)), None)
    if bad is not None:
        return f"input {node.input[bad]!r} has rank {rank[bad]}; Gemm multiplies matrices (rank 2)"
    if len(rank) > 2 and rank[2] is not None and rank[2] > 2:
        return f"bias {node.input[2]!r} has rank {rank[2]}; Gemm's bias has rank 2 or less"
    return None


def _matmul(node: onnx.NodeProto, rank: list[int | None]) -> str | None:
    bad = next((i for i, r in enumerate(rank[:2]) if r == 0), None)
    return None if bad is None else f"input {node.input[bad]!r} is a scalar; MatMul needs rank 1 or more"


def _per_channel(node: onnx.NodeProto, rank: list[int | None]) -> str | None:
    """BatchNormalization's and InstanceNormalization's parameters hold one value per channel (rank 1)."""
    bad = next((i for i in _PER_CHANNEL[node.op_type] if i < len(rank) and rank[i] not in (None, 1)), None)
    return None if bad is None else f"{node.input[bad]!r} has rank {rank[bad]}; it holds one value per channel"


_RULES: dict[str, tuple[Callable[[onnx.NodeProto, list[int | None]], str | None], ...]] = {
    **{op: (_window,) for op in _WINDOW_OPS}, "Gemm": (_gemm,), "MatMul": (_matmul,),
    **{op: (_per_channel,) for op in _PER_CHANNEL},
}
