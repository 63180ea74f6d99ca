"""Tiny models with the graph features other exporters leave, built with torch's legacy exporter and onnx edits.

- `se_cnn`: PyTorch CNN with squeeze-and-excitation blocks (several GlobalAveragePool), HardSigmoid,
  MaxPool(k2, s2), unfolded BatchNormalization, opset 11, dynamic height and width;
- `constant_weights`: the same with every weight a `Constant` node and IR version 5 (older PaddlePaddle);
- `tf_style`: NHWC input then a Transpose, ReduceMean pooling, Dense as MatMul + Add, Softmax, and
  TensorFlow-like names full of `/`, `@` and `:`;
- `matmul_classifier`: the SE backbone with a PaddleClas head Reshape -> MatMul -> Add -> Softmax -> Identity;
- `save_external`: any of them saved with its weights in an external data file.
All take 32x32 images and carry ftonnx preprocessing metadata, so tests run in seconds.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ftonnx import metadata

from helpers import require_torch

SIZE = 32
NUM_CLASSES = 10


def _torch_net(classifier: str = "gemm", nhwc: bool = False):
    """A small SE network in eval mode with non-trivial BatchNorm statistics (like a pretrained one)."""
    torch = require_torch()
    nn = torch.nn

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, channels // 4, 1)
            self.expand = nn.Conv2d(channels // 4, channels, 1)
            self.gate = nn.Hardsigmoid()

        def forward(self, x):
            return x * self.gate(self.expand(torch.relu(self.reduce(self.pool(x)))))

    def block(cin: int, cout: int, stride: int, act: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), act,
                             SqueezeExcite(cout))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.MaxPool2d(2, 2)
            self.blocks = nn.Sequential(block(8, 16, 1, nn.Hardswish()), block(16, 16, 2, nn.ReLU()))
            self.fc = nn.Linear(16, NUM_CLASSES)

        def forward(self, x):
            if nhwc:
                x = x.permute(0, 3, 1, 2)
            x = self.blocks(self.pool(self.stem(x)))
            if classifier == "gemm":
                return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
            if classifier == "matmul":
                x = torch.reshape(nn.functional.adaptive_avg_pool2d(x, 1), (-1, 16))
                return torch.softmax(torch.matmul(x, self.fc.weight.t()) + self.fc.bias, dim=1)
            x = x.mean(dim=(2, 3))  # TensorFlow's GlobalAveragePooling2D: ReduceMean
            return torch.softmax(torch.matmul(x, self.fc.weight.t()) + self.fc.bias, dim=1)

    torch.manual_seed(0)
    net = Net()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
    return net.eval()


def _export(net, *, input_name: str, output_name: str, nhwc: bool = False, dynamic_hw: bool = True,
            opset: int = 11) -> onnx.ModelProto:
    """torch.onnx.export (legacy) keeping BatchNormalization: PRESERVE mode on an eval model skips BN folding."""
    torch = require_torch()
    shape = (1, SIZE, SIZE, 3) if nhwc else (1, 3, SIZE, SIZE)
    axes = {0: "batch", 1: "height", 2: "width"} if nhwc else {0: "batch", 2: "height", 3: "width"}
    if not dynamic_hw:
        axes = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(shape), buf, dynamo=False, opset_version=opset,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: axes, output_name: {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def _with_meta(model: onnx.ModelProto, source: str, layout: str = "NCHW") -> onnx.ModelProto:
    return metadata.write(model, metadata.Meta(
        labels=[f"class_{i}" for i in range(NUM_CLASSES)], source=source,
        preprocess=metadata.Preprocess(size=(SIZE, SIZE), resize=SIZE + 4, layout=layout)))


def se_cnn() -> onnx.ModelProto:
    """(a) SE CNN, opset 11, BatchNormalization kept, HardSigmoid, MaxPool(k2, s2), dynamic H and W."""
    return _with_meta(_export(_torch_net(), input_name="input", output_name="logits"), "tests:se_cnn")


def constant_weights() -> onnx.ModelProto:
    """(b) `se_cnn` with every initializer stored as a Constant node and IR version 5, like older Paddle exports."""
    model = se_cnn()
    constants = [helper.make_node("Constant", [], [t.name], name=f"const_{i}", value=t)
                 for i, t in enumerate(model.graph.initializer)]
    del model.graph.initializer[:]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.ir_version = 5
    return metadata.update(model, source="tests:constant_weights")


def _tf_name(name: str, initializer: bool) -> str:
    path = "/".join(p for p in name.replace(".", "/").split("/") if p)
    return f"StatefulPartitionedCall/model/{path}/ReadVariableOp@resource:0" if initializer else f"model/{path}:0"


def _rename_all(model: onnx.ModelProto, rename: Callable[[str, bool], str]) -> None:
    """Rename every tensor and node in place (graph I/O, initializers, node inputs and outputs)."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    new = {name: rename(name, name in inits)
           for name in {*inits, *(i.name for i in graph.input), *(o.name for o in graph.output),
                        *(x for n in graph.node for x in [*n.input, *n.output] if x)}}
    for t in graph.initializer:
        t.name = new[t.name]
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = new.get(info.name, info.name)
    for node in graph.node:
        node.input[:] = [new[x] if x else x for x in node.input]
        node.output[:] = [new[x] if x else x for x in node.output]
        node.name = "StatefulPartitionedCall/" + _tf_name(node.name or node.output[0], False)


