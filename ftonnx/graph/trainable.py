"""Make a forward graph trainable on ONNX Runtime 1.19.2, and make it behave there as ftonnx promises.

One pass over the graph with a table of rules; each replacement computes the same values as the op it
replaces (up to float rounding) and keeps every initializer's name, so a parameter list chosen before
still names the same tensors:
- BatchNormalization (inference mode, constant statistics): ORT turns every one into training-mode
  BatchNormInternal, with batch statistics and the running ones overwritten, even when it is frozen.
  It becomes Sub, Mul, Add with the running statistics as constants; scale and bias stay parameters.
- Dropout: ORT's training graph keeps an inference-mode Dropout a no-op. It becomes a multiplication
  by a mask fed as a new graph input, so the loop draws masks from its own seeded generator and a
  resumed run draws the same ones.
- HardSigmoid, HardSwish (no gradient builder) become Mul, Add, Clip (and Mul);
  PRelu (no gradient builder) becomes Relu(x) + slope * (x - Relu(x)).
- MaxPool whose input has a dynamic height or width, and AveragePool whose input has any dynamic
  dimension (the batch too, as TF and Keras exports leave them), become strided Slices combined by Max
  or Sum (an AveragePool over its whole static map: GlobalAveragePool): their gradient kernels read a
  static output shape and crash the process (SIGSEGV, SIGFPE) when it is unknown. Default-valued
  `pads` and `ceil_mode` are dropped from MaxPool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign, attributes, clone, drop_unused_initializers, is_onnx_op, onnx_opset
from ftonnx.graph.normalize import TRAINING_MIN_OPSET


@dataclass
class TrainableGraph:
    """The rewritten model, one line per kind of rewrite made, and the Dropout mask inputs it reads
    ({"input": name, "ratio": drop ratio, "shape": dims after the batch})."""

    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)


class _Pass:
    """What the rules share while one model is rewritten: the index (fresh names, shapes, constants)
    and the mask inputs the Dropout rule adds."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.g = GraphIndex(model)
        self.masks: list[dict] = []


Rule = Callable[[_Pass, onnx.NodeProto], "list[onnx.NodeProto] | None"]


@dataclass(frozen=True)
class _Rule:
    apply: Rule
    how: str
    everywhere: bool = False  # also where no gradient flows (else only in `trainable_nodes`)


