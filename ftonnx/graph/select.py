"""Turn a user's SPEC into one tensor of the graph.

SPEC is tried, in this order, as an exact node name, an exact tensor name, an op type, a loose name
(case and the characters ``_ - / . :`` ignored) and a loose substring, so ``AvgPool`` finds
``/_avg_pooling/GlobalAveragePool``; ``auto`` is the recommended cut point. The first kind that
matches anything decides; several matches need ``last`` or ``index`` to pick one.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable

import onnx

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.graph.inspect import format_shape, recommended_cut

_LOOSE = re.compile(r"[_\-/.:]")
_MAX_LISTED = 12


def loose(name: str) -> str:
    """`name` lower-cased without the characters ``_ - / . :``."""
    return _LOOSE.sub("", name).lower()


def _by_name(nodes: list[onnx.NodeProto], same: Callable[[str], bool]) -> list[tuple[onnx.NodeProto, str]]:
    """Nodes whose name (then: first output) or one of whose output names satisfies `same`."""
    found = []
    for node in nodes:
        tensor = node.output[0] if same(node.name) else next((o for o in node.output if o and same(o)), None)
        if tensor:
            found.append((node, tensor))
    return found


def _matches(model: onnx.ModelProto, spec: str) -> list[tuple[onnx.NodeProto, str]]:
    """(node, tensor) pairs SPEC names, from the first kind of name that matches anything."""
    nodes = list(model.graph.node)
    key = loose(spec)
    kinds: list[Callable[[], list[tuple[onnx.NodeProto, str]]]] = [
        lambda: [(n, n.output[0]) for n in nodes if n.name == spec],
        lambda: [(n, o) for n in nodes for o in n.output if o == spec],
        lambda: [(n, n.output[0]) for n in nodes if n.op_type.lower() == spec.lower()],
        lambda: _by_name(nodes, lambda name: bool(key) and loose(name) == key),
        lambda: _by_name(nodes, lambda name: bool(key) and key in loose(name)),
    ]
    return next((found for kind in kinds if (found := kind())), [])


def _check_not_input(model: onnx.ModelProto, spec: str, *, exact: bool) -> None:
    """Refuse a graph input or a parameter: neither is a node's output."""
    same = (lambda name: name == spec) if exact else (lambda name: loose(name) == loose(spec))
    for value in model.graph.input:
        if same(value.name):
            raise FtonnxError(f"{spec!r} is the graph input {value.name!r}; cutting there would leave no nodes, "
                              f"name a node after it")
    if any(same(t.name) for t in model.graph.initializer):
        raise FtonnxError(f"{spec!r} is a parameter (initializer), not a node's output; name a node")


def _suggest(model: onnx.ModelProto, spec: str) -> str:
    """The no-match error, naming the closest node names, name parts, tensor names and op types."""
    names = [n.name for n in model.graph.node] + [o for n in model.graph.node for o in n.output]
    names += [part for name in names for part in name.split("/")] + [n.op_type for n in model.graph.node]
    by_loose: dict[str, str] = {}
    for name in names:
        if loose(name):
            by_loose.setdefault(loose(name), name)
    close = difflib.get_close_matches(loose(spec), list(by_loose), n=5, cutoff=0.6)
    hint = "; closest: " + ", ".join(by_loose[c] for c in close) if close else ""
    return f"no node or tensor matches {spec!r}{hint} (`ftonnx inspect MODEL` lists them all)"


def resolve(model: onnx.ModelProto, spec: str, *, last: bool = False, index: int | None = None,
            graph: GraphIndex | None = None) -> str:
    """The tensor SPEC names (`auto`: the recommended cut); `last` or `index` pick among several matches.
    `graph` is the model's index when the caller has one."""
    if last and index is not None:
        raise FtonnxError("give --last or --index, not both")
    graph = graph or GraphIndex(model)
    if spec == "auto":
        return recommended_cut(model, graph)["tensor"]
    if not any(n.name == spec for n in model.graph.node):
        _check_not_input(model, spec, exact=True)
    found = _matches(model, spec)
    if not found:
        _check_not_input(model, spec, exact=False)
        raise FtonnxError(_suggest(model, spec))
    if len(found) == 1 and index in (None, 0, -1):
        return found[0][1]
    if last:
        return found[-1][1]
    if index is not None:
        if not -len(found) <= index < len(found):
            raise FtonnxError(f"--index {index} is out of range: {spec!r} matches {len(found)} nodes "
                              f"(0..{len(found) - 1})")
        return found[index][1]
    shapes = graph.shapes
    listed = "; ".join(f"[{i}] {n.name or n.op_type} -> {t} {format_shape(shapes.get(t))}"
                       for i, (n, t) in enumerate(found[:_MAX_LISTED]))
    more = f"; ... {len(found) - _MAX_LISTED} more" if len(found) > _MAX_LISTED else ""
    raise FtonnxError(f"{spec!r} matches {len(found)} nodes: {listed}{more}; pick one with --last or --index K")
