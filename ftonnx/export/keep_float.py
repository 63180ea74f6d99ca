"""`--int8-keep-float auto`: the few nodes whose quantisation loses most, left in float.

1. Quantise every node and measure where the error enters: ONNX Runtime's QDQ debugging tools
   (`onnxruntime.quantization.qdq_loss_debug`) make the float and the int8 model output every
   intermediate tensor; on a few calibration images, each tensor's relative error (|int8 - float|^2 /
   |float|^2) is compared with that of the node's inputs. The nodes that add the most error rank first.
   The graph input's own rounding to uint8 is not among those tensors (only computed ones are saved), so
   the nodes reading the input are put ahead of the ranking: leaving them float leaves the image unrounded.
2. Greedily, from the top of that order, leave a node in float (with what the int8 graph fuses into
   it, a Conv's Clip) together with the neighbours that would still quantise the tensors it reads (a
   tensor stays float only when neither its producer nor any reader is quantised), quantise again (the
   calibrated ranges are reused, so this takes about a second), and keep the change only when it cuts
   the int8 model's drift from the float model (mean over the check images of the largest probability
   difference) by at least MIN_GAIN. The input's readers and at most TRIES ranked nodes are tried; at
   most BUDGET of the nodes and WEIGHT_BUDGET of the weights end up in float.

On a model whose error is spread thin (EfficientNet-Lite0 after bias correction) little passes: on
hymenoptera finetunes, leaving the first convolution (864 weights) float cuts the drift on the check
images by 18 to 24 %, so it stays float where that clears MIN_GAIN, and nothing else does. A model with
one badly quantised tensor (an outlier channel, a squeeze-and-excitation gate) gets that tensor's nodes
back in float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ftonnx.evaluate import class_probabilities
from ftonnx.export.quantize import KEEP_FLOAT_OPS, Quantizer
from ftonnx.graph.index import GraphIndex
from ftonnx.runtime import inference_session

TRIES = 8
MIN_GAIN = 0.20
BUDGET = 0.08  # of the graph's nodes, at least 4
WEIGHT_BUDGET = 0.02  # of the weights: kept float, they take 4 bytes instead of 1 (int8 stays under 30 % of float)
GOOD_ENOUGH = 1e-3  # mean largest probability difference below which nothing is searched
SENSITIVITY_IMAGES = 8
_SAVED = "_ReshapedSavedOutput"
_DEQUANTIZED = "_DequantizeLinear_Output"


def drift(model: onnx.ModelProto, x: np.ndarray, reference: np.ndarray) -> float:
    """Mean over the images of the largest |probability - reference probability|."""
    probabilities = class_probabilities(inference_session(model), x)
    return float(np.abs(probabilities - reference).max(axis=1).mean())


def _intermediates(model: onnx.ModelProto, folder: Path, name: str) -> Any:
    """A session whose outputs include every float tensor of `model` (ORT's QDQ debugging augmentation),
    graph optimisations off so that each tensor is computed as the graph says."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    source, augmented = folder / f"{name}.onnx", folder / f"{name}.augmented.onnx"
    onnx.save_model(model, str(source))
    modify_model_output_intermediate_tensors(str(source), str(augmented))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])


def _saved(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs() if o.name.endswith(_SAVED)]
    return {n[:-len(_SAVED)]: v for n, v in zip(names, session.run(names, feed))}