def tf_style() -> onnx.ModelProto:
    """(c) NHWC input then a Transpose to NCHW, ReduceMean pooling, MatMul + Add, Softmax, TF-like names."""
    model = _export(_torch_net(classifier="reduce_mean", nhwc=True), input_name="input_1", output_name="dense",
                    nhwc=True, dynamic_hw=False)
    _rename_all(model, lambda name, init: "serving_default_input_1:0" if name == "input_1" else _tf_name(name, init))
    return _with_meta(model, "tests:tf_style", layout="NHWC")


def matmul_classifier() -> onnx.ModelProto:
    """(d) SE backbone with a PaddleClas head: Reshape -> MatMul -> Add -> Softmax -> Identity."""
    model = _export(_torch_net(classifier="matmul"), input_name="x", output_name="softmax_0.tmp_0")
    final = "save_infer_model/scale_0.tmp_0"
    model.graph.node.append(helper.make_node("Identity", ["softmax_0.tmp_0"], [final], name="scale_0"))
    model.graph.output[0].name = final
    return _with_meta(model, "tests:matmul_classifier")


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    """(e) Save `model` at `path` with every weight in `<name>.data` beside it."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def dynamic_maxpool() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool(k2, s2, explicit zero pads) -> GlobalAveragePool -> Gemm on dynamic H and W:
    one training step through its MaxPool gradient crashes ORT 1.19.2 natively (SIGSEGV)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n) for n, s in
             (("conv.weight", (8, 3, 3, 3)), ("conv.bias", (8,)), ("fc.weight", (4, 8)), ("fc.bias", (4,)))]
    nodes = [helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                              pads=[0] * 4, ceil_mode=0),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "dynamic_maxpool",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node tensor by name, as numpy arrays (for before/after comparisons)."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "se_cnn": se_cnn, "constant_weights": constant_weights, "tf_style": tf_style,
    "matmul_classifier": matmul_classifier,
}


def write_model(kind: str, folder: Path) -> Path:
    """Write test model `kind` (a BUILDERS key, or "external_data": se_cnn with external data) into `folder`."""
    if kind == "external_data":
        return save_external(se_cnn(), folder / "external.onnx")
    path = folder / f"{kind}.onnx"
    onnx.save(BUILDERS[kind](), str(path))
    return path


# Raw models, as users receive them from other exporters: no ftonnx metadata at all.

def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without any metadata_props."""
    del model.metadata_props[:]
    return model


def torchscript(opset: int) -> onnx.ModelProto:
    """The SE network from torch's TorchScript exporter at `opset` (11: below ORT training's 12 and per-channel
    int8's 13), dynamic batch, height and width."""
    return strip(_export(_torch_net(), input_name="input", output_name="logits", opset=opset))


def dynamo() -> onnx.ModelProto:
    """The SE network from torch's dynamo exporter (torch.export; opset 18), dynamic batch, height and width."""
    torch = require_torch()
    batch, h, w = (torch.export.Dim(n, min=m, max=1024) for n, m in (("batch", 1), ("height", 16), ("width", 16)))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_torch_net(), (torch.zeros(2, 3, SIZE, SIZE),), dynamo=True, verbose=False,
                                    input_names=["pixels"], output_names=["scores"],
                                    dynamic_shapes=({0: batch, 2: h, 3: w},))
    return strip(program.model_proto)


