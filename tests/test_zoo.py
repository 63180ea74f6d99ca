"""The zoo's EfficientNet-Lite0, -Lite1 and -Lite2: real ImageNet weights, and the metadata later steps rely on."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from skimage import data

from ftonnx import metadata
from ftonnx.graph import load
from ftonnx.metadata import Preprocess

from helpers import image_batch, require_torch


def test_zoo_metadata_carries_labels_preprocessing_and_dynamic_batch(zoo_model_path: Path) -> None:
    model = load(zoo_model_path)
    meta = metadata.read(model)
    assert len(meta.labels) == 1000
    assert meta.labels[285] == "Egyptian cat" and meta.labels[967] == "espresso"
    assert meta.preprocess == Preprocess(size=(224, 224), resize=224, mean=(127.0,) * 3, std=(128.0,) * 3,
                                         channel_order="RGB", layout="NCHW")
    assert meta.source == "zoo:efficientnet-lite0"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in model.graph.output] == ["logits"]
    onnx.checker.check_model(model, full_check=True)


def _imagenet_classes(model: onnx.ModelProto, tmp_path: Path) -> list[int]:
    """The top class of the chelsea (Egyptian cat, 285) and coffee (espresso, 967) test images."""
    pre = metadata.read(model).preprocess
    images = [tmp_path / "chelsea.png", tmp_path / "coffee.png"]
    Image.fromarray(data.chelsea()).save(images[0])
    Image.fromarray(data.coffee()).save(images[1])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": image_batch(images, pre)})
    return logits.argmax(axis=1).tolist()


def test_zoo_weights_are_imagenet_pretrained(zoo_model_path: Path, tmp_path: Path) -> None:
    assert _imagenet_classes(load(zoo_model_path), tmp_path) == [285, 967]


@pytest.mark.parametrize("name, size", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_larger_lites_are_imagenet_pretrained_at_their_size(name: str, size: int, tmp_path: Path) -> None:
    require_torch()
    from ftonnx import zoo

    model = zoo.export_model(name, tmp_path / f"{name}.onnx")
    assert metadata.read(model).preprocess.size == (size, size)
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == size
    assert _imagenet_classes(model, tmp_path) == [285, 967]


def test_zoo_parameters_are_named_after_their_modules(zoo_model_path: Path) -> None:
    model = load(zoo_model_path)
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            module = node.name.strip("/").rpartition("/")[0].replace("/", ".")
            assert node.input[1] == f"{module}.weight" and node.input[1] in inits, node.name
    assert {"_blocks.15._expand_conv.weight", "_conv_head.bias", "_fc.weight"} <= inits
