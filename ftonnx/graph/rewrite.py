"""Rewrite ops that ONNX Runtime 1.19.2 training cannot differentiate, or mishandles, into equivalent ones.

Every rewrite computes the same values (up to float rounding) and keeps every initializer's name, so
the parameter list chosen before rewriting still names the same tensors:
- HardSigmoid, HardSwish (no gradient builder) become Mul, Add, Clip (and Mul);
- PRelu (no gradient builder) becomes Relu(x) + slope * (x - Relu(x));
- MaxPool and AveragePool whose input has dynamic spatial dimensions become strided Slices combined by
  Max or Sum: their gradient kernels read the static output shape and crash the process (SIGSEGV,
  SIGFPE) when it is unknown. Default-valued `pads` and `ceil_mode` attributes are dropped from MaxPool.
BatchNormalization is not touched here: `ftonnx.train.prepare.freeze_batchnorm` fixes its statistics.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection

import numpy as np
import onnx
from onnx import helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.normalize import TRAINING_MIN_OPSET, onnx_opset

Rule = Callable[["_Rewriter", onnx.NodeProto], "list[onnx.NodeProto] | None"]


class _Rewriter:
    """Fresh names, constants and shape facts shared by the rules while one model is rewritten."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.taken |= {o for n in graph.node for o in [*n.input, *n.output, n.name]}
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        self.types = {i.name: i.type.tensor_type for i in infos if i.type.HasField("tensor_type")}
        self.types.update({t.name: onnx.TypeProto.Tensor(elem_type=t.data_type) for t in graph.initializer})

    def name(self, base: str, suffix: str) -> str:
        """A tensor or node name not yet used in the graph, readable as `base/suffix`."""
        candidate, i = f"{base}/{suffix}", 1
        while candidate in self.taken:
            candidate, i = f"{base}/{suffix}_{i}", i + 1
        self.taken.add(candidate)
        return candidate

    def node(self, op: str, inputs: list[str], base: str, suffix: str, output: str | None = None,
             **attrs: object) -> onnx.NodeProto:
        """A node named after `base` whose single output is `output` or a fresh name."""
        return helper.make_node(op, inputs, [output or self.name(base, suffix)], name=self.name(base, suffix),
                                **attrs)

    def constant(self, base: str, suffix: str, value: np.ndarray) -> onnx.NodeProto:
        """A Constant node: never an initializer, so no parameter list can take it for a weight."""
        out = self.name(base, suffix)
        return helper.make_node("Constant", [], [out], name=self.name(base, suffix + "_const"),
                                value=onnx.numpy_helper.from_array(value, out))

    def dtype(self, tensor: str) -> np.dtype:
        """numpy dtype of a tensor (float32 when shape inference could not tell)."""
        t = self.types.get(tensor)
        return helper.tensor_dtype_to_np_dtype(t.elem_type) if t is not None and t.elem_type else np.dtype(np.float32)

    def shape(self, tensor: str) -> list[int | None] | None:
        """Static dims (None where dynamic), or None when even the rank is unknown."""
        t = self.types.get(tensor)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _base(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _hard_sigmoid(rw: _Rewriter, x: str, alpha: float, beta: float, base: str, out: str) -> list[onnx.NodeProto]:
    dtype = rw.dtype(x)
    consts = [rw.constant(base, s, np.array(v, dtype)) for s, v in
              (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0))]
    a, b, lo, hi = (c.output[0] for c in consts)
    mul = rw.node("Mul", [x, a], base, "mul")
    add = rw.node("Add", [mul.output[0], b], base, "add")
    clip = rw.node("Clip", [add.output[0], lo, hi], base, "clip", output=out)
    return [*consts, mul, add, clip]


