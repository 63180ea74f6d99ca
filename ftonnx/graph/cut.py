"""Truncate a model so that one intermediate tensor becomes its output (the backbone to finetune)."""

from __future__ import annotations

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import GraphIndex
from ftonnx.graph.io import check_model
from ftonnx.graph.select import resolve


def cut(model: onnx.ModelProto, spec: str, *, last: bool = False, index: int | None = None) -> onnx.ModelProto:
    """The part of `model` that computes the tensor SPEC names, with that tensor (name kept) as output.

    Unused nodes, initializers and inputs are dropped; metadata is kept, `feature` set to the tensor.
    """
    graph = GraphIndex(model)
    tensor = resolve(model, spec, last=last, index=index, graph=graph)
    inputs = graph.needed_inputs(tensor)
    if not inputs:
        raise FtonnxError(f"{tensor!r} depends on no graph input (it is a constant); name a node after the input")
    result = metadata.copy(model, graph.extract(inputs, [tensor]))
    kept = {t.name for t in result.graph.initializer}
    meta = metadata.read(result)
    metadata.update(result, feature=tensor, head_params=[p for p in meta.head_params if p in kept],
                    backbone_params=[p for p in meta.backbone_params if p in kept])
    check_model(result, "the cut model")
    return result
