"""A model that takes what an image decoder or camera gives: uint8 pixels, N x H x W x channels, at the
model's input size; the scaling, mean and std, channel order and layout of its `Preprocess` happen in
the graph.

An app then only decodes, scales to cover the resize target and crops the centre (or takes a camera
frame of that size), instead of re-implementing the arithmetic from the metadata. The nodes compute
exactly what `ftonnx.data.images.to_array` computes in float32 (Cast, Sub mean, Div std, Transpose), so
the outputs equal the float model's on the same decoded image. Grayscale models take one channel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, assign, clone, value_shape

PIXELS = "pixels"
ORDERS = ("RGB", "BGR")


def _input_value(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    index = GraphIndex(model)
    if len(index.inputs) != 1:
        raise FtonnxError(f"a pixel input needs a model with one input, not {len(index.inputs)}")
    return next(i for i in model.graph.input if i.name == index.inputs[0])


def _preprocessing(index: GraphIndex, pre: metadata.Preprocess, order: str, pixels: str,
                   image: onnx.ValueInfoProto) -> list[onnx.NodeProto]:
    """The nodes from uint8 NHWC `pixels` to the model's input tensor `image`."""
    base = "ftonnx.pixels"
    nodes = [index.node("Cast", [pixels], base, "Cast", to=image.type.tensor_type.elem_type)]
    if pre.channel_order not in (order, "GRAY"):  # RGB given, BGR wanted (or the reverse): reverse channels
        reverse = index.constant(base, "reverse", np.asarray([2, 1, 0], np.int64))
        nodes += [reverse, index.node("Gather", [nodes[-1].output[0], reverse.output[0]], base, "Reorder", axis=3)]
    nchw = pre.layout == "NCHW"
    for op, values in (("Sub", pre.mean), ("Div", pre.std)):
        value = index.constant(base, op.lower(), np.asarray(values, np.float32))
        last = op == "Div" and not nchw
        nodes += [value, index.node(op, [nodes[-1].output[0], value.output[0]], base, op,
                                    output=image.name if last else None)]
    if nchw:
        nodes.append(index.node("Transpose", [nodes[-1].output[0]], base, "Transpose", output=image.name,
                                perm=[0, 3, 1, 2]))
    return nodes


def pixel_input(model: onnx.ModelProto, order: str = "RGB") -> onnx.ModelProto:
    """A copy of `model` fed uint8 pixels in `order` (RGB or BGR; one channel for a GRAY model), shaped
    (batch, H, W, channels) at its input size, through its metadata's preprocessing. The new input is
    named `pixels` and the metadata records it under `pixels`."""
    pre = metadata.read(model).preprocess
    if pre is None:
        raise FtonnxError("the model's metadata has no preprocessing to build a pixel input from")
    if order not in ORDERS:
        raise FtonnxError(f"pixel order must be RGB or BGR, not {order!r}")
    if pre.channel_order == "GRAY":
        order = "GRAY"
    result = clone(model)
    image = _input_value(result)
    if image.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise FtonnxError(f"input {image.name!r} is not a float tensor; is it a pixel model already?")
    index = GraphIndex(result)
    name = index.unused(PIXELS)
    batch = (value_shape(image) or [None])[0]
    pixels = helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [batch, *pre.size, pre.channels])
    assign(result.graph.node, [*_preprocessing(index, pre, order, name, image), *result.graph.node])
    assign(result.graph.input, [pixels if i.name == image.name else i for i in result.graph.input])
    return metadata.update(result, pixels={"input": name, "order": order, "layout": "NHWC", "dtype": "uint8",
                                           "size": list(pre.size)})
