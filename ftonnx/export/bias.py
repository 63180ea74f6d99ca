"""Bias correction for int8 weights: rounding a Conv's or Gemm's weights to int8 shifts the mean of each
output channel by (dequantized - float weights) x (mean input); subtracting that shift from the float
bias before the bias is quantised removes it (Nagel et al., "Data-Free Quantization", 2019, with the
input means measured on the calibration images rather than derived from BatchNorm).

Zero padding at a Conv's border sees zeros rather than the mean, so the correction is exact for the
interior only; it is an average correction, as the method intends.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ftonnx.graph.index import GraphIndex, attributes, clone, is_onnx_op, onnx_opset
from ftonnx.runtime import inference_session


def unshare_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every Conv and Gemm reads a bias of its own: ONNX Runtime's pre-processing
    merges equal initializers (all-zero biases, typically), and each node's bias must be corrected apart."""
    result = clone(model)
    index = GraphIndex(result)
    for node in index.nodes:
        bias = node.input[2] if is_onnx_op(node, "Conv", "Gemm") and len(node.input) > 2 else ""
        if bias in index.initializers and len(index.consumers(bias)) > 1:
            copy = numpy_helper.from_array(numpy_helper.to_array(index.initializers[bias]), index.fresh(bias, "copy"))
            result.graph.initializer.append(copy)
            node.input[2] = copy.name
    return result


def _correctable(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A Conv or Gemm whose weight and bias are initializers, the bias read by this node alone."""
    if not is_onnx_op(node, "Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return False
    weight, bias = node.input[1], node.input[2]
    if weight not in index.initializers or bias not in index.initializers or len(index.consumers(bias)) != 1:
        return False
    rows = index.initializers[weight].dims[0 if node.op_type == "Conv" or attributes(node).get("transB") else 1]
    return int(np.prod(index.initializers[bias].dims)) == rows


def _mean_axes(index: GraphIndex, node: onnx.NodeProto) -> list[int]:
    """The axes a node's input is averaged over to leave one mean per input channel."""
    if node.op_type == "Gemm":
        return [1] if attributes(node).get("transA") else [0]
    rank = len(index.initializers[node.input[1]].dims)  # a Conv's input has its weight's rank
    return [0, *range(2, rank)]


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """node name -> its weight as the int8 model computes it (DequantizeLinear of constant inputs)."""
    index = GraphIndex(model)
    values = {name: numpy_helper.to_array(t) for name, t in index.initializers.items()}
    weights = {}
    for node in index.nodes:
        dq = index.producer(node.input[1]) if is_onnx_op(node, "Conv", "Gemm") and len(node.input) > 1 else None
        if dq is None or not is_onnx_op(dq, "DequantizeLinear") or not all(i in values for i in dq.input if i):
            continue
        q, scale = values[dq.input[0]].astype(np.float64), values[dq.input[1]]
        zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[attributes(dq).get("axis", 1)] = -1
        weights[node.name] = ((q - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    return weights


def _shift(node: onnx.NodeProto, delta_w: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The mean output shift per channel, in the bias's units, that the weight error `delta_w` causes."""
    attrs = attributes(node)
    if node.op_type == "Gemm":
        shift = delta_w @ mean if attrs.get("transB") else mean @ delta_w
        return attrs.get("alpha", 1.0) * shift / attrs.get("beta", 1.0)
    out, per_group = delta_w.shape[:2]
    groups = attrs.get("group", 1)
    summed = delta_w.reshape(groups, out // groups, per_group, -1).sum(axis=-1)
    return (summed * mean.reshape(groups, 1, per_group)).sum(axis=-1).reshape(out)


class BiasCorrection:
    """The mean input of every correctable Conv and Gemm of a float model, gathered batch by batch (`add`);
    then the bias shifts an int8 version of it causes (`deltas`) and the model with them removed (`corrected`)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.index = GraphIndex(model)
        self.targets = [n for n in self.index.nodes if _correctable(self.index, n)]
        self.sums: list[np.ndarray] | None = None
        self.count = 0
        self._session = None

    def _augmented(self) -> onnx.ModelProto:
        """The model with one ReduceMean output per target's input (axes as an input from opset 18)."""
        result, opset = clone(self.model), onnx_opset(self.model)
        for i, node in enumerate(self.targets):
            name, axes = f"ftonnx.bias_mean.{i}", _mean_axes(self.index, node)
            inputs = [node.input[0]]
            if opset >= 18:
                result.graph.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), f"{name}/axes"))
                inputs.append(f"{name}/axes")
            extra = {} if opset >= 18 else {"axes": axes}
            result.graph.node.append(helper.make_node("ReduceMean", inputs, [name], name=name, keepdims=0, **extra))
            result.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        return result

    def add(self, x: np.ndarray, input_name: str) -> None:
        """Count the batch `x` into the targets' mean inputs."""
        if not self.targets:
            return
        if self._session is None:
            self._session = inference_session(self._augmented())
        names = [f"ftonnx.bias_mean.{i}" for i in range(len(self.targets))]
        means = self._session.run(names, {input_name: x})
        weighted = [m.astype(np.float64) * len(x) for m in means]
        self.sums = weighted if self.sums is None else [s + w for s, w in zip(self.sums, weighted)]
        self.count += len(x)

    def deltas(self, quantized: onnx.ModelProto) -> dict[str, np.ndarray]:
        """node name -> its bias shift in `quantized` (nodes whose weight stayed float are left out)."""
        if not self.count:
            return {}
        weights = dequantized_weights(quantized)
        shifts = {}
        for node, total in zip(self.targets, self.sums):
            if node.name in weights:
                float_w = numpy_helper.to_array(self.index.initializers[node.input[1]])
                shifts[node.name] = _shift(node, weights[node.name] - float_w, total / self.count)
        return shifts

    def corrected(self, deltas: dict[str, np.ndarray]) -> onnx.ModelProto:
        """A copy of the float model with each named node's bias minus its shift."""
        result = clone(self.model)
        biases = {t.name: t for t in result.graph.initializer}
        for node in self.targets:
            if node.name in deltas:
                tensor = biases[node.input[2]]
                value = numpy_helper.to_array(tensor)
                corrected = value - deltas[node.name].reshape(value.shape).astype(value.dtype)
                tensor.CopyFrom(numpy_helper.from_array(corrected, tensor.name))
        return result
