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
from ftonnx.graph.io import check_model

TRAINING_MIN_OPSET = 12
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"}


def onnx_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset version the model imports."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise FtonnxError("model imports no default-domain (ai.onnx) opset")


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn `Constant` nodes into initializers, so their values can be trained; returns the count."""
    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            value = _constant_value(node)
            if value is not None:
                graph.initializer.append(value)
                moved += 1
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
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
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)
    return dropped


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers and store their outputs as initializers.

    This removes exporters' shape arithmetic (the Shape-free chains that compute pads or reshape
    targets); returns the number of nodes folded.
    """
    graph = model.graph
    known = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    foldable = []
    for node in graph.node:
        if (node.op_type not in _NOT_FOLDABLE and node.domain in ("", "ai.onnx")
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for a in node.attribute)
                and all(i == "" or i in known for i in node.input)):
            foldable.append(node)
            known.update(o for o in node.output if o)
    if not foldable:
        return 0
    folded_outputs = {o for n in foldable for o in n.output if o}
    rest = [n for n in graph.node if n not in foldable]
    needed = {i for n in rest for i in n.input} | {o.name for o in graph.output}
    wanted = sorted(folded_outputs & needed)
    inits = {t.name: t for t in graph.initializer}
    used = {i for n in foldable for i in n.input if i in inits}
    sub = helper.make_model(
        helper.make_graph(foldable, "fold", [], [helper.make_empty_tensor_value_info(n) for n in wanted],
                          [inits[n] for n in used]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    values = ReferenceEvaluator(sub).run(wanted, {})
    del graph.node[:]
    graph.node.extend(rest)
    for name, value in zip(wanted, values):
        graph.initializer.append(numpy_helper.from_array(value, name))
    drop_unused_initializers(model)
    return len(foldable)


def drop_unused_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers that no node or output reads; returns the count."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    used |= {i for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
             for sub in [a.g] for m in sub.node for i in m.input}
    keep = [t for t in graph.initializer if t.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


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
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
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
