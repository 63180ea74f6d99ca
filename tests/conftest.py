"""Shared fixtures: the tiny model for fast unit tests, the zoo model, and the real data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ftonnx import metadata

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_colours(root: Path, train: int, val: int) -> Path:
    """train/ and val/ with 3 classes of noisy, mostly one-colour 40x40 images (`train` + `val` of each)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(rgb, 90, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def build_tiny_model(num_classes: int = 10, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm on (N, 3, size, size), dynamic batch,
    with preprocessing and labels in the metadata, like a zoo export but tiny."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="/conv2/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/relu2/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="/Flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits = [init("conv1.weight", 8, 3, 3, 3), init("conv1.bias", 8), init("conv2.weight", 16, 8, 3, 3),
             init("conv2.bias", 16), init("fc.weight", num_classes, 16), init("fc.bias", num_classes)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ftonnx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return metadata.write(model, metadata.Meta(
        labels=[f"class_{i}" for i in range(num_classes)],
        preprocess=metadata.Preprocess(size=(size, size), resize=size + 4),
        source="tests:tiny"))


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    return build_tiny_model()


@pytest.fixture
def tiny_model_path(tmp_path: Path, tiny_model: onnx.ModelProto) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, str(path))
    return path


@pytest.fixture(scope="session")
def zoo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 exported once per session."""
    from ftonnx import zoo

    path = tmp_path_factory.mktemp("zoo") / "lite0.onnx"
    zoo.export_model("efficientnet-lite0", path)
    return path


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real data not found at {HYMENOPTERA} (../shared is absent)")
    return HYMENOPTERA