def relative_errors(float_model: onnx.ModelProto, quantized: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """tensor -> |int8 - float|^2 / |float|^2 over the images `x`, the int8 value taken after its
    DequantizeLinear where the tensor is quantised."""
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ftonnx-keep-float-") as tmp:
        sessions = [_intermediates(m, Path(tmp), n) for m, n in ((float_model, "float"), (quantized, "int8"))]
        name = sessions[0].get_inputs()[0].name
        for start in range(0, len(x), 4):
            exact, rounded = (_saved(s, {name: x[start:start + 4]}) for s in sessions)
            for tensor, value in exact.items():
                other = rounded.get(tensor + _DEQUANTIZED, rounded.get(tensor))
                if other is not None and other.shape == value.shape:
                    signal[tensor] = signal.get(tensor, 0.0) + float(np.square(value, dtype=np.float64).sum())
                    noise[tensor] = noise.get(tensor, 0.0) + float(np.square(value - other, dtype=np.float64).sum())
    return {t: noise[t] / max(signal[t], 1e-30) for t in signal}


def ranked(errors: dict[str, float], index: GraphIndex) -> list[tuple[str, float]]:
    """(node, relative error it adds) for the nodes whose output `errors` measured, the largest first."""
    scores = []
    for node in index.nodes:
        if node.op_type in KEEP_FLOAT_OPS or node.output[0] not in errors:
            continue
        before = max([errors.get(i, 0.0) for i in node.input if i and i not in index.initializers] or [0.0])
        scores.append((node.name, errors[node.output[0]] - before))
    return sorted(scores, key=lambda item: -item[1])


def input_readers(index: GraphIndex) -> list[str]:
    """The nodes that read a graph input (and are not left float anyway)."""
    return [n.name for name in index.inputs for n in index.consumers(name) if n.op_type not in KEEP_FLOAT_OPS]


def _fused(index: GraphIndex, node: onnx.NodeProto, measured: set[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """`node` with the producers the int8 graph fused into it (those of inputs it has no tensor for, e.g. a
    Conv whose Clip is folded into its output's quantisation), and the quantised tensors the group reads."""
    group, reads, todo = [node], [], [i for i in node.input if i and (index.is_computed(i) or i in index.inputs)]
    while todo:
        tensor = todo.pop()
        producer = index.producer(tensor)
        if tensor in measured or producer is None:
            reads.append(tensor)
        elif producer not in group:
            group.append(producer)
            todo += [i for i in producer.input if i and (index.is_computed(i) or i in index.inputs)]
    return group, reads


def _unit(index: GraphIndex, name: str, measured: set[str]) -> list[str]:
    """The node `name` (with what is fused into it) and every node that would still quantise a tensor it
    reads: that tensor's producer (with what is fused into that) and its readers. A tensor stays float only
    when none of them is quantised."""
    group, reads = _fused(index, next(n for n in index.nodes if n.name == name), measured)
    unit = list(group)
    for tensor in reads:
        producer = index.producer(tensor)
        unit += [*(_fused(index, producer, measured)[0] if producer is not None else []), *index.consumers(tensor)]
    return list(dict.fromkeys(n.name for n in unit if n.op_type not in KEEP_FLOAT_OPS))


def _weights(index: GraphIndex, names: list[str]) -> int:
    """How many weight values (initializers of two or more dimensions) the nodes `names` read."""
    nodes = [n for n in index.nodes if n.name in set(names)]
    tensors = {i for n in nodes for i in n.input if i in index.initializers and len(index.initializers[i].dims) > 1}
    return sum(int(np.prod(index.initializers[t].dims)) for t in tensors)


def choose_keep_float(quantizer: Quantizer, check: np.ndarray) -> tuple[list[str], dict[str, Any]]:
    """The nodes to keep in float, by the greedy search above on the images `check`, and what it measured."""
    reference = class_probabilities(inference_session(quantizer.float_model), check)
    every = quantizer.quantize([])
    start = drift(every, check, reference)
    search: dict[str, Any] = {"check_images": len(check), "drift_all_int8": start, "drift": start, "tried": []}
    if start <= GOOD_ENOUGH:
        return [], search
    index = GraphIndex(quantizer.float_model)
    budget = max(4, round(BUDGET * len(index.nodes)))
    weight_budget = WEIGHT_BUDGET * _weights(index, [n.name for n in index.nodes])
    errors = relative_errors(quantizer.float_model, every, check[:SENSITIVITY_IMAGES])
    order = [*input_readers(index), *(name for name, _ in ranked(errors, index)[:TRIES])]
    kept: list[str] = []
    best = start
    for name in dict.fromkeys(order):
        candidate = list(dict.fromkeys([*kept, *_unit(index, name, set(errors))]))
        if candidate == kept or len(candidate) > budget or _weights(index, candidate) > weight_budget:
            continue
        error = drift(quantizer.quantize(candidate), check, reference)
        accepted = error <= best * (1 - MIN_GAIN)
        search["tried"].append({"nodes": candidate[len(kept):], "drift": error, "kept": accepted})
        if accepted:
            kept, best = candidate, error
    search["drift"] = best
    return kept, search
