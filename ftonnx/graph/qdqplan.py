"""Where an int8 QDQ model quantises, read back from the model itself: the plan quantisation-aware training
mirrors with fake-quant nodes (`ftonnx.graph.fakequant`).

ONNX Runtime's QDQ quantiser decides per op which tensors get a QuantizeLinear/DequantizeLinear pair (the
inputs of Conv, Gemm, MatMul, Add, ..., outputs where the consumer wants them, a removed Relu or Clip's
output on its producer) and which tensors share another's scale. Rather than restate those rules, the plan
is read from a model the quantiser made:
- activations: each QuantizeLinear of a computed tensor or graph input, with its scale and zero point; its
  scale initializer's name is the tensor's group (tensors that share a scale share a group);
- weights: each DequantizeLinear of an int8 initializer that a node reads, per channel (its axis) or per
  tensor, symmetric: the scale is max |w| / 127 over the channel, so training recomputes it from the weights
  as they train and the export, quantising the trained weights, computes the same;
- int32 biases (scale: input scale x weight scale) are left out: their rounding is far below one int8 step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, attributes, is_onnx_op

QUANT_INPUT_SUFFIX = "_QuantizeLinear_Input"  # the quantiser's name for a graph output's producer output
WEIGHT_SUFFIX = "_quantized"
# the quantised integer type -> (qmin, qmax) of a symmetric weight, as ONNX Runtime's quantiser clips it
SYMMETRIC_RANGE = {onnx.TensorProto.INT8: (-127, 127), onnx.TensorProto.UINT8: (0, 255)}
ACTIVATION_RANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


@dataclass(frozen=True)
class ActivationQuant:
    """One quantised activation: scale, zero point and integer range; `group` names the scale it shares."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    group: str

    def range(self, scale: float | None = None) -> tuple[float, float]:
        """The real range (lowest, highest) whose quantisation gives `scale` (default: its own) and its zero point."""
        s = self.scale if scale is None else scale
        return (self.qmin - self.zero_point) * s, (self.qmax - self.zero_point) * s


@dataclass(frozen=True)
class WeightQuant:
    """One quantised weight: the initializer, the node reading it and where, its channel axis (None: per
    tensor), and the symmetric integer range and zero point."""

    weight: str
    node: str
    input: int
    axis: int | None
    qmin: int
    qmax: int
    zero_point: int


@dataclass
class QuantPlan:
    """Every quantised activation (tensor name -> its quantisation) and weight of an int8 model."""

    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: list[WeightQuant] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"activations": {t: asdict(a) for t, a in self.activations.items()},
                "weights": [asdict(w) for w in self.weights]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "QuantPlan":
        return cls({t: ActivationQuant(**a) for t, a in d["activations"].items()},
                   [WeightQuant(**w) for w in d["weights"]])


def _value(index: GraphIndex, name: str) -> np.ndarray:
    if name not in index.initializers:
        raise FtonnxError(f"the int8 model's quantisation parameter {name!r} is not a constant")
    return numpy_helper.to_array(index.initializers[name])


def _activation(index: GraphIndex, q: onnx.NodeProto) -> tuple[str, ActivationQuant]:
    """The tensor a QuantizeLinear quantises (a graph output's own name, not the quantiser's renamed producer
    output) and how."""
    scale, zero = _value(index, q.input[1]), _value(index, q.input[2])
    if scale.size != 1:
        raise FtonnxError(f"activation {q.input[0]!r} is quantised per channel; fake quantisation is per tensor")
    dtype = index.initializers[q.input[2]].data_type
    if dtype not in ACTIVATION_RANGE:
        raise FtonnxError(f"activation {q.input[0]!r} is quantised to {onnx.TensorProto.DataType.Name(dtype)}, "
                          "not 8 bits")
    tensor = q.input[0]
    if tensor.endswith(QUANT_INPUT_SUFFIX):
        dq = [n for n in index.consumers(q.output[0]) if is_onnx_op(n, "DequantizeLinear")]
        tensor = next((n.output[0] for n in dq if n.output[0] in index.outputs), tensor)
    qmin, qmax = ACTIVATION_RANGE[dtype]
    return tensor, ActivationQuant(float(scale.reshape(())), int(zero.reshape(())), qmin, qmax, q.input[1])


def _weight(index: GraphIndex, dq: onnx.NodeProto, reader: onnx.NodeProto) -> WeightQuant:
    """How a DequantizeLinear of an 8-bit initializer quantises the weight `reader` reads."""
    quantised = index.initializers[dq.input[0]]
    name = dq.input[0].removesuffix(WEIGHT_SUFFIX)
    zero = _value(index, dq.input[2]).reshape(-1) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int64)
    qmin, qmax = SYMMETRIC_RANGE[quantised.data_type]
    if np.any(zero != (qmin + qmax + 1) // 2):
        raise FtonnxError(f"weight {name!r} is quantised asymmetrically; fake quantisation mirrors symmetric weights")
    per_channel = _value(index, dq.input[1]).size > 1
    axis = attributes(dq).get("axis", 1) % len(quantised.dims) if per_channel else None
    return WeightQuant(name, reader.name, list(reader.input).index(dq.output[0]), axis, qmin, qmax, int(zero[0]))


def read_plan(qdq: onnx.ModelProto) -> QuantPlan:
    """The quantisation plan of a QDQ model made by ONNX Runtime's quantiser (8-bit activations and weights)."""
    index = GraphIndex(qdq)
    plan = QuantPlan()
    for node in index.nodes:
        if is_onnx_op(node, "QuantizeLinear") and node.input[0] not in index.initializers:
            tensor, quant = _activation(index, node)
            plan.activations[tensor] = quant
        elif is_onnx_op(node, "DequantizeLinear") and node.input[0] in index.initializers:
            if index.initializers[node.input[0]].data_type not in SYMMETRIC_RANGE:
                continue  # an int32 bias
            plan.weights += [_weight(index, node, reader) for reader in index.consumers(node.output[0])]
    return plan
