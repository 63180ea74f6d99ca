"""The training objective as graph nodes: a `labels` input and a scalar `loss` output beside `logits`.

ftonnx hands ONNX Runtime a graph that already computes its loss whenever the loss is more than
plain cross-entropy. One pass adds a table of terms, each a few nodes ending in a scalar, summed:
- cross_entropy: -sum_i sum_c t_ic * w_c * log_softmax(logits)_ic / sum_i w_{y_i}, with targets
  t = (1 - eps) * onehot(y) + eps / C (label smoothing eps) and class weights w; PyTorch's
  `cross_entropy(weight=w, label_smoothing=eps)`, mean reduction. Targets come from a constant
  C x C table gathered by label, so no gradient flows through them.
- l2sp (Li et al., 2018): alpha / 2 * ||w - w0||^2 over the reparametrised backbone parameters,
  i.e. alpha / 2 * s^2 * sum ||delta||^2 (see `ftonnx.graph.reparam`).
- delta (Li et al., 2019): for each chosen layer, alpha / 2 * mean over the batch of
  sum_c C * a_c * mean over positions of (FM_c - FM0_c)^2, where FM0 is the layer recomputed from
  the pretrained weights w0 (a copy of the nodes between the trainable parameters and the layer,
  reading w0 in place of w0 + s * delta, with Dropout masks left out) and a the layer's channel
  attention (summing to 1). Channels are on axis 1, as ONNX's Conv lays them out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign, clone, onnx_opset
from ftonnx.graph.reparam import Reparametrised

LOSS = "loss"
LABELS = "labels"
LOGITS = "logits"


@dataclass
class Objective:
    """What the loss adds to cross-entropy: class weights (one per class, None: all 1), label smoothing,
    the L2-SP and DELTA coefficients, and DELTA's layers with their channel attention."""

    class_weights: list[float] | None = None
    label_smoothing: float = 0.0
    l2sp: float = 0.0
    delta: float = 0.0
    attention: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Pass:
    """What the terms share while one objective is added: the index (fresh names, shapes), the new nodes,
    the reparametrisation, Dropout mask inputs, and the reference copies DELTA has made so far."""

    def __init__(self, model: onnx.ModelProto, objective: Objective, reparam: Reparametrised | None,
                 masks: Collection[str]) -> None:
        self.g, self.objective, self.masks = GraphIndex(model), objective, set(masks)
        self.reparam = reparam or Reparametrised(model)
        self.opset = onnx_opset(model)
        self.nodes: list[onnx.NodeProto] = []
        self.reference = {eff: w0 for w0, eff in self.reparam.effective.items()}
        varying = self.g.downstream(self.reparam.effective.values())
        self.varying = {id(n) for n in varying}

    def op(self, op: str, inputs: list[str], suffix: str, **attrs: Any) -> str:
        """Add a node under `objective/`; its output's name."""
        node = self.g.node(op, inputs, "objective", suffix, **attrs)
        self.nodes.append(node)
        return node.output[0]

    def const(self, suffix: str, value: np.ndarray) -> str:
        node = self.g.constant("objective", suffix, value)
        self.nodes.append(node)
        return node.output[0]

    def total(self, tensors: list[str], suffix: str, output: str | None = None) -> str:
        """The sum of `tensors` as a chain of Adds (ORT 1.19.2 has no gradient for Sum)."""
        if len(tensors) == 1:
            return self.op("Identity", tensors, suffix, output=output)
        result = tensors[0]
        for i, tensor in enumerate(tensors[1:], 1):
            result = self.op("Add", [result, tensor], suffix, output=output if i == len(tensors) - 1 else None)
        return result

    def reduce(self, op: str, x: str, suffix: str, axes: list[int] | None = None) -> str:
        """`op` (ReduceSum, ReduceMean) over `axes` (None: all), keepdims 0, as the opset spells it."""
        axes_as_input = self.opset >= (13 if op == "ReduceSum" else 18)
        if axes is None:
            return self.op(op, [x], suffix, keepdims=0)
        if axes_as_input:
            return self.op(op, [x, self.const(f"{suffix}_axes", np.array(axes, np.int64))], suffix, keepdims=0)
        return self.op(op, [x], suffix, keepdims=0, axes=axes)


def _classes(p: _Pass) -> int:
    shape = p.g.static_shape(LOGITS)
    if not shape or len(shape) != 2 or shape[1] is None:
        raise FtonnxError(f"the loss needs {LOGITS!r} shaped (batch, classes) with a known class count")
    return shape[1]


def _cross_entropy(p: _Pass) -> str:
    classes, o = _classes(p), p.objective
    weights = np.asarray(o.class_weights if o.class_weights is not None else [1.0] * classes, np.float32)
    if weights.shape != (classes,):
        raise FtonnxError(f"{len(weights)} class weights for {classes} classes")
    eps = o.label_smoothing
    table = (((1.0 - eps) * np.eye(classes) + eps / classes) * weights[None, :]).astype(np.float32)
    targets = p.op("Gather", [p.const("targets", table), LABELS], "target_rows", axis=0)
    log_p = p.op("LogSoftmax", [LOGITS], "log_softmax", axis=1)
    total = p.reduce("ReduceSum", p.op("Mul", [targets, log_p], "weighted_log_p"), "sum_weighted_log_p")
    norm = p.reduce("ReduceSum", p.op("Gather", [p.const("class_weights", weights), LABELS], "sample_weights",
                                      axis=0), "weight_sum")
    return p.op("Neg", [p.op("Div", [total, norm], "mean_log_p")], "cross_entropy")


