"""Fake quantisation in a training graph, exactly where an int8 model quantises (a `QuantPlan`), so that
training sees what the int8 model will compute.

One pass with a table of rules, one per kind of quantised tensor; every rule builds on ONNX Runtime's
`com.microsoft::FakeQuant` (round to the integer grid, clamp, back to float; the gradient passes straight
through where the value was not clamped; one scale per tensor):
- weight: per channel (or per tensor) and symmetric, the scale recomputed from the weight as it trains,
  max |w| / 127 over the channel (TopK: ORT 1.19.2 has no ReduceMax gradient), as the quantiser computes it
  from the trained weights at export; FakeQuant at scale 1 of w / scale, times the scale. An all-zero
  channel gets scale 1, as the quantiser gives it (and its gradient stays finite).
- fixed activation: a tensor training does not change (the frozen part's) keeps its calibrated scale.
- learned activation: a tensor downstream of a trained parameter has the scale s0 * exp(gain * t), t a new
  parameter starting at 0 (learned step size, Esser et al. 2020: the gradient of s * FakeQuant(x / s)
  weighs rounding error against clamping); tensors that share a scale in the int8 model share one t.
- graph output: left in float. Nothing reads it; rounding the loss's input teaches nothing, and a new head's
  output range is unknown before training, so the export calibrates it on the trained model.
The weight's own name and value stay (the export reads trained weights by name); a quantised activation keeps
its name, its producer writing `<name>/float`. Plan entries this graph lacks (a cached prefix's) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign
from ftonnx.graph.qdqplan import ActivationQuant, QuantPlan, WeightQuant

MS_DOMAIN = "com.microsoft"
TINY = np.finfo(np.float32).tiny


@dataclass
class FakeQuantGraph:
    """The rewritten model; the learned scales ({group: {"param", "scale", "zero_point", "qmin", "qmax",
    "tensors"}}), the tensors with fixed scales, the weights fake-quantised, the outputs left in float."""

    model: onnx.ModelProto
    learned: dict[str, dict] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


class _Pass:
    """What the rules share: the index, the tensors training changes, the learned scales' gain, the nodes to
    put first and after each producer, the renamed producer outputs and rewired inputs."""

    def __init__(self, model: onnx.ModelProto, trainable: Collection[str], gain: float) -> None:
        self.g = GraphIndex(model)
        self.gain = gain
        self.varying = {o for n in self.g.downstream(trainable) for o in n.output}
        self.front: list[onnx.NodeProto] = []
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.renamed: dict[str, str] = {}
        self.rewired: dict[str, str] = {}
        self.scales: dict[str, str] = {}
        self.result = FakeQuantGraph(model)

    def const(self, base: str, suffix: str, value: np.ndarray, into: list[onnx.NodeProto]) -> str:
        node = self.g.constant(base, suffix, value)
        into.append(node)
        return node.output[0]

    def fake_quant(self, x: str, scale: str, zero: str, q: ActivationQuant | WeightQuant, base: str,
                   output: str | None = None) -> onnx.NodeProto:
        """FakeQuant(x, scale, zero) on q's integer range, with its mask output."""
        node = self.g.node("FakeQuant", [x, scale, zero], base, "fake_quant", output=output, domain=MS_DOMAIN,
                           quant_min=q.qmin, quant_max=q.qmax)
        node.output.append(self.g.fresh(base, "mask"))
        return node


def find_weight(g: GraphIndex, w: WeightQuant) -> str | None:
    """The initializer of graph `g` that a plan's weight names: by its name, else the one the same node reads
    at the same input (a weight the quantiser's graph optimisation folded, e.g. with a BatchNormalization;
    per-channel rounding commutes with the per-channel factor it folded in)."""
    if w.weight in g.initializers:
        return w.weight
    node = next((n for n in g.nodes if n.name == w.node), None)
    name = node.input[w.input] if node is not None and w.input < len(node.input) else ""
    return name if name in g.initializers else None