def _base(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _freeze_batchnorm(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    attrs, g = attributes(node), p.g
    x, scale, bias, mean, var = node.input[:5]
    if (attrs.get("training_mode", 0) or len([o for o in node.output if o]) > 1
            or mean not in g.initializers or var not in g.initializers):
        return None
    shape = g.shapes.get(x)
    broadcast = [-1] + [1] * ((len(shape) if shape else 4) - 2)
    inv_std = 1.0 / np.sqrt(numpy_helper.to_array(g.initializers[var]).astype(np.float64) + attrs.get("epsilon", 1e-5))
    base = f"{node.output[0]}/frozen_bn"
    mean_value = numpy_helper.to_array(g.initializers[mean]).astype(np.float32).reshape(broadcast)
    consts = [g.constant(base, "mean", mean_value), g.constant(base, "inv_std", inv_std.astype(np.float32)),
              g.constant(base, "shape", np.array(broadcast, np.int64))]
    mean_c, inv_std_c, shape_c = (c.output[0] for c in consts)
    centered = g.node("Sub", [x, mean_c], base, "centered")
    gain = g.node("Mul", [scale, inv_std_c], base, "gain")
    gain_b = g.node("Reshape", [gain.output[0], shape_c], base, "gain_b")
    bias_b = g.node("Reshape", [bias, shape_c], base, "bias_b")
    scaled = g.node("Mul", [centered.output[0], gain_b.output[0]], base, "scaled")
    return [*consts, centered, gain, gain_b, bias_b, scaled,
            g.node("Add", [scaled.output[0], bias_b.output[0]], base, "add", output=node.output[0])]


def _dropout_ratio(node: onnx.NodeProto, g: GraphIndex) -> float | None:
    """The drop ratio of a Dropout node, or None when it is not a constant."""
    if len(node.input) > 1 and node.input[1]:
        ratio = g.initializers.get(node.input[1])
        return None if ratio is None else float(numpy_helper.to_array(ratio))
    return float(attributes(node).get("ratio", 0.5))


def _dropout_mask(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    g = p.g
    ratio, shape = _dropout_ratio(node, g), g.shapes.get(node.input[0])
    mask_used = len(node.output) > 1 and (g.consumers(node.output[1]) or node.output[1] in g.outputs)
    if ratio is None or (len(node.input) > 2 and node.input[2]) or mask_used:
        raise FtonnxError(f"Dropout node {_base(node)!r} has a computed ratio, training mode or mask in use; "
                          "ftonnx trains only plain Dropout")
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        raise FtonnxError(f"Dropout node {_base(node)!r} acts on a tensor of unknown shape; "
                          "train without dropout (--dropout 0)")
    mask = g.fresh(node.output[0], "dropout_mask")
    p.masks.append({"input": mask, "ratio": ratio, "shape": list(shape[1:])})
    return [g.node("Mul", [node.input[0], mask], mask, "Mul", output=node.output[0])]


def _hard_sigmoid(g: GraphIndex, x: str, alpha: float, beta: float, base: str, out: str) -> list[onnx.NodeProto]:
    dtype = g.dtype(x)
    consts = [g.constant(base, s, np.array(v, dtype)) for s, v in
              (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0))]
    a, b, lo, hi = (c.output[0] for c in consts)
    mul = g.node("Mul", [x, a], base, "mul")
    add = g.node("Add", [mul.output[0], b], base, "add")
    return [*consts, mul, add, g.node("Clip", [add.output[0], lo, hi], base, "clip", output=out)]


def _rewrite_hard_sigmoid(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    attrs = attributes(node)
    return _hard_sigmoid(p.g, node.input[0], attrs.get("alpha", 0.2), attrs.get("beta", 0.5), _base(node),
                         node.output[0])


def _rewrite_hard_swish(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    g, base = p.g, _base(node)
    gate = _hard_sigmoid(g, node.input[0], 1.0 / 6.0, 0.5, base, g.fresh(base, "gate"))
    return [*gate, g.node("Mul", [node.input[0], gate[-1].output[0]], base, "mul_gate", output=node.output[0])]


def _rewrite_prelu(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    g, (x, slope), base = p.g, node.input[:2], _base(node)
    relu = g.node("Relu", [x], base, "relu")
    neg = g.node("Sub", [x, relu.output[0]], base, "negative")
    scaled = g.node("Mul", [neg.output[0], slope], base, "scaled")
    return [relu, neg, scaled, g.node("Add", [relu.output[0], scaled.output[0]], base, "sum", output=node.output[0])]


def _drop_default_pool_attrs(node: onnx.NodeProto) -> bool:
    """Remove all-zero `pads` and zero `ceil_mode` from a MaxPool; True when something was removed."""
    keep = [a for a in node.attribute
            if not (a.name == "pads" and not any(a.ints)) and not (a.name == "ceil_mode" and a.i == 0)]
    changed = len(keep) != len(node.attribute)
    if changed:
        assign(node.attribute, keep)
    return changed


def _slicable_pool(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """Whether a pool's gradient would crash ORT (MaxPool: dynamic height or width; AveragePool: any dynamic
    dimension, the batch included) and it has only the options the Slice form reproduces."""
    attrs = attributes(node)
    rank = len(attrs.get("kernel_shape", []))
    shape = g.static_shape(node.input[0])
    pads = list(attrs.get("pads", [0] * 2 * rank))
    average = node.op_type == "AveragePool"
    crashes = shape is not None and len(shape) == rank + 2 and None in (shape if average else shape[2:])
    return crashes and not (any(node.output[1:]) or attrs.get("ceil_mode", 0)
                            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
                            or any(d != 1 for d in attrs.get("dilations", [1] * rank))
                            or (average and any(pads) and not attrs.get("count_include_pad", 0)))


def _whole_map(g: GraphIndex, node: onnx.NodeProto) -> bool:
    """Whether an AveragePool averages its whole (static) map into one value per channel."""
    attrs = attributes(node)
    shape = g.static_shape(node.input[0])
    return (shape is not None and len(shape) >= 3 and None not in shape[2:]
            and list(attrs.get("kernel_shape", [])) == shape[2:] and not any(attrs.get("pads", []))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def _pool_taps(g: GraphIndex, x: str, kernel: list[int], strides: list[int], base: str) -> tuple[list, list[str]]:
    """Nodes computing, for every kernel offset, the strided Slice of `x` that offset reads; their outputs."""
    rank = len(kernel)
    const = {s: g.constant(base, s, np.array(v, np.int64)) for s, v in
             (("kernel", kernel), ("strides", strides), ("spatial_from", [2]), ("spatial_to", [2 + rank]),
              ("axes", list(range(2, 2 + rank))))}
    nodes = list(const.values())
    c = {s: n.output[0] for s, n in const.items()}
    dims = g.node("Shape", [x], base, "shape")
    spatial = g.node("Slice", [dims.output[0], c["spatial_from"], c["spatial_to"]], base, "spatial")
    span = g.node("Sub", [spatial.output[0], c["kernel"]], base, "span")
    windows = g.node("Div", [span.output[0], c["strides"]], base, "windows")
    last = g.node("Mul", [windows.output[0], c["strides"]], base, "last_start")
    nodes += [dims, spatial, span, windows, last]
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        tag = "_".join(map(str, offset))
        starts = g.constant(base, f"start_{tag}", np.array(offset, np.int64))
        past = g.constant(base, f"past_{tag}", np.array(offset, np.int64) + 1)
        stop = g.node("Add", [last.output[0], past.output[0]], base, f"stop_{tag}")  # one past the last window's tap
        tap = g.node("Slice", [x, starts.output[0], stop.output[0], c["axes"], c["strides"]], base, f"tap_{tag}")
        nodes += [starts, past, stop, tap]
        taps.append(tap.output[0])
    return nodes, taps


def _rewrite_pool(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """Pooling as GlobalAveragePool (a whole-map average) or Max/Sum of strided Slices, where its gradient
    would crash ORT."""
    g = p.g
    if not _slicable_pool(g, node):
        return None
    if node.op_type == "AveragePool" and _whole_map(g, node):
        return [g.node("GlobalAveragePool", [node.input[0]], _base(node), "global", output=node.output[0])]
    attrs, base, x = attributes(node), _base(node), node.input[0]
    kernel = list(attrs["kernel_shape"])
    rank, dtype, average = len(kernel), g.dtype(x), node.op_type == "AveragePool"
    pads = list(attrs.get("pads", [0] * 2 * rank))
    nodes: list[onnx.NodeProto] = []
    if any(pads):
        full = g.constant(base, "pads", np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]], np.int64))
        value = g.constant(base, "pad_value", np.array(0.0 if average else -np.inf, dtype))
        padded = g.node("Pad", [x, full.output[0], value.output[0]], base, "padded")
        nodes += [full, value, padded]
        x = padded.output[0]
    taps_nodes, taps = _pool_taps(g, x, kernel, list(attrs.get("strides", [1] * rank)), base)
    nodes += taps_nodes
    if not average:
        return [*nodes, g.node("Max", taps, base, "max", output=node.output[0])]
    total = g.node("Sum", taps, base, "sum")
    inv = g.constant(base, "inverse_area", np.array(1.0 / np.prod(kernel), dtype))
    return [*nodes, total, inv, g.node("Mul", [total.output[0], inv.output[0]], base, "mean", output=node.output[0])]


def _zero_pad(g: GraphIndex, pad: onnx.NodeProto | None, rank: int) -> list[int] | None:
    """The spatial pads of a Pad node that adds zeros around the height and width only, else None."""
    if pad is None or not is_onnx_op(pad, "Pad") or attributes(pad).get("mode", b"constant") != b"constant" \
            or len(pad.input) < 2 or pad.input[1] not in g.initializers or (len(pad.input) > 3 and pad.input[3]):
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = g.initializers.get(pad.input[2])
        if value is None or numpy_helper.to_array(value).any():
            return None
    pads = numpy_helper.to_array(g.initializers[pad.input[1]]).astype(int).tolist()
    if len(pads) != 2 * rank or any(pads[:2]) or any(pads[rank:rank + 2]):
        return None
    return pads[2:rank] + pads[rank + 2:]


def _fold_pad(p: _Pass, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """A Conv reading a zero Pad (TF-style "same" padding, as EfficientNet-Lite's exports have) pads itself:
    one op less forward and backward, the same values."""
    g = p.g
    pad = g.producer(node.input[0])
    attrs = attributes(node)
    kernel = attrs.get("kernel_shape")
    rank = len(kernel) + 2 if kernel else len(g.static_shape(node.input[1]) or [])
    spatial = _zero_pad(g, pad, rank) if rank > 2 else None
    if spatial is None or attrs.get("auto_pad", b"NOTSET") != b"NOTSET" or len(g.consumers(pad.output[0])) != 1:
        return None
    own = list(attrs.get("pads", [0] * len(spatial)))
    folded = onnx.NodeProto()
    folded.CopyFrom(node)
    folded.input[0] = pad.input[0]
    assign(folded.attribute, [a for a in folded.attribute if a.name != "pads"])
    folded.attribute.append(helper.make_attribute("pads", [a + b for a, b in zip(own, spatial)]))
    return [folded]


_RULES: dict[str, _Rule] = {
    "BatchNormalization": _Rule(_freeze_batchnorm, "Sub, Mul, Add with its running statistics fixed", True),
    "Dropout": _Rule(_dropout_mask, "a multiplication by a mask fed at each step", True),
    "Conv": _Rule(_fold_pad, "the same Conv with the zero Pad before it in its own pads", True),
    "HardSigmoid": _Rule(_rewrite_hard_sigmoid, "Mul, Add, Clip (ORT has no HardSigmoid gradient)"),
    "HardSwish": _Rule(_rewrite_hard_swish, "Mul, Add, Clip, Mul (ORT has no HardSwish gradient)"),
    "PRelu": _Rule(_rewrite_prelu, "Relu, Sub, Mul, Add (ORT has no PRelu gradient)"),
    "MaxPool": _Rule(_rewrite_pool, "Slices and Max (its gradient crashes ORT on a dynamic height or width)"),
    "AveragePool": _Rule(_rewrite_pool, "GlobalAveragePool or Slices and Sum (its gradient crashes ORT on any "
                                        "dynamic dimension, the batch included)"),
}


def make_trainable(model: onnx.ModelProto, trainable_nodes: Collection[str] | None = None) -> TrainableGraph:
    """A copy of `model` that ORT 1.19.2 trains as ftonnx promises (see the module's rules), with what changed.

    `trainable_nodes` (names of the nodes gradients flow through; default all) limits where ops without a
    usable gradient are rewritten; BatchNormalization and Dropout are rewritten everywhere.
    """
    if onnx_opset(model) < TRAINING_MIN_OPSET:
        raise FtonnxError(f"opset {onnx_opset(model)} is below training's {TRAINING_MIN_OPSET}: "
                          "normalize the model first")
    out = clone(model)
    p = _Pass(out)
    counts: dict[tuple[str, str], int] = {}
    dropped_attrs = 0
    nodes: list[onnx.NodeProto] = []
    for node in p.g.nodes:
        rule = _RULES.get(node.op_type) if is_onnx_op(node) else None
        if rule is None or not (rule.everywhere or trainable_nodes is None or node.name in trainable_nodes):
            nodes.append(node)
            continue
        dropped_attrs += node.op_type == "MaxPool" and _drop_default_pool_attrs(node)
        replacement = rule.apply(p, node)
        nodes.extend(replacement or [node])
        if replacement:
            counts[(node.op_type, rule.how)] = counts.get((node.op_type, rule.how), 0) + 1
    assign(out.graph.node, nodes)
    assign(out.graph.node, GraphIndex(out).upstream(o.name for o in out.graph.output))  # folded Pads are dead
    out.graph.input.extend(helper.make_tensor_value_info(m["input"], TensorProto.FLOAT, ["batch", *m["shape"]])
                           for m in p.masks)
    out.graph.ClearField("value_info")
    drop_unused_initializers(out)
    changes = [f"rewrote {n} {op} as {how}" for (op, how), n in counts.items()]
    if dropped_attrs:
        changes.append(f"dropped default-valued pads/ceil_mode from {dropped_attrs} MaxPool")
    return TrainableGraph(out, changes, p.masks)