def _l2sp(p: _Pass) -> str:
    squares = [p.reduce("ReduceSum", p.op("Mul", [d, d], "l2sp_square"), "l2sp_sum_square")
               for d in p.reparam.deltas.values()]  # ORT 1.19.2 has no gradient for ReduceSumSquare
    total = p.total(squares, "l2sp_sum")
    factor = 0.5 * p.objective.l2sp * p.reparam.scale ** 2
    return p.op("Mul", [total, p.const("l2sp_alpha", np.array(factor, np.float32))], "l2sp")


def _reference_copy(p: _Pass, tensor: str) -> str:
    """`tensor` computed from the pretrained weights: the varying nodes it depends on, copied once."""
    for node in p.g.upstream([tensor]):
        if id(node) not in p.varying or node.output[0] in p.reference:
            continue
        inputs = [p.reference.get(i, i) for i in node.input]
        outputs = [p.g.fresh(o, "pretrained") if o else "" for o in node.output]
        masked = [i for i in node.input if i in p.masks]
        if masked:  # a Dropout turned into a mask multiply: the pretrained network runs without it
            copy = helper.make_node("Identity", [i for i in inputs if i not in masked][:1], outputs[:1],
                                    name=p.g.fresh(node.name or outputs[0], "pretrained"))
        else:
            copy = _clone_node(node, inputs, outputs, p.g.fresh(node.name or outputs[0], "pretrained"))
        p.nodes.append(copy)
        p.reference.update({o: r for o, r in zip(node.output, outputs) if o})
    if tensor not in p.reference:
        raise FtonnxError(f"DELTA layer {tensor!r} does not depend on a trainable backbone parameter")
    return p.reference[tensor]


def _clone_node(node: onnx.NodeProto, inputs: list[str], outputs: list[str], name: str) -> onnx.NodeProto:
    """A copy of `node` reading `inputs`, writing `outputs`, named `name`."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    assign(copy.input, inputs)
    assign(copy.output, outputs)
    copy.name = name
    return copy


def _delta(p: _Pass) -> str:
    terms = []
    for layer, attention in p.objective.attention.items():
        shape = p.g.static_shape(layer)
        if shape is None or len(shape) < 2 or shape[1] != len(attention):
            raise FtonnxError(f"DELTA layer {layer!r} has shape {shape}, not (batch, {len(attention)}, ...)")
        diff = p.op("Sub", [layer, _reference_copy(p, layer)], "delta_diff")
        square = p.op("Mul", [diff, diff], "delta_square")
        if len(shape) > 2:
            square = p.reduce("ReduceMean", square, "delta_channel_mean", list(range(2, len(shape))))
        scale = 0.5 * p.objective.delta * len(attention) * np.asarray(attention, np.float64)
        weighted = p.op("Mul", [square, p.const("delta_attention", scale.astype(np.float32))], "delta_weighted")
        per_sample = p.reduce("ReduceSum", weighted, "delta_per_sample", [1])
        terms.append(p.reduce("ReduceMean", per_sample, "delta_layer"))
    return p.total(terms, "delta")


# term -> (whether the objective has it, the nodes computing it)
_TERMS: dict[str, tuple[Callable[[_Pass], bool], Callable[[_Pass], str]]] = {
    "cross_entropy": (lambda p: True, _cross_entropy),
    "l2sp": (lambda p: p.objective.l2sp > 0 and bool(p.reparam.deltas), _l2sp),
    "delta": (lambda p: p.objective.delta > 0 and bool(p.objective.attention), _delta),
}


def add_objective(model: onnx.ModelProto, objective: Objective, reparam: Reparametrised | None = None,
                  masks: Collection[str] = ()) -> onnx.ModelProto:
    """A copy of `model` (output `logits`) with an int64 input `labels` (batch) and outputs `loss` and `logits`.

    `reparam` says which parameters are w0 + s * delta (`model` is its model); `masks` names the Dropout
    mask inputs, which DELTA's pretrained copy leaves out.
    """
    names = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    if LOGITS not in names or LABELS in names or LOSS in names:
        raise FtonnxError(f"the objective needs a model with output {LOGITS!r} and no {LABELS!r} or {LOSS!r}")
    out = clone(model)
    p = _Pass(out, objective, reparam, masks)
    terms = [build(p) for has, build in _TERMS.values() if has(p)]
    p.total(terms, "total", output=LOSS)
    out.graph.node.extend(p.nodes)
    out.graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, ["batch"]))
    logits = next(o for o in out.graph.output if o.name == LOGITS)
    assign(out.graph.output, [helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []), logits])
    return out