def _weight_scale(p: _Pass, w: str, q: WeightQuant, into: list[onnx.NodeProto]) -> str:
    """Nodes computing max |w| / (half the integer range) per channel, shaped to broadcast against w."""
    g, base = p.g, f"{w}/fake_quant"
    dims = list(g.initializers[w].dims)
    x, channels = w, dims[q.axis] if q.axis is not None else 1
    if q.axis:
        into.append(g.node("Transpose", [w], base, "channels_first",
                           perm=[q.axis, *(i for i in range(len(dims)) if i != q.axis)]))
        x = into[-1].output[0]
    rows = g.node("Reshape", [x, p.const(base, "rows", np.array([channels, -1], np.int64), into)], base, "rows")
    absolute = g.node("Abs", [rows.output[0]], base, "abs")
    top = g.node("TopK", [absolute.output[0], p.const(base, "k", np.array([1], np.int64), into)], base, "max", axis=1)
    top.output.append(g.fresh(base, "argmax"))
    half = p.const(base, "half_range", np.array((q.qmax - q.qmin) / 2, np.float32), into)
    scale = g.node("Div", [top.output[0], half], base, "scale")
    empty = g.node("Less", [scale.output[0], p.const(base, "tiny", np.array(TINY, np.float32), into)], base, "empty")
    safe = g.node("Where", [empty.output[0], p.const(base, "one", np.array(1.0, np.float32), into), scale.output[0]],
                  base, "safe")
    shape = [1] * len(dims) if q.axis is not None else []
    if q.axis is not None:
        shape[q.axis] = channels
    into += [rows, absolute, top, scale, empty, safe]
    into.append(g.node("Reshape", [safe.output[0], p.const(base, "shape", np.array(shape, np.int64), into)],
                       base, "broadcast"))
    return into[-1].output[0]


def _rescaled(p: _Pass, x: str, scale: str, q: ActivationQuant | WeightQuant, base: str, into: list[onnx.NodeProto],
              output: str | None = None) -> str:
    """scale * FakeQuant(x / scale) at scale 1: fake quantisation whose scale takes a gradient."""
    one = p.const(base, "one", np.array(1.0, np.float32), into)
    zero = p.const(base, "zero_point", np.array(q.zero_point, np.float32), into)
    divided = p.g.node("Div", [x, scale], base, "divided")
    grid = p.fake_quant(divided.output[0], one, zero, q, base)
    into += [divided, grid, p.g.node("Mul", [grid.output[0], scale], base, "rescaled", output=output)]
    return into[-1].output[0]


def _weight(p: _Pass, w: str, q: WeightQuant) -> None:
    base = f"{w}/fake_quant"
    scale = _weight_scale(p, w, q, p.front)
    p.rewired[w] = _rescaled(p, w, scale, q, base, p.front)
    p.result.weights.append(w)


def _float_input(p: _Pass, tensor: str) -> tuple[str, list[onnx.NodeProto], str | None]:
    """(what the fake quantisation reads, where its nodes go, the name it writes): a computed tensor's producer
    writes `<tensor>/float` and the nodes follow it; a graph input's readers are rewired to a new tensor."""
    if p.g.is_computed(tensor):
        p.renamed[tensor] = p.g.fresh(tensor, "float")
        return p.renamed[tensor], p.after.setdefault(tensor, []), tensor
    p.rewired[tensor] = p.g.fresh(tensor, "quantised")
    return tensor, p.front, p.rewired[tensor]


def _fixed(p: _Pass, tensor: str, q: ActivationQuant) -> None:
    x, into, output = _float_input(p, tensor)
    base = f"{tensor}/fake_quant"
    scale = p.const(base, "scale", np.array(q.scale, np.float32), into)
    zero = p.const(base, "zero_point", np.array(q.zero_point, np.float32), into)
    into.append(p.fake_quant(x, scale, zero, q, base, output=output))
    p.result.fixed.append(tensor)


def _learned_scale(p: _Pass, tensor: str, q: ActivationQuant) -> str:
    """The tensor holding the group's learned scale s0 * exp(gain * t), built once per group."""
    if q.group not in p.scales:
        g, base = p.g, f"{tensor}/fake_quant"
        param = g.fresh(tensor, "qat_log_scale")
        p.g.model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), param))
        gained = g.node("Mul", [param, p.const(base, "gain", np.array(p.gain, np.float32), p.front)], base, "gained")
        exp = g.node("Exp", [gained.output[0]], base, "exp")
        p.front += [gained, exp, g.node("Mul", [exp.output[0], p.const(base, "scale0", np.array(q.scale, np.float32),
                                                                         p.front)], base, "scale")]
        p.scales[q.group] = p.front[-1].output[0]
        p.result.learned[q.group] = {"param": param, "scale": q.scale, "zero_point": q.zero_point, "qmin": q.qmin,
                                     "qmax": q.qmax, "tensors": []}
    p.result.learned[q.group]["tensors"].append(tensor)
    return p.scales[q.group]


