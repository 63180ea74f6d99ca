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

from ftonnx import metadata
from ftonnx.errors import FtonnxError, first_line

DEVICES = ("cpu", "cuda")
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
                      threads: int | None = None, throughput: bool = False) -> Any:
    """An InferenceSession for a model file or ModelProto (CPU unless `providers` says otherwise).

    `threads`: that many intra-op threads and one inter-op thread (latency measurements).
    `throughput`: every core, all graph optimisations, threads that sleep rather than spin between
    operators, leaving the cores to the decoding threads meanwhile (a bulk forward pass).
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
        options.intra_op_num_threads = os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if isinstance(model, onnx.ModelProto):
        source, name = model.SerializeToString(), "model"
    else:
        path = Path(model)
        if not path.is_file():
            raise FtonnxError(f"{path}: no such model file")
        source, name = str(path), str(path)
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
    props = onnx.ModelProto()
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        props.metadata_props.add(key=key, value=value)
    return metadata.read(props)
