"""The inference model of a training run: the input graph with the trained weights, `logits` plus
`probabilities` (a Softmax) as outputs, and the input model's metadata.

The weights go back into the graph the user gave, not into ORT's eval graph
(`Module.export_model_for_inferencing`): ftonnx trains a rewritten forward graph (BatchNormalization
with constant statistics, Dropout as a mask input; see `ftonnx.graph.trainable`), and the exported
model should keep the original BatchNormalization and Dropout nodes and need no mask input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex, clone
from ftonnx.graph.io import check_model, save_model

LOGITS = "logits"
PROBABILITIES = "probabilities"


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `weights` hold those values (same shapes)."""
    result = clone(model)
    inits = {t.name: t for t in result.graph.initializer}
    for name, value in weights.items():
        if name not in inits:
            raise FtonnxError(f"trained parameter {name!r} is not in the model; was it trained from another model?")
        if tuple(inits[name].dims) != value.shape:
            raise FtonnxError(f"trained parameter {name!r} has shape {value.shape}, "
                              f"the model {tuple(inits[name].dims)}")
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return result


def add_probabilities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Append Softmax(`logits`) as the output `probabilities` (in place; returns model)."""
    outputs = [o.name for o in model.graph.output]
    if LOGITS not in outputs:
        raise FtonnxError(f"the model has no output {LOGITS!r}")
    if PROBABILITIES in outputs:
        return model
    logits = next(o for o in model.graph.output if o.name == LOGITS)
    model.graph.node.append(GraphIndex(model).node("Softmax", [LOGITS], "", "Softmax", output=PROBABILITIES, axis=1))
    probabilities = onnx.ValueInfoProto()
    probabilities.CopyFrom(logits)
    probabilities.name = PROBABILITIES
    model.graph.output.append(probabilities)
    return model


def export_inference(model: onnx.ModelProto, weights: dict[str, np.ndarray], path: str | os.PathLike,
                     **meta: object) -> Path:
    """Write `model` with trained `weights` and a `probabilities` output to `path`; `meta` adds metadata."""
    result = add_probabilities(with_weights(model, weights))
    if meta:
        metadata.update(result, **meta)
    check_model(result, "the exported model")
    return save_model(result, path)
