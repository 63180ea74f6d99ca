"""Run one training step in a child process, so a native crash of ONNX Runtime becomes a clear error.

Some gradient kernels of ORT 1.19.2 crash the process outright (SIGSEGV, SIGFPE) instead of raising,
e.g. MaxPool's and AveragePool's when the input height and width are dynamic. Python cannot catch
that in-process; a child process dies instead, and its exit signal is turned into an FtonnxError
naming the nodes whose gradients are known to crash.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal

import numpy as np
import onnx

from ftonnx.errors import FtonnxError
from ftonnx.train.artifacts import Artifacts

# gradient op -> why its forward node is the likely culprit of a native crash
_KNOWN_CRASHERS = {
    "MaxPoolGrad": "its gradient kernel reads a static output shape and crashes on a dynamic height or width; "
                   "fix the input height and width",
    "AveragePoolGrad": "its gradient kernel reads a static output shape and crashes on any dynamic input dimension, "
                       "the batch included",
}

# Gradient ops that ftonnx's own tests train through in-process on ORT 1.19.2 (Gemm, Clip, Mul and
# the like backpropagate through plain ops, not *Grad ones). A training graph with any other gets
# its first step probed in a child process.
_VETTED_GRADS = {"ConvGrad", "ReluGrad", "SliceGrad", "SoftmaxCrossEntropyLossGrad"}


def needs_probe(artifacts: Artifacts) -> bool:
    """Whether the training graph has gradient ops not known to run safely in-process."""
    graph = onnx.load(str(artifacts.training_model), load_external_data=False).graph
    return any(n.op_type.endswith("Grad") and n.op_type not in _VETTED_GRADS for n in graph.node)


def _step(folder: str, batch: dict[str, np.ndarray], labels: np.ndarray, conn) -> None:
    """Child: one forward/backward pass and one optimizer step; sends back None or an error line."""
    try:
        from ftonnx.train.session import TrainingSession

        artifacts = Artifacts(folder)
        session = TrainingSession(artifacts, artifacts.checkpoint)
        session.step(batch, labels, 1e-3, np.random.default_rng(0))
        conn.send(None)
    except Exception as exc:  # reported to the parent as one line, without ORT's source-location prefix
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        conn.send(re.sub(r"^.*\[ONNXRuntimeError\] : \d+ : \w+ : ", "", lines[-1]))


def _receive(conn) -> str | None:
    """The child's error line, or None when it sent nothing (success, or it died first)."""
    try:
        return conn.recv() if conn.poll() else None
    except EOFError:
        return None
    finally:
        conn.close()


def likely_culprits(artifacts: Artifacts) -> list[str]:
    """Forward nodes (name and op) whose gradient ops in the training graph are known to crash natively."""
    if not artifacts.training_model.exists():
        return []
    graph = onnx.load(str(artifacts.training_model), load_external_data=False).graph
    found = []
    for node in graph.node:
        if node.op_type in _KNOWN_CRASHERS:
            forward = node.name.split("_Grad/")[0] or node.input[0]
            found.append(f"{forward} ({node.op_type.removesuffix('Grad')}: {_KNOWN_CRASHERS[node.op_type]})")
    return found


def check_training_step(artifacts: Artifacts | str | os.PathLike, batch: dict[str, np.ndarray], labels: np.ndarray,
                        *, timeout: float = 600.0) -> None:
    """Run one training step on `batch` (input name -> array) and `labels` in a child process.

    Returns quietly when it works; raises FtonnxError naming the likely node when the runtime
    crashes natively, fails, or hangs past `timeout` seconds.
    """
    artifacts = artifacts if isinstance(artifacts, Artifacts) else Artifacts(artifacts)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_step, args=(str(artifacts.folder), batch, labels, send), daemon=True)
    child.start()
    send.close()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        raise FtonnxError(f"a training step did not finish within {timeout:.0f} s; try a smaller batch or input size")
    message = _receive(receive)
    if child.exitcode == 0 and message is None:
        return
    culprits = likely_culprits(artifacts)
    if child.exitcode is not None and child.exitcode < 0:
        name = signal.Signals(-child.exitcode).name
        where = ("likely node: " + "; ".join(culprits)) if culprits else \
            "no node known to crash it; try a fixed input size or freeze more (--freeze until:...)"
        raise FtonnxError(f"a training step crashed ONNX Runtime natively ({name}); {where}")
    cause = ("; likely cause: " + "; ".join(culprits)) if culprits else ""
    raise FtonnxError(f"a training step failed: {message or f'exit code {child.exitcode}'}{cause}")
