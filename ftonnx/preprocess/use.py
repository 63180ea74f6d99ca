"""What commands do with preprocessing: find the one to feed a model (choosing by evidence for `auto`),
and record it in the metadata of the models they write, so that it is given once."""

from __future__ import annotations

from typing import Callable

import onnx

from ftonnx import metadata
from ftonnx.data import Dataset
from ftonnx.errors import FtonnxError
from ftonnx.graph.index import clone
from ftonnx.metadata import Preprocess
from ftonnx.preprocess.presets import AUTO, PreprocessFlags
from ftonnx.preprocess.resolve import resolve


def preprocess_for(model: onnx.ModelProto, flags: PreprocessFlags | None, images: Dataset | None = None, *,
                   say: Callable[[str], None] = lambda line: None) -> Preprocess:
    """The preprocessing to feed `model`: its metadata, its input shape and `flags`; with `--preprocess auto`,
    the candidate its own classifier is most confident under on `images` (the choice is `say`-ed)."""
    flags = flags or PreprocessFlags()
    if flags.preset != AUTO:
        return resolve(model, flags).require()
    if images is None:
        raise FtonnxError("--preprocess auto judges on images, and this command has none: use it with finetune, "
                          "eval, predict or meta --data, or pass a preset")
    if metadata.read(model).head_params:
        raise FtonnxError("--preprocess auto judges by the pretrained classifier, but this model's logits come from "
                          "a new ftonnx head; use auto on the original model (finetune, meta --data) or pass a preset")
    from ftonnx.preprocess.auto import choose

    choice = choose(model, images, flags)
    say(choice.summary())
    return choice.preprocess


def recorded(model: onnx.ModelProto, flags: PreprocessFlags | None, images: Dataset | None = None, *,
             say: Callable[[str], None] = lambda line: None) -> onnx.ModelProto:
    """`model` with the preprocessing `flags` (and metadata, input shape) give in its metadata; unchanged when
    the flags say nothing. Flags that leave it incomplete are refused, so nothing half-known is stored."""
    if flags is None or not flags.given:
        return model
    preprocess = preprocess_for(model, flags, images, say=say)
    return metadata.update(clone(model), preprocess=preprocess)
