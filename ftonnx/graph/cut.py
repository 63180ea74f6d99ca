"""Truncate a model so that one intermediate tensor becomes its output (the backbone to finetune)."""

from __future__ import annotations

import onnx
import onnx.utils

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.io import check_model
from ftonnx.graph.select import resolve


def _needed_inputs(model: onnx.ModelProto, tensor: str) -> list[str]:
    """The graph inputs `tensor` depends on, in the model's input order."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    graph_inputs = [i.name for i in model.graph.input]
    seen, todo = {tensor}, [tensor]
    while todo:
        node = producer.get(todo.pop())
        for name in node.input if node is not None else []:
            if name and name not in seen:
                seen.add(name)
                todo.append(name)
    return [name for name in graph_inputs if name in seen]


def cut(model: onnx.ModelProto, spec: str, *, last: bool = False, index: int | None = None) -> onnx.ModelProto:
    """The part of `model` that computes the tensor SPEC names, with that tensor (name kept) as output.

    Unused nodes, initializers and inputs are dropped; metadata is kept, `feature` set to the tensor.
    """
    tensor = resolve(model, spec, last=last, index=index)
    inputs = _needed_inputs(model, tensor)
    if not inputs:
        raise FtonnxError(f"{tensor!r} depends on no graph input (it is a constant); name a node after the input")
    try:
        result = onnx.utils.Extractor(model).extract_model(inputs, [tensor])
    except KeyError:
        raise FtonnxError(f"onnx shape inference could not type {tensor!r}; cut at another node") from None
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(result, field, getattr(model, field))
    result.graph.name = model.graph.name
    metadata.copy(model, result)
    kept = {t.name for t in result.graph.initializer}
    meta = metadata.read(result)
    metadata.update(result, feature=tensor, head_params=[p for p in meta.head_params if p in kept],
                    backbone_params=[p for p in meta.backbone_params if p in kept])
    check_model(result, "the cut model")
    return result
