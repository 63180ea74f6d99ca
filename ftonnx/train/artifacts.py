"""ONNX Runtime training artifacts (training, eval and optimizer graphs, initial checkpoint) for a model.

The forward graph is first made trainable (opset lifted to 12, then `ftonnx.graph.trainable`:
BatchNormalization frozen, Dropout fed with masks, ops ORT 1.19.2 cannot differentiate rewritten).
The loss is ORT's cross-entropy on `logits`, or, with a finetuning strategy (`ftonnx.train.strategy`),
the graph's own `loss` over reparametrised backbone parameters; the eval graph also outputs `logits`
so that validation gets predictions. `ftonnx.json` in the folder, written last, records what the
artifacts were built with (and how to fold reparametrised parameters back); its presence marks them
complete.
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
from ftonnx.files import TEMP_PREFIX, disk_full
from ftonnx.folders import remove
from ftonnx.graph.index import GraphIndex, assign, prune
from ftonnx.graph.normalize import lift_opset
from ftonnx.graph.objective import LOSS
from ftonnx.graph.qdqplan import QuantPlan
from ftonnx.graph.trainable import make_trainable
from ftonnx.progress import log
from ftonnx.train.config import OPTIMIZERS
from ftonnx.train.freeze import parameter_names
from ftonnx.train.qat import describe, fake_quantised
from ftonnx.train.strategy import Strategy, training_graph

LOGITS = "logits"


class Artifacts:
    """The files of one artifacts folder, named as ONNX Runtime's generate_artifacts names them, and
    ftonnx's manifest beside them."""

    training_model: Path
    eval_model: Path
    optimizer_model: Path
    checkpoint: Path
    manifest_path: Path
    _FILES = {"training_model": "training_model.onnx", "eval_model": "eval_model.onnx",
              "optimizer_model": "optimizer_model.onnx", "checkpoint": "checkpoint", "manifest_path": "ftonnx.json"}

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        for attribute, name in self._FILES.items():
            setattr(self, attribute, self.folder / name)

    def manifest(self) -> dict | None:
        """What the artifacts were built with, or None when they are absent, incomplete or damaged (then they
        are built again)."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("trainable"), list) else None


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


def build_artifacts(model: onnx.ModelProto, trainable: list[str], out_dir: str | os.PathLike, *,
                    optimizer: str = "adamw", weight_decay: float = 0.0, strategy: Strategy | None = None,
                    qat: QuantPlan | None = None, scale_gain: float = 0.0) -> Artifacts:
    """Write the training artifacts of `model` (parameters `trainable` train, the others stay) to `out_dir`,
    with `strategy`'s reparametrisation and objective when one is given, and fake quantisation where `qat`
    says (learned scales of gain `scale_gain`, see `ftonnx.train.qat`)."""
    names = parameter_names(model)
    unknown = sorted(set(trainable) - set(names))
    if unknown:
        raise FtonnxError(f"not trainable parameters of this model: {', '.join(unknown[:5])}")
    if LOGITS not in [o.name for o in model.graph.output]:
        raise FtonnxError(f"the model has no output {LOGITS!r}; add a head first (ftonnx head or ftonnx finetune)")
    block = _optimizer_block(optimizer, weight_decay)
    forward = make_trainable(prune(lift_opset(model), [LOGITS]))  # the loss takes every output: logits only
    scales, quantised = [], None
    if qat is not None:  # before the reparametrisation, which then rewrites the weights' fake quantisation too
        forward, scales, quantised = fake_quantised(forward, qat, list(trainable), scale_gain)
        log(describe(quantised))
    graph, requires_grad, folds, own_loss = forward.model, list(trainable), {}, False
    if strategy is not None:
        graph, requires_grad, folds, own_loss = training_graph(forward, list(trainable), strategy)
    requires_grad += scales
    frozen = [n for n in names if n not in set(requires_grad)]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{out_dir.name}.", dir=out_dir.parent))
    try:
        _generate(graph, requires_grad, frozen, block, tmp, out_dir, own_loss)
        manifest = {"trainable": list(trainable), "frozen": frozen, "optimizer": optimizer,
                    "weight_decay": weight_decay, "dropout": forward.masks, "requires_grad": requires_grad,
                    "reparametrised": folds,
                    "objective": strategy.objective.to_json() if strategy and strategy.objective else None,
                    "qat": quantised}
        Artifacts(tmp).manifest_path.write_text(json.dumps(manifest, indent=1))
        tmp.chmod(0o755)
        remove(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Artifacts(out_dir)


def _generate(forward: onnx.ModelProto, trainable: list[str], frozen: list[str], block, folder: Path,
              target: Path, own_loss: bool) -> None:
    """ORT's generate_artifacts into `folder` (staging for `target`), its failures one FtonnxError line; the
    loss is ORT's cross-entropy, or with `own_loss` the graph's output `loss`."""
    from onnxruntime.training import artifacts, onnxblock

    loss = {"loss": onnxblock.blocks.PassThrough(), "loss_input_names": [LOSS]} if own_loss else \
        {"loss": artifacts.LossType.CrossEntropyLoss}
    try:
        with _quiet_native_stderr():
            artifacts.generate_artifacts(forward, requires_grad=trainable, frozen_params=frozen, optimizer=block,
                                         artifact_directory=folder, additional_output_names=[LOGITS], **loss)
    except Exception as exc:  # ORT and onnx raise RuntimeError, InferenceError, ValidationError...
        if isinstance(exc, OSError) and (full := disk_full(exc, target, 3 * forward.ByteSize())):
            raise full from None
        raise FtonnxError(f"ONNX Runtime cannot build training graphs for this model: "
                          f"{str(exc).strip().splitlines()[-1]}") from None
    if own_loss:
        _logits_only(Artifacts(folder).eval_model)


def _logits_only(path: Path) -> None:
    """Cut an eval graph down to what `logits` needs: validation's loss is plain cross-entropy computed from
    the logits (see `TrainingSession.evaluate`), so the objective's terms, DELTA's pretrained copy among
    them, need not run there. The graph inputs stay, as ORT's Module feeds the parameters by position."""
    model = onnx.load(str(path))
    assign(model.graph.node, GraphIndex(model).upstream([LOGITS]))
    assign(model.graph.output, [o for o in model.graph.output if o.name == LOGITS])
    onnx.save(model, str(path))
