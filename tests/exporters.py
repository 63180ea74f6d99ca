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