def _small_net(kind: str):
    """Small torch networks with one feature other exporters leave (see `feature_model`)."""
    torch = require_torch()
    nn = torch.nn
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1 if kind == "grayscale" else 3, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())  # 32x32 -> 8x8

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc, self.scores = body, nn.Linear(16, NUM_CLASSES), nn.Conv2d(16, 7, 1)

        def forward(self, x):
            x = self.body(x)
            if kind == "fully_conv":  # class scores by a 1x1 Conv, then pooled (SqueezeNet, some Keras models)
                return torch.softmax(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.scores(x)), 1),
                                                   1), 1)
            if kind == "keras_pool":  # AveragePool over the whole static 8x8 map, as Keras and TF.js export it
                return self.fc(torch.flatten(nn.functional.avg_pool2d(x, 8), 1))
            if kind == "batch_one":  # a fixed batch of 1 in the graph's shapes, as TFLite conversions have
                return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).view(1, -1))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return Net().eval()


def feature_model(kind: str) -> onnx.ModelProto:
    """A raw model with one feature real exporters leave, on a static 32x32 input: `keras_pool`, `grayscale`,
    `batch_one` (no dynamic batch), `fully_conv`, `dequantized` (weights as DequantizeLinear of int8)."""
    torch = require_torch()
    net = _small_net(kind)
    channels = 1 if kind == "grayscale" else 3
    axes = {} if kind == "batch_one" else {"input": {0: "batch"}, "output": {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, channels, SIZE, SIZE), buf, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"], dynamic_axes=axes)
    model = onnx.load_from_string(buf.getvalue())
    return _int8_weights(model) if kind == "dequantized" else model


def _int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Conv and Gemm weight stored as int8 with per-output-channel scales behind DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / 127).astype(np.float32)
            q = np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.int8)
            name = node.input[1]
            model.graph.initializer.remove(inits[name])
            model.graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                            numpy_helper.from_array(scale, name + "_scale")])
            nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale"], [name], axis=0))
    rest = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + rest)
    return model


def _prepend(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
             new_input: onnx.ValueInfoProto) -> onnx.ModelProto:
    """A raw copy of `model` whose input first goes through `nodes` (the old input becomes their output)."""
    result = strip(onnx.ModelProto.FromString(model.SerializeToString()))
    old = result.graph.input[0].name
    for node in result.graph.node:
        node.input[:] = ["composite.in" if i == old else i for i in node.input]
    result.graph.input[0].CopyFrom(new_input)
    rest = list(result.graph.node)
    del result.graph.node[:]
    result.graph.node.extend(nodes + rest)
    result.graph.initializer.extend(inits)
    return result


def zoo_composites(zoo: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """The zoo's EfficientNet-Lite0 (trained on (x - 127) / 128, close to `inception`) as a raw model, and behind
    a prepended affine, channel flip or transpose, so the composite expects `imagenet`, BGR, or NHWC input."""
    image = lambda *dims: helper.make_tensor_value_info("pixels", onnx.TensorProto.FLOAT, ["batch", *dims])  # noqa: E731
    mean, std = np.array([123.675, 116.28, 103.53], np.float32), np.array([58.395, 57.12, 57.375], np.float32)
    affine = [numpy_helper.from_array((std / 128).reshape(1, 3, 1, 1), "composite.scale"),
              numpy_helper.from_array(((mean - 127) / 128).reshape(1, 3, 1, 1), "composite.shift")]
    return {
        "inception": strip(onnx.ModelProto.FromString(zoo.SerializeToString())),
        "imagenet": _prepend(zoo, [helper.make_node("Mul", ["pixels", "composite.scale"], ["composite.scaled"]),
                                   helper.make_node("Add", ["composite.scaled", "composite.shift"], ["composite.in"])],
                             affine, image(3, 224, 224)),
        "bgr": _prepend(zoo, [helper.make_node("Gather", ["pixels", "composite.flip"], ["composite.in"], axis=1)],
                        [numpy_helper.from_array(np.array([2, 1, 0], np.int64), "composite.flip")], image(3, 224, 224)),
        "nhwc": _prepend(zoo, [helper.make_node("Transpose", ["pixels"], ["composite.in"], perm=[0, 3, 1, 2])], [],
                         image(224, 224, 3)),
    }


def small_features(zoo: onnx.ModelProto) -> onnx.ModelProto:
    """The zoo model as a raw model whose pooled features are 100 times smaller (as some exporters' are)."""
    result = strip(onnx.ModelProto.FromString(zoo.SerializeToString()))
    pool = next(n for n in result.graph.node if n.op_type == "GlobalAveragePool" and "_avg_pooling" in n.name)
    scaled = pool.output[0]
    pool.output[0] = scaled + ".unscaled"
    result.graph.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "feature.scale"))
    nodes = list(result.graph.node)
    at = next(i for i, n in enumerate(nodes) if n is pool or n.name == pool.name) + 1
    nodes.insert(at, helper.make_node("Mul", [scaled + ".unscaled", "feature.scale"], [scaled], name="/scale/Mul"))
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result
