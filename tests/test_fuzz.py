"""A fuzzer: thousands of mutated and truncated model files, seeded, through load -> inspect -> cut -> head.
Every outcome must be a success or an FtonnxError: no other exception, and no crash. Cases run in two
worker processes; a worker killed by a signal is counted against the case it was running and replaced.
`python tests/test_fuzz.py SEED COUNT` runs more of them.

Two kinds of mutation: bytes (flipped, overwritten, inserted, deleted, or the file cut short), which mostly
test parsing, and structure (a weight's rank, an attribute's value, an op type, an input, the declared
input shape, an element type, a metadata value, the opset), which reaches shape inference and the
checks in front of it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ftonnx.errors import FtonnxError

from helpers import build_tiny_model, skip_model

SEED = 16
BYTE_CASES, STRUCTURE_CASES = 1000, 1000
OPS = ["Conv", "ConvTranspose", "Relu", "GlobalAveragePool", "MaxPool", "AveragePool", "Flatten", "Gemm", "MatMul",
       "Add", "Reshape", "Transpose", "BatchNormalization", "Concat", "Squeeze", "Unsqueeze", "Softmax", "Slice",
       "Gather", "Pad", "Resize", "ReduceMean", "Split", "Expand", "Tile", "Cast", "Clip", "Shape",
       "ConstantOfShape", "Where", "TopK", "Einsum", "LayerNormalization", "InstanceNormalization", "DepthToSpace",
       "ArgMax", "Range", "OneHot", "Trilu", "Upsample", "Identity"]
VALUES = [0, -1, 1, 2, 3, 7, -2**31, 2**31, 2**40, 100_000]
METADATA = ['"abc"', "[1, 2]", "null", "{}", "[[]]", '{"size": "x"}', "3",
            '{"size": [100000, 100000], "resize": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}',
            '{"size": [32, 32], "resize": 36, "mean": [1], "std": [0, 0, 0]}']


def base_models() -> list[onnx.ModelProto]:
    """The tiny classifier and the skip-connection model; with torch, two exporters' graphs too (BatchNorm,
    squeeze-and-excitation, HardSigmoid, MaxPool; Constant weights at opset 11, IR 5)."""
    models = [build_tiny_model(), skip_model()]
    try:
        import torch  # noqa: F401
    except ImportError:
        return models
    from exporters import constant_weights, se_cnn

    return models + [se_cnn(), constant_weights()]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    if rng.random() < 0.2:
        return bytes(data[:rng.randrange(len(data))])
    for _ in range(rng.randint(1, 4)):
        i, kind = rng.randrange(len(data)), rng.random()
        if kind < 0.5:
            data[i] = rng.randrange(256)
        elif kind < 0.7:
            data[i] ^= 1 << rng.randrange(8)
        elif kind < 0.85:
            del data[i]
        else:
            data.insert(i, rng.randrange(256))
    return bytes(data)


def mutate_structure(model: onnx.ModelProto, rng: random.Random) -> bytes:
    mutant = onnx.ModelProto()
    mutant.CopyFrom(model)
    for _ in range(rng.randint(1, 3)):
        rng.choice(_EDITS)(mutant, rng)
    return mutant.SerializeToString()


def _rank(m: onnx.ModelProto, rng: random.Random) -> None:
    tensor = rng.choice(list(m.graph.initializer))
    values = numpy_helper.to_array(tensor).ravel()
    rank = rng.randint(0, 5)
    shape = [values.size] + [1] * (rank - 1) if rank else []
    tensor.CopyFrom(numpy_helper.from_array(values.reshape(shape) if rank else values[:1].reshape(()), tensor.name))


def _attribute(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    ints = [a for a in node.attribute if a.type == onnx.AttributeProto.INTS and a.ints]
    if ints and rng.random() < 0.7:
        chosen = rng.choice(ints)
        chosen.ints[rng.randrange(len(chosen.ints))] = rng.choice(VALUES)
    else:
        name = rng.choice(["axis", "group", "strides", "pads", "kernel_shape", "dilations", "perm", "axes", "transB"])
        value = rng.choice(VALUES) if rng.random() < 0.5 else [rng.choice(VALUES)] * rng.randint(1, 4)
        node.attribute.append(helper.make_attribute(name, value))


def _op(m: onnx.ModelProto, rng: random.Random) -> None:
    rng.choice(list(m.graph.node)).op_type = rng.choice(OPS)


def _inputs(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    if node.input and rng.random() < 0.5:
        del node.input[rng.randrange(len(node.input))]
    else:
        node.input.append(rng.choice([t.name for t in m.graph.initializer] + [m.graph.input[0].name, "", "nowhere"]))


def _input_shape(m: onnx.ModelProto, rng: random.Random) -> None:
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if dims and rng.random() < 0.6:
        dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 2, 100_000])
    elif dims:
        del dims[rng.randrange(len(dims))]


def _element_type(m: onnx.ModelProto, rng: random.Random) -> None:
    if rng.random() < 0.5:
        rng.choice(list(m.graph.initializer)).data_type = rng.choice([0, 7, 10, 11, 16, 99])
    else:
        rng.choice([*m.graph.input, *m.graph.output]).type.tensor_type.elem_type = rng.choice([0, 7, 10, 11])


def _metadata(m: onnx.ModelProto, rng: random.Random) -> None:
    key = rng.choice(["labels", "preprocess", "head_params", "feature"])
    m.metadata_props.add(key=f"ftonnx.{key}", value=rng.choice(METADATA))


def _opset(m: onnx.ModelProto, rng: random.Random) -> None:
    m.opset_import[0].version = rng.choice([0, 1, 5, 7, 11, 13, 18, 21, 30])


_EDITS = [_rank, _attribute, _op, _inputs, _input_shape, _element_type, _metadata, _opset]


def cases() -> list[bytes]:
    rng = random.Random(SEED)
    models = base_models()
    serialized = [m.SerializeToString() for m in models]
    found = [mutate_bytes(rng.choice(serialized), rng) for _ in range(BYTE_CASES)]
    while len(found) < BYTE_CASES + STRUCTURE_CASES:
        try:
            found.append(mutate_structure(rng.choice(models), rng))
        except Exception:  # a mutation numpy_helper cannot express (a type change, then a reshape)
            continue
    return found


def one_case(path: Path) -> None:
    """What a user does with a model: inspect it, cut off its classifier, add a head."""
    from ftonnx.graph import load_reporting
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head
    from ftonnx.graph.inspect import format_summary, summarize

    model, changes = load_reporting(path)
    format_summary(summarize(model, changes=changes))
    add_head(cut(model, "auto"), 3)


def serve(blob: str, start: int, stop: int) -> None:
    """Worker: run cases `start`..`stop` of the case file `blob`, printing one line per case: its index and
    outcome, and for an unexpected exception where it came from."""
    datas = read_cases(Path(blob))
    path = Path(blob).with_name(f"case-{os.getpid()}.onnx")
    for index in range(start, stop):
        path.write_bytes(datas[index])
        try:
            one_case(path)
            outcome = "ok"
        except FtonnxError:
            outcome = "error"
        except Exception as exc:  # what the fuzzer is looking for
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcome = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {str(exc)[:100]}"
        print(f"{index}\t{outcome}", flush=True)


def write_cases(datas: list[bytes], path: Path) -> Path:
    path.write_bytes(b"".join(len(d).to_bytes(8, "little") + d for d in datas))
    return path


def read_cases(path: Path) -> list[bytes]:
    blob, datas, at = path.read_bytes(), [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at:at + 8], "little")
        datas.append(blob[at + 8:at + 8 + size])
        at += 8 + size
    return datas


def run_all(datas: list[bytes], folder: Path, workers: int = 2) -> dict[int, str]:
    """Outcome per case, from fresh worker processes (small ones: forking the test process, which may hold
    torch, would make every fork ftonnx makes inside slower); a worker that dies is counted against the
    case it was running, and a new one continues after it."""
    blob = write_cases(datas, folder / "cases.bin")
    driver = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_fuzz; "
              "test_fuzz.serve(sys.argv[1], *map(int, sys.argv[2:]))")
    outcomes: dict[int, str] = {}
    chunks = [(int(c[0]), int(c[-1]) + 1) for c in np.array_split(np.arange(len(datas)), workers) if len(c)]
    while chunks:
        procs = [(start, stop, subprocess.Popen([sys.executable, "-c", driver, str(blob), str(start), str(stop)],
                                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
                 for start, stop in chunks]
        chunks = []
        for start, stop, proc in procs:
            for line in proc.stdout:
                index, outcome = line.rstrip("\n").split("\t", 1)
                outcomes[int(index)] = outcome
            if proc.wait() < 0:
                crashed = max([i for i in outcomes if start <= i < stop], default=start - 1) + 1
                outcomes[crashed] = f"killed by {signal.Signals(-proc.returncode).name}"
                chunks += [(crashed + 1, stop)] if crashed + 1 < stop else []
    return outcomes


def test_mutated_models_give_success_or_ftonnx_error_never_a_crash(tmp_path: Path) -> None:
    datas = cases()
    start = time.monotonic()
    outcomes = run_all(datas, tmp_path)
    elapsed = time.monotonic() - start
    assert len(outcomes) == len(datas)
    counts = Counter(o if o in ("ok", "error") else "other" for o in outcomes.values())
    bad = {i: o for i, o in outcomes.items() if o not in ("ok", "error")}
    assert not bad, f"{len(bad)} of {len(datas)} cases ended otherwise: {dict(list(bad.items())[:10])}"
    assert counts["ok"] > 100 and counts["error"] > 1000, counts  # the mutants reach every stage
    print(f"fuzz: {len(datas)} cases in {elapsed:.1f} s: {dict(counts)}")


if __name__ == "__main__":  # a longer campaign: python tests/test_fuzz.py SEED CASES
    import tempfile

    SEED, BYTE_CASES = int(sys.argv[1]), int(sys.argv[2]) // 2
    STRUCTURE_CASES = BYTE_CASES
    found = run_all(cases(), Path(tempfile.mkdtemp()))
    print(Counter(found.values()).most_common(10))
