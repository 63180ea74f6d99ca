"""Bring any exporter's graph to one tidy form before surgery and training.

Exporters differ: weights may be `Constant` nodes instead of initializers, initializers may be
listed as graph inputs (IR < 4), shape arithmetic may be left unfolded, the opset may be below
ONNX Runtime training's floor of 12. `normalize` fixes each and reports what it changed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ftonnx import isolated
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.batch import dynamic_batch, fixed_batch_input
from ftonnx.graph.index import GraphIndex, assign, attributes, clone, drop_unused_initializers, is_onnx_op, onnx_opset
from ftonnx.graph.validate import check_inference, check_structure, check_untrusted

TRAINING_MIN_OPSET = 12
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "Dropout", "If", "Loop", "Scan"}


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


def _dequantize(node: onnx.NodeProto, x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None) -> np.ndarray:
    """DequantizeLinear in numpy: (x - zero_point) * scale, per tensor or along `axis` (quantised weights)."""
    axis = attributes(node).get("axis", 1)
    shape = [1] * x.ndim
    if scale.ndim == 1 and x.ndim:
        shape[axis] = -1
    zero = np.zeros_like(scale, np.int32) if zero is None else zero.astype(np.int32)
    return ((x.astype(np.int32) - zero.reshape(shape)) * scale.reshape(shape)).astype(scale.dtype)


def _fold(node: onnx.NodeProto, values: dict[str, np.ndarray], model: onnx.ModelProto) -> list[np.ndarray] | None:
    """The outputs of a node whose inputs are all known, or None when it cannot be evaluated here (a kernel
    or type the reference evaluator, or numpy, lacks): the node then stays in the graph."""
    try:
        if node.op_type == "DequantizeLinear":
            return [_dequantize(node, *(values[i] if i else None for i in node.input))]
        inits = [numpy_helper.from_array(values[i], i) for i in dict.fromkeys(i for i in node.input if i)]
        outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        sub = helper.make_model(helper.make_graph([node], "fold", [], outputs, inits),
                                opset_imports=list(model.opset_import), ir_version=model.ir_version)
        from onnx.reference import ReferenceEvaluator  # 30 ms to import, for the few graphs that need it

        return list(ReferenceEvaluator(sub).run(None, {}))
    except Exception:
        return None


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers (exporters' shape arithmetic, weights stored as
    DequantizeLinear of int8 initializers) and store their outputs as initializers; nodes that cannot be
    evaluated here stay. Returns the number of nodes folded."""
    index = GraphIndex(model)
    values: dict[str, np.ndarray] = {}
    folded: list[onnx.NodeProto] = []
    for node in index.computable(set(index.initializers) - {i.name for i in model.graph.input}, _foldable):
        if any(i and i not in index.initializers and i not in values for i in node.input):
            continue  # an input's producer could not be folded
        for name in node.input:
            if name and name not in values:
                values[name] = numpy_helper.to_array(index.initializers[name])
        outputs = _fold(node, values, model)
        if outputs is not None:
            values.update(zip([o for o in node.output if o], outputs))
            folded.append(node)
    if not folded:
        return 0
    done = {id(n) for n in folded}
    rest = [n for n in index.nodes if id(n) not in done]
    needed = {i for n in rest for i in n.input} | set(index.outputs)
    wanted = sorted({o for n in folded for o in n.output if o} & needed)
    assign(model.graph.node, rest)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(values[name]), name) for name in wanted)
    drop_unused_initializers(model)
    return len(folded)


def lift_opset(model: onnx.ModelProto, minimum: int = TRAINING_MIN_OPSET) -> onnx.ModelProto:
    """Convert the model to opset `minimum` when it is below it (onnx's version converter, in a child process)."""
    if onnx_opset(model) >= minimum:
        return model

    def convert() -> bytes:
        try:
            return onnx.version_converter.convert_version(model, minimum).SerializeToString()
        except Exception as exc:  # the converter's C++ raises RuntimeError, ValidationError and others
            raise FtonnxError(first_line(exc)) from None

    try:
        lifted = isolated.run(convert)  # native code on a model not yet checked: a crash must not end ftonnx
    except FtonnxError as exc:
        raise FtonnxError(f"could not lift opset {onnx_opset(model)} to {minimum}: {exc}") from None
    return onnx.load_from_string(lifted)


def lift_ir_version(model: onnx.ModelProto) -> int | None:
    """Raise the IR version to the minimum the imported opsets need (old exporters leave it low); the old one."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version >= needed:
        return None
    old, model.ir_version = model.ir_version, needed
    return old


def normalize(model: onnx.ModelProto, what: str = "the model", *,
              copy: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """Return the tidied model and one line per change made (empty when it was already tidy). With `copy` False
    the passes may edit `model` on the way, which saves copying the weights: for a model nobody else holds (fresh
    from its file); use the model returned.

    The model is untrusted: it is checked in Python before the passes and by onnx's full check in a
    child process after them (`ftonnx.graph.validate`), so that a malformed one is an FtonnxError about
    `what` (the file's name).
    """
    changes: list[str] = []
    check_structure(model, what)
    if copy:
        model = clone(model)
    if n := inputs_backed_by_initializers(model):
        changes.append(f"dropped {n} graph inputs that only declared initializers")
    if n := constants_to_initializers(model):
        changes.append(f"turned {n} Constant nodes into initializers")
    if n := fold_constants(model):
        changes.append(f"folded {n} nodes that computed constants")
    if fixed_batch_input(model) is not None:
        check_inference(model, what)  # before dynamic_batch's shape inference, which runs in-process
    if (batched := dynamic_batch(model)) is not None:
        model = batched
        changes.append("made the batch dimension dynamic (it was fixed at 1)")
    old = onnx_opset(model)
    if old < TRAINING_MIN_OPSET:
        model = lift_opset(model)
        changes.append(f"lifted opset {old} to {TRAINING_MIN_OPSET} (ONNX Runtime training's floor)")
    if (old_ir := lift_ir_version(model)) is not None:
        changes.append(f"raised IR version {old_ir} to {model.ir_version} (the minimum for its opsets)")
    check_untrusted(model, what, structure=bool(changes))  # unchanged: its structure was checked above
    return model, changes
