"""Fixed shapes for phone accelerators: a model whose image input has a static shape, every tensor's
shape inferred from it and recorded.

Android's NNAPI takes no node whose input shape is dynamic, and CoreML runs such nodes poorly; a
dynamic batch dimension alone leaves both with nothing to run. The graph is the same otherwise,
except that a Flatten over a static shape becomes a Reshape to that shape: CoreML's ML Program
format has no Flatten, and the Reshape computes the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign, clone, is_onnx_op, value_shape


def _image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    index = GraphIndex(model)
    if len(index.inputs) != 1:
        raise FtonnxError(f"fixing shapes needs a model with one input, not {len(index.inputs)}")
    return next(i for i in model.graph.input if i.name == index.inputs[0])


def _set_input_shape(value: onnx.ValueInfoProto, shape: Sequence[int]) -> None:
    """Give the input `value` the dims `shape`; its fixed dims must agree."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise FtonnxError(f"input {value.name!r} has {len(dims)} dimensions; cannot give it the shape "
                          f"{list(shape)}")
    for i, (dim, size) in enumerate(zip(dims, shape)):
        if size < 1:
            raise FtonnxError(f"a fixed shape needs sizes of at least 1, not {list(shape)}")
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
            raise FtonnxError(f"input {value.name!r} has size {dim.dim_value} in dimension {i}, not {size}")
        dim.Clear()
        dim.dim_value = size


def _record_shapes(model: onnx.ModelProto) -> None:
    """Replace value_info and the outputs' types with what shape inference gives (in place)."""
    inferred = GraphIndex(model).inferred.graph
    assign(model.graph.value_info, inferred.value_info)
    assign(model.graph.output, inferred.output)


def _flatten_as_reshape(model: onnx.ModelProto) -> int:
    """Flatten nodes whose output shape is static become Reshapes to it (in place); returns the count."""
    index = GraphIndex(model)
    nodes, changed = [], 0
    for node in index.nodes:
        shape = index.static_shape(node.output[0]) if is_onnx_op(node, "Flatten") else None
        if shape is None or None in shape:
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        target = onnx.numpy_helper.from_array(np.asarray(shape, np.int64), index.fresh(base, "shape"))
        model.graph.initializer.append(target)  # not a Constant node: no accelerator list has Constant
        nodes.append(index.node("Reshape", [node.input[0], target.name], base, "Reshape", output=node.output[0]))
        changed += 1
    assign(model.graph.node, nodes)
    return changed


def fix_shapes(model: onnx.ModelProto, shape: Sequence[int]) -> onnx.ModelProto:
    """A copy of `model` whose one input has the static `shape` (e.g. 1,3,224,224), with every tensor's
    shape inferred and recorded and Flatten over a static shape written as Reshape. FtonnxError when the
    input's rank or a fixed size disagrees, or an output's shape stays dynamic."""
    result = clone(model)
    _set_input_shape(_image_input(result), shape)
    assign(result.graph.value_info, [])
    for out in result.graph.output:  # their dims follow from the input; inference fills them in
        out.type.tensor_type.ClearField("shape")
    _record_shapes(result)
    if _flatten_as_reshape(result):
        _record_shapes(result)
    for out in result.graph.output:
        dims = value_shape(out)
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise FtonnxError(f"output {out.name!r} keeps a dynamic shape ({dims}) with the input fixed to "
                              f"{list(shape)}; its size depends on values, not on the input's shape")
    return result
