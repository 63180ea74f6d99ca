"""How much of a model each phone accelerator can take, by ONNX Runtime's own mobile usability checker
(`python -m onnxruntime.tools.check_onnx_model_mobile_usability`), read from its Python API rather
than its log.

As that tool does, the model is first optimised by ONNX Runtime: at the level its .ort file is made
with (basic for ONNX files and runtime-style .ort files; all optimisations for fixed-style .ort files,
whose fused ops no accelerator takes). A float16 ONNX file is checked as the float16 conversion of its
float twin so optimised: optimising the float16 file itself on this machine's CPU provider would wrap
every op it has no float16 kernel for in casts, which an accelerator with float16 kernels does not
need (an .ort file made here does hold them, and its check shows it). Then shapes are inferred, and
each node counts as supported when its op is in the execution provider's list and its inputs have
static shapes (and, for CoreML, a rank of at most 5). Every unsupported node comes with its reason:
the operator, a dynamic input shape, or the rank.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ftonnx.errors import FtonnxError, first_line

# report key -> (checker function, its ops list for CoreML)
LEVELS = ("none", "basic", "all")
PROVIDERS = {"nnapi": ("NNAPI", None), "coreml": ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
             "coreml_mlprogram": ("CoreML ML Program", "coreml_supported_mlprogram_ops.md")}


def _optimised(path: Path, folder: Path, level: str) -> Path:
    """`path` optimised by ONNX Runtime at `level` (none, basic, or all but the x86 layout)."""
    import onnxruntime as ort

    if level == "none":
        return path
    options = ort.SessionOptions()
    out = folder / "optimised.onnx"
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"] if level == "all" else None)
    return out


def _partitions(model: Any, key: str) -> Any:
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    ops = PROVIDERS[key][1]
    if ops is None:
        return checker.check_nnapi_partitions(model, require_fixed_input_sizes=True)
    return checker.check_coreml_partitions(model, require_fixed_input_sizes=True, config_filename=ops)


def _reason(node: Any, info: Any, values: dict[str, Any], initializers: set[str]) -> str:
    """Why the checker left `node` out: its operator, a dynamic input shape, or (CoreML) its input's rank."""
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor

    op = f"{node.domain or 'ai.onnx'}:{node.op_type}"
    if not info.supported_ops_checker.is_op_supported(node):
        return f"operator {op}"
    inputs = [i for i in node.input if i and i not in initializers]
    if any(i not in values for i in inputs):
        return "input shape unknown to onnx (a fused op)"
    if any(not is_fixed_size_tensor(values[i]) for i in inputs):
        return "dynamic input shape"
    return f"rank of {op}'s input"


def _summary(model: Any, info: Any) -> dict[str, Any]:
    """One provider's share of the main graph's nodes, and how many it leaves out for each reason."""
    graph = model.graph
    values = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    initializers = {t.name for t in graph.initializer}
    taken = {id(n) for group in info.supported_groups for n in group}
    unsupported: dict[str, int] = {}
    for node in graph.node:
        if id(node) not in taken:
            why = _reason(node, info, values, initializers)
            unsupported[why] = unsupported.get(why, 0) + 1
    return {"nodes": info.num_nodes, "supported": info.num_supported_nodes, "partitions": info.num_partitions,
            "share": info.num_supported_nodes / info.num_nodes if info.num_nodes else 0.0,
            "unsupported": unsupported}


def mobile_support(path: str | Path, *, level: str = "basic", half: bool = False) -> dict[str, dict[str, Any]]:
    """Per execution provider (nnapi, coreml, coreml_mlprogram): nodes, supported nodes, partitions, the
    supported share and a count of unsupported nodes per reason, for the ONNX file `path` optimised by ONNX
    Runtime at `level` (none, basic, or all: as a fixed-style .ort file is), then converted to float16 when
    `half`."""
    import onnx

    from ftonnx.export.fp16 import convert_fp16

    if level not in LEVELS:
        raise FtonnxError(f"optimisation level must be one of {', '.join(LEVELS)}, not {level!r}")
    logging.getLogger("usability_checker").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ftonnx-mobile-") as tmp:
        try:
            optimised = onnx.load(str(_optimised(Path(path), Path(tmp), level)))
            optimised = convert_fp16(optimised) if half else optimised
            model = onnx.shape_inference.infer_shapes(optimised, strict_mode=True)
            if not model.graph.value_info:  # nothing inferred (fused contrib ops): the checker refuses an empty list,
                model.graph.value_info.extend(model.graph.input)  # its nodes then count as of unknown shape
        except Exception as exc:  # ORT and onnx raise their own error types
            raise FtonnxError(f"{path}: the mobile usability check failed ({first_line(exc)})") from None
    return {key: _summary(model, _partitions(model, key)) for key in PROVIDERS}
