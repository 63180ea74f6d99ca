"""Bring any exporter's graph to one tidy form before surgery and training.

Exporters differ: weights may be `Constant` nodes instead of initializers, initializers may be
listed as graph inputs (IR < 4), shape arithmetic may be left unfolded, the opset may be below
ONNX Runtime training's floor of 12. `normalize` fixes each and reports what it changed.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import (
    DEFAULT_DOMAINS,
    GraphIndex,
    assign,
    clone,
    drop_unused_initializers,
    is_onnx_op,
)
from ftonnx.graph.io import check_model

TRAINING_MIN_OPSET = 12
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"}


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version the model imports."""
    for op in model.opset_import:
        if op.domain in DEFAULT_DOMAINS:
            return op.version
    raise FtonnxError("model imports no default-domain (ai.onnx) opset")


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn `Constant` nodes into initializers, so their values can be trained; returns the count."""
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        value = _constant_value(node) if is_onnx_op(node, "Constant") and len(node.attribute) == 1 else None
        if value is None:
            kept.append(node)
        else:
            graph.initializer.append(value)
            moved += 1
    assign(graph.node, kept)
    return moved


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    attr = node.attribute[0]
    name = node.output[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        tensor.name = name
        return tensor
    scalars = {
        "value_float": (onnx.TensorProto.FLOAT, [], [attr.f]),
        "value_floats": (onnx.TensorProto.FLOAT, [len(attr.floats)], list(attr.floats)),
        "value_int": (onnx.TensorProto.INT64, [], [attr.i]),
        "value_ints": (onnx.TensorProto.INT64, [len(attr.ints)], list(attr.ints)),
    }
    if attr.name in scalars:
        dtype, dims, vals = scalars[attr.name]
        return helper.make_tensor(name, dtype, dims, vals)
    return None  # sparse or string constants are left as nodes


def inputs_backed_by_initializers(model: onnx.ModelProto) -> int:
    """Drop graph inputs that merely declare an initializer (IR < 4 style); returns the count."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        assign(model.graph.input, keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped


def _foldable(node: onnx.NodeProto) -> bool:
    return (is_onnx_op(node) and node.op_type not in _NOT_FOLDABLE
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute))


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers and store their outputs as initializers.

    This removes exporters' shape arithmetic (the Shape-free chains that compute pads or reshape
    targets); returns the number of nodes folded.
    """
    index = GraphIndex(model)
    foldable = index.computable(set(index.initializers) - {i.name for i in model.graph.input}, _foldable)
    if not foldable:
        return 0
    folded = {id(n) for n in foldable}
    rest = [n for n in index.nodes if id(n) not in folded]
    needed = {i for n in rest for i in n.input} | set(index.outputs)
    wanted = sorted({o for n in foldable for o in n.output if o} & needed)
    used = sorted({i for n in foldable for i in n.input if i in index.initializers})
    sub = helper.make_model(
        helper.make_graph(foldable, "fold", [], [helper.make_empty_tensor_value_info(n) for n in wanted],
                          [index.initializers[n] for n in used]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    values = ReferenceEvaluator(sub).run(wanted, {})
    assign(model.graph.node, rest)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in zip(wanted, values))
    drop_unused_initializers(model)
    return len(foldable)


def lift_opset(model: onnx.ModelProto, minimum: int = TRAINING_MIN_OPSET) -> onnx.ModelProto:
    """Convert the model to opset `minimum` when it is below it (onnx's version converter)."""
    if onnx_opset(model) >= minimum:
        return model
    try:
        lifted = onnx.version_converter.convert_version(model, minimum)
    except Exception as exc:
        raise FtonnxError(f"could not lift opset {onnx_opset(model)} to {minimum}: {exc}") from None
    return lifted


def lift_ir_version(model: onnx.ModelProto) -> int | None:
    """Raise the IR version to the minimum the imported opsets need (old exporters leave it low); the old one."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version >= needed:
        return None
    old, model.ir_version = model.ir_version, needed
    return old


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Return the tidied model and one line per change made (empty when it was already tidy)."""
    changes: list[str] = []
    model = clone(model)
    if n := inputs_backed_by_initializers(model):
        changes.append(f"dropped {n} graph inputs that only declared initializers")
    if n := constants_to_initializers(model):
        changes.append(f"turned {n} Constant nodes into initializers")
    if n := fold_constants(model):
        changes.append(f"folded {n} nodes that computed constants")
    old = onnx_opset(model)
    if old < TRAINING_MIN_OPSET:
        model = lift_opset(model)
        changes.append(f"lifted opset {old} to {TRAINING_MIN_OPSET} (ONNX Runtime training's floor)")
    if (old_ir := lift_ir_version(model)) is not None:
        changes.append(f"raised IR version {old_ir} to {model.ir_version} (the minimum for its opsets)")
    check_model(model, "the model")
    return model, changes
