"""ftonnx: finetune a pretrained ONNX model from any framework and export it for the edge.

The stages, one verb each (imported on first use, so `import ftonnx` stays light)::

    model = ftonnx.load("pretrained.onnx")              # any exporter's ONNX, normalised
    features = ftonnx.cut(model, "AvgPool")             # the backbone up to a node
    classifier = ftonnx.add_head(features, 2)           # a new `logits` head
    result = ftonnx.finetune("pretrained.onnx", "AvgPool", ftonnx.data_args("data"), "run")
    report = ftonnx.export_run("run", "edge", int8=True, ort=True)
"""

from __future__ import annotations

import importlib
from typing import Any

from ftonnx import ortshim
from ftonnx.errors import FtonnxError

ortshim.install()  # before anything imports onnxruntime: keeps torch out (see ftonnx/ortshim.py)

__version__ = "0.1.0"

_API = {
    "load": "ftonnx.graph",
    "cut": "ftonnx.graph.cut",
    "add_head": "ftonnx.graph.head",
    "data_args": "ftonnx.pipeline",
    "finetune": "ftonnx.pipeline",
    "TrainConfig": "ftonnx.train.config",
    "evaluate": "ftonnx.evaluate",
    "predict": "ftonnx.evaluate",
    "export_run": "ftonnx.export.edge",
}
__all__ = ["FtonnxError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ftonnx' has no attribute {name!r}")
