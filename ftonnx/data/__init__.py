"""Images in: data sets (ImageFolder, MNN list files), decoding and augmentation, threaded batch loading."""

from ftonnx.data.dataset import Dataset, check_classes, discover, image_files
from ftonnx.data.images import load_image
from ftonnx.data.loader import Loader

__all__ = ["Dataset", "Loader", "check_classes", "discover", "image_files", "load_image"]