def _learned(p: _Pass, tensor: str, q: ActivationQuant) -> None:
    scale = _learned_scale(p, tensor, q)
    x, into, output = _float_input(p, tensor)
    _rescaled(p, x, scale, q, f"{tensor}/fake_quant", into, output=output)


def _output(p: _Pass, tensor: str, q: ActivationQuant) -> None:
    p.result.outputs.append(tensor)


def _kind(p: _Pass, tensor: str) -> str:
    if tensor in p.g.outputs:
        return "output"
    return "learned" if tensor in p.varying and p.gain > 0 else "fixed"


_ACTIVATION_RULES: dict[str, Callable[[_Pass, str, ActivationQuant], None]] = {
    "output": _output, "fixed": _fixed, "learned": _learned,
}


def _typed(p: _Pass) -> list[onnx.ValueInfoProto]:
    """Types and shapes of the fake-quantised tensors, as they were: onnx's shape inference does not know
    FakeQuant, and later passes (DELTA's layers, the loss) read shapes downstream of it."""
    graph = p.g.inferred.graph
    known = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    typed = []
    for original, quantised in [*((t, t) for t in p.renamed), *p.rewired.items()]:
        if original in known and original not in p.g.outputs:
            info = onnx.ValueInfoProto()
            info.CopyFrom(known[original])
            info.name = quantised
            typed.append(info)
        elif original in p.g.initializers:
            typed.append(helper.make_tensor_value_info(quantised, onnx.TensorProto.FLOAT,
                                                       list(p.g.initializers[original].dims)))
    return typed


def _rebuilt(p: _Pass) -> list[onnx.NodeProto]:
    """The node list: what goes first, then each original node (outputs renamed, inputs rewired) followed by the
    fake quantisation of its outputs."""
    nodes = list(p.front)
    for node in p.g.nodes:
        original = list(dict.fromkeys(node.output))
        assign(node.input, [p.rewired.get(i, i) for i in node.input])
        assign(node.output, [p.renamed.get(o, o) for o in node.output])
        nodes.append(node)
        for tensor in original:
            nodes += p.after.get(tensor, [])
    return nodes


def add_fake_quant(model: onnx.ModelProto, plan: QuantPlan, trainable: Collection[str],
                   gain: float) -> FakeQuantGraph:
    """`model` (edited in place, returned with what was done) with fake quantisation as `plan` says, the
    activations downstream of parameters `trainable` with learned scales of gain `gain` (0: every scale fixed)."""
    p = _Pass(model, trainable, gain)
    for w in plan.weights:
        name = find_weight(p.g, w)
        if name is not None and name not in p.rewired:
            _weight(p, name, w)
    for tensor, q in plan.activations.items():
        if p.g.is_computed(tensor) or tensor in p.g.inputs:
            _ACTIVATION_RULES[_kind(p, tensor)](p, tensor, q)
    typed = _typed(p)
    assign(model.graph.node, _rebuilt(p))
    model.graph.value_info.extend(typed)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return p.result


def check_plan(plan: QuantPlan, model: onnx.ModelProto) -> None:
    """FtonnxError unless every tensor and weight the plan quantises is one of `model`'s (the plan comes from a
    graph ONNX Runtime optimised first: fusions keep the names of what they fuse, and this checks it)."""
    g = GraphIndex(model)
    if missing := [t for t in plan.activations if not (g.is_computed(t) or t in g.inputs)]:
        raise FtonnxError(f"--qat: the int8 model quantises tensor {missing[0]!r}, which the model has not "
                          "(ONNX Runtime's optimiser renamed it); train without --qat")
    if missing := [w.weight for w in plan.weights if find_weight(g, w) is None]:
        raise FtonnxError(f"--qat: the int8 model quantises weight {missing[0]!r}, which the model has not; "
                          "train without --qat")