def _rewrite_hard_sigmoid(rw: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    attrs = _attrs(node)
    return _hard_sigmoid(rw, node.input[0], attrs.get("alpha", 0.2), attrs.get("beta", 0.5), _base(node),
                         node.output[0])


def _rewrite_hard_swish(rw: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    base = _base(node)
    gate = _hard_sigmoid(rw, node.input[0], 1.0 / 6.0, 0.5, base, rw.name(base, "gate"))
    return [*gate, rw.node("Mul", [node.input[0], gate[-1].output[0]], base, "mul_gate", output=node.output[0])]


def _rewrite_prelu(rw: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, slope = node.input[0], node.input[1]
    base = _base(node)
    relu = rw.node("Relu", [x], base, "relu")
    neg = rw.node("Sub", [x, relu.output[0]], base, "negative")
    scaled = rw.node("Mul", [neg.output[0], slope], base, "scaled")
    return [relu, neg, scaled, rw.node("Add", [relu.output[0], scaled.output[0]], base, "sum", output=node.output[0])]


def _drop_default_pool_attrs(node: onnx.NodeProto) -> bool:
    """Remove all-zero `pads` and zero `ceil_mode` from a MaxPool; True when something was removed."""
    keep = [a for a in node.attribute
            if not (a.name == "pads" and not any(a.ints)) and not (a.name == "ceil_mode" and a.i == 0)]
    changed = len(keep) != len(node.attribute)
    if changed:
        del node.attribute[:]
        node.attribute.extend(keep)
    return changed


def _rewrite_pool(rw: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Pooling as Max/Sum of strided Slices, when its input's spatial dims are dynamic."""
    attrs = _attrs(node)
    kernel = list(attrs.get("kernel_shape", []))
    rank = len(kernel)
    shape = rw.shape(node.input[0])
    strides = list(attrs.get("strides", [1] * rank))
    pads = list(attrs.get("pads", [0] * 2 * rank))
    average = node.op_type == "AveragePool"
    if (shape is None or len(shape) != rank + 2 or all(d is not None for d in shape[2:]) or any(node.output[1:])
            or attrs.get("ceil_mode", 0) or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            or any(d != 1 for d in attrs.get("dilations", [1] * rank))
            or (average and any(pads) and not attrs.get("count_include_pad", 0))):
        return None
    base, x, dtype = _base(node), node.input[0], rw.dtype(node.input[0])
    nodes: list[onnx.NodeProto] = []
    if any(pads):
        fill = 0.0 if average else -np.inf
        full = rw.constant(base, "pads", np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]], np.int64))
        value = rw.constant(base, "pad_value", np.array(fill, dtype))
        padded = rw.node("Pad", [x, full.output[0], value.output[0]], base, "padded")
        nodes += [full, value, padded]
        x = padded.output[0]
    const = {s: rw.constant(base, s, np.array(v, np.int64)) for s, v in
             (("kernel", kernel), ("strides", strides), ("spatial_from", [2]), ("spatial_to", [2 + rank]),
              ("axes", list(range(2, 2 + rank))))}
    nodes += const.values()
    c = {s: n.output[0] for s, n in const.items()}
    dims = rw.node("Shape", [x], base, "shape")
    spatial = rw.node("Slice", [dims.output[0], c["spatial_from"], c["spatial_to"]], base, "spatial")
    span = rw.node("Sub", [spatial.output[0], c["kernel"]], base, "span")
    windows = rw.node("Div", [span.output[0], c["strides"]], base, "windows")
    last = rw.node("Mul", [windows.output[0], c["strides"]], base, "last_start")
    nodes += [dims, spatial, span, windows, last]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        tag = "_".join(map(str, offset))
        starts = rw.constant(base, f"start_{tag}", np.array(offset, np.int64))
        past = rw.constant(base, f"past_{tag}", np.array(offset, np.int64) + 1)
        stop = rw.node("Add", [last.output[0], past.output[0]], base, f"stop_{tag}")  # one past the last window's tap
        tap = rw.node("Slice", [x, starts.output[0], stop.output[0], c["axes"], c["strides"]], base, f"tap_{tag}")
        nodes += [starts, past, stop, tap]
        taps.append(tap.output[0])
    if not average:
        return [*nodes, rw.node("Max", taps, base, "max", output=node.output[0])]
    total = rw.node("Sum", taps, base, "sum")
    inv = rw.constant(base, "inverse_area", np.array(1.0 / np.prod(kernel), dtype))
    return [*nodes, total, inv, rw.node("Mul", [total.output[0], inv.output[0]], base, "mean", output=node.output[0])]


_RULES: dict[str, tuple[Rule, str]] = {
    "HardSigmoid": (_rewrite_hard_sigmoid, "Mul, Add, Clip (ORT has no HardSigmoid gradient)"),
    "HardSwish": (_rewrite_hard_swish, "Mul, Add, Clip, Mul (ORT has no HardSwish gradient)"),
    "PRelu": (_rewrite_prelu, "Relu, Sub, Mul, Add (ORT has no PRelu gradient)"),
    "MaxPool": (_rewrite_pool, "Slices and Max (its gradient crashes ORT on dynamic height/width)"),
    "AveragePool": (_rewrite_pool, "Slices and Sum (its gradient crashes ORT on dynamic height/width)"),
}


def make_trainable(model: onnx.ModelProto, trainable_nodes: Collection[str] | None = None
                   ) -> tuple[onnx.ModelProto, list[str]]:
    """Return a copy whose every op ORT 1.19.2 can train through, and one line per kind of rewrite.

    `trainable_nodes` (names of the nodes gradients flow through; default all) limits where to rewrite;
    initializer names never change, so a parameter list chosen before still applies.
    """
    if onnx_opset(model) < TRAINING_MIN_OPSET:
        raise FtonnxError(f"opset {onnx_opset(model)} is below training's {TRAINING_MIN_OPSET}: normalize the model first")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rw = _Rewriter(out)
    counts: dict[tuple[str, str], int] = {}
    dropped_attrs = 0
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        rule = _RULES.get(node.op_type)
        if node.domain not in ("", "ai.onnx") or rule is None or (
                trainable_nodes is not None and node.name not in trainable_nodes):
            nodes.append(node)
            continue
        if node.op_type == "MaxPool":
            dropped_attrs += _drop_default_pool_attrs(node)
        replacement = rule[0](rw, node)
        if replacement is None:
            nodes.append(node)
            continue
        nodes.extend(replacement)
        counts[(node.op_type, rule[1])] = counts.get((node.op_type, rule[1]), 0) + 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.ClearField("value_info")
    changes = [f"rewrote {n} {op} as {how}" for (op, how), n in counts.items()]
    if dropped_attrs:
        changes.append(f"dropped default-valued pads/ceil_mode from {dropped_attrs} MaxPool")
    return out, changes
