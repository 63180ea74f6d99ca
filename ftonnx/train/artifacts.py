"""ONNX Runtime training artifacts (training, eval and optimizer graphs, initial checkpoint) for a model.

The forward graph is first made trainable (opset lifted to 12, BatchNormalization frozen, Dropout
fed with masks, see `ftonnx.train.prepare`; ops ORT 1.19.2 cannot differentiate rewritten, see
`ftonnx.graph.rewrite`). The loss is cross-entropy on `logits`, and the eval
graph also outputs `logits` so that validation gets predictions. `ftonnx.json` in the folder,
written last, records what the artifacts were built with; its presence marks them complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from ftonnx.errors import FtonnxError
from ftonnx.graph.normalize import drop_unused_initializers, lift_opset
from ftonnx.graph.rewrite import make_trainable
from ftonnx.train.freeze import parameter_names
from ftonnx.train.prepare import dropout_masks, freeze_batchnorm

OPTIMIZERS = ("adamw", "sgd")
MANIFEST = "ftonnx.json"
LOGITS = "logits"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the C++ gradient builder, which logs every graph transformer at info level on fd 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _optimizer_block(optimizer: str, weight_decay: float):
    """The onnxblock optimizer: AdamW built directly, as OptimType.AdamW cannot take a weight decay."""
    from onnxruntime.training import onnxblock

    if optimizer not in OPTIMIZERS:
        raise FtonnxError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if weight_decay < 0:
        raise FtonnxError(f"weight decay must be >= 0, not {weight_decay}")
    if optimizer == "sgd":
        if weight_decay:
            raise FtonnxError("ORT's SGD has no weight decay: use --optimizer adamw or --weight-decay 0")
        return onnxblock.optim.SGD()
    return onnxblock.optim.AdamW(weight_decay=weight_decay)


def _logits_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose one output is `logits` (the loss takes every output), without the nodes it does not need."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    needed, kept = {LOGITS}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            needed.update(node.input)
            kept.append(node)
    outputs = [o for o in graph.output if o.name == LOGITS]
    del graph.output[:], graph.node[:]
    graph.output.extend(outputs)
    graph.node.extend(reversed(kept))
    drop_unused_initializers(result)
    return result


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """What the artifacts in `out_dir` were built with, or None when they are absent or incomplete."""
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def build_artifacts(model: onnx.ModelProto, trainable: list[str], out_dir: str | os.PathLike, *,
                    optimizer: str = "adamw", weight_decay: float = 0.0) -> Path:
    """Write the training artifacts of `model` (parameters `trainable` train, the others stay) to `out_dir`."""
    from onnxruntime.training import artifacts

    out_dir = Path(out_dir)
    names = parameter_names(model)
    unknown = sorted(set(trainable) - set(names))
    if unknown:
        raise FtonnxError(f"not trainable parameters of this model: {', '.join(unknown[:5])}")
    if LOGITS not in [o.name for o in model.graph.output]:
        raise FtonnxError(f"the model has no output {LOGITS!r}; add a head first (ftonnx head or ftonnx finetune)")
    block = _optimizer_block(optimizer, weight_decay)
    forward = _logits_only(lift_opset(model))
    freeze_batchnorm(forward)
    forward, _ = make_trainable(forward)
    masks = dropout_masks(forward)
    frozen = [n for n in names if n not in set(trainable)]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with _quiet_native_stderr():
            artifacts.generate_artifacts(forward, requires_grad=list(trainable), frozen_params=frozen,
                                         loss=artifacts.LossType.CrossEntropyLoss, optimizer=block,
                                         artifact_directory=tmp, additional_output_names=[LOGITS])
        manifest = {"trainable": list(trainable), "frozen": frozen, "optimizer": optimizer,
                    "weight_decay": weight_decay, "dropout": masks}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        tmp.chmod(0o755)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    except Exception as exc:  # ORT and onnx raise RuntimeError, InferenceError, ValidationError...
        raise FtonnxError(f"ONNX Runtime cannot build training graphs for this model: "
                          f"{str(exc).strip().splitlines()[-1]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
