"""Give a model exported with its batch fixed at 1 (TFLite conversions, fixed-shape exports) a dynamic
batch, when that is safe: training, caching and evaluation feed many images at once.

The image input's first dimension becomes `batch`; a Reshape whose constant target starts with that
fixed 1 copies the input's first dimension instead (0). The change is kept only when onnx's shape
inference then carries `batch` to every graph output; otherwise the model is left as it was.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, clone, drop_unused_initializers, is_onnx_op

BATCH = "batch"


def fixed_batch_input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    """The one image input when its first dimension is a fixed 1, else None."""
    index = GraphIndex(model)
    if len(index.inputs) != 1:
        return None
    value = next(i for i in model.graph.input if i.name == index.inputs[0])
    dims = value.type.tensor_type.shape.dim
    return value if len(dims) >= 2 and dims[0].HasField("dim_value") and dims[0].dim_value == 1 else None


def _batch_first(model: onnx.ModelProto, names: list[str]) -> bool:
    """Whether shape inference gives every tensor in `names` the first dimension `batch`."""
    try:
        shapes = GraphIndex(model).shapes
    except FtonnxError:
        return False
    return all((shapes.get(n) or [None])[0] == BATCH for n in names)


def _copy_batch_in_reshapes(model: onnx.ModelProto) -> None:
    """Reshape targets fixed to start with 1 on a batched input start with 0 (copy the batch) instead."""
    index = GraphIndex(model)
    for node in index.nodes:
        if not is_onnx_op(node, "Reshape") or node.input[1] not in index.initializers:
            continue
        target = numpy_helper.to_array(index.initializers[node.input[1]])
        if target.ndim == 1 and len(target) >= 2 and target[0] == 1 and \
                (index.shapes.get(node.input[0]) or [None])[0] == BATCH:
            copied = target.copy()
            copied[0] = 0
            name = index.fresh(node.input[1], "batch")
            model.graph.initializer.append(numpy_helper.from_array(copied.astype(np.int64), name))
            node.input[1] = name
    drop_unused_initializers(model)


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `model` whose fixed batch of 1 is dynamic, or None when it is not fixed or not safely made so."""
    if fixed_batch_input(model) is None:
        return None
    result = clone(model)
    value = fixed_batch_input(result)
    value.type.tensor_type.shape.dim[0].dim_param = BATCH
    for out in result.graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = BATCH
    result.graph.ClearField("value_info")
    _copy_batch_in_reshapes(result)
    return result if _batch_first(result, [o.name for o in result.graph.output]) else None
