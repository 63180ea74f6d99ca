"""ftonnx: finetune a pretrained ONNX model from any framework and export it for the edge."""

from ftonnx.errors import FtonnxError

__version__ = "0.1.0"
__all__ = ["FtonnxError", "__version__"]
