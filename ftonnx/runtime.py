"""ONNX Runtime inference in one place: what a device means, inference sessions, a model's image input.

Every stage that runs a model (the activation cache, evaluation and prediction, the export report)
makes its session here, so errors read the same and device choice is made once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from ftonnx import isolated, metadata
from ftonnx.errors import FtonnxError, first_line

DEVICES = ("cpu", "cuda")
PROBE_TIMEOUT_S = 300.0  # opening a model from outside in a child process, before the session that is kept
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def check_device(device: str) -> None:
    """Fail early when `device` cannot be used by the installed ONNX Runtime."""
    if device not in DEVICES:
        raise FtonnxError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise FtonnxError("--device cuda needs ONNX Runtime's CUDA training build: pip install 'ftonnx[cuda]' "
                              "(onnxruntime-training==1.19.2 in place of onnxruntime-training-cpu)")


def providers(device: str) -> list[str]:
    """The execution providers that run a model on `device`, in order of preference."""
    check_device(device)
    return list(_PROVIDERS[device])


def inference_session(model: str | os.PathLike | onnx.ModelProto, *, providers: Sequence[str] | None = None,
                      threads: int | None = None, throughput: bool = False, untrusted: bool = False) -> Any:
    """An InferenceSession for a model file or ModelProto (CPU unless `providers` says otherwise).

    `threads`: that many intra-op threads and one inter-op thread (latency measurements, a Ray actor's cores).
    `throughput`: every core (or `threads`), all graph optimisations, threads that sleep rather than spin between
    operators, leaving the cores to the decoding threads meanwhile (a bulk forward pass).
    `untrusted`: a model from outside. ONNX Runtime aborts on some malformed graphs, so an ONNX model is
    first checked in Python (`ftonnx.graph.validate.check_structure`) and every one is first opened in a
    child process (`ftonnx.isolated`): a malformed model is an FtonnxError, not a crash.
    """
    import onnxruntime as ort

    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in ort.get_available_providers()]
    if missing:
        raise FtonnxError(f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build; "
                          f"available: {', '.join(ort.get_available_providers())}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if throughput:
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4  # its errors come back as exceptions; its log would print node names raw
    source, name, checked = _source(model, untrusted)
    if untrusted:
        _probe(source, name, checked)
    return _open(source, name, options, chosen)


def _source(model: str | os.PathLike | onnx.ModelProto,
            untrusted: bool) -> tuple[str | bytes, str, onnx.ModelProto | None]:
    """What to hand ONNX Runtime (a path, or a serialized model), the model's name in messages, and the model
    when it was read here: an untrusted ONNX model is checked (`check_structure`) and its bytes used."""
    name = "model"
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise FtonnxError(f"{path}: no such model file")
        if not untrusted or path.suffix.lower() == ".ort":
            return str(path), str(path), None
        from ftonnx.graph.io import load_model

        model, name = load_model(path), str(path)
    if untrusted:
        from ftonnx.graph.validate import check_structure

        check_structure(model, name)
    return model.SerializeToString(), name, model


def _probe(source: str | bytes, name: str, model: onnx.ModelProto | None) -> None:
    """Open the model once in a child process (CPU, default options): a native crash there is an FtonnxError,
    naming the node whose shape inference crashes when onnx can find it."""
    import onnxruntime as ort

    def open_once() -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        _open(source, name, options, ["CPUExecutionProvider"])

    try:
        isolated.run(open_once, timeout=PROBE_TIMEOUT_S)
    except isolated.Crashed as crash:
        from ftonnx.graph.validate import crashing_node, node_name

        node = crashing_node(model) if model is not None else None
        where = f" at {node_name(node)}" if node is not None else ""
        raise FtonnxError(f"{name}: onnxruntime crashes loading it{where} ({crash.signal}); the model is "
                          "malformed") from None


def _open(source: str | bytes, name: str, options: Any, chosen: list[str]) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, options, providers=chosen)
    except Exception as exc:  # onnxruntime's error types derive from Exception only
        raise FtonnxError(f"{name}: onnxruntime cannot load it ({first_line(exc)})") from None


_INPUT_TYPES = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def image_input(session: Any) -> tuple[str, type]:
    """The name and numpy dtype of a session's one image input (uint8 for a model fed pixels)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise FtonnxError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                          "an image classifier has one")
    return inputs[0].name, _INPUT_TYPES.get(inputs[0].type, np.float32)


def fixed_batch(session: Any) -> int | None:
    """The batch size a session's image input is fixed to (a model exported with static shapes), else None."""
    batch = session.get_inputs()[0].shape[0]
    return batch if isinstance(batch, int) and batch > 0 else None


def session_metadata(session: Any) -> metadata.Meta:
    """ftonnx's metadata of the model a session runs (ORT format keeps it too)."""
    try:
        entries = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError:
        raise FtonnxError("the model's metadata is not UTF-8 text; the file is damaged") from None
    props = onnx.ModelProto()
    for key, value in entries.items():
        props.metadata_props.add(key=key, value=value)
    return metadata.read(props)


def run(session: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`session.run`, its failure (a shape the model does not take, a kernel's complaint) one FtonnxError."""
    try:
        return session.run(outputs, feeds)
    except Exception as exc:  # onnxruntime's error types derive from Exception only
        raise FtonnxError(f"onnxruntime cannot run the model ({first_line(exc)})") from None
