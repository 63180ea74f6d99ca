"""What several test modules share: paths, tiny models and image folders, running a model with ONNX
Runtime, invoking the CLI, and training from arrays."""

from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ftonnx import metadata

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera"
LABELS = ["ants", "bees"]  # hymenoptera's classes
COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
# Labels a list file may carry (no whitespace): markup, quotes and an ampersand, unicode, a bell, a
# right-to-left override, and mathtext for matplotlib.
HOSTILE = ["<script>alert(1)</script>", "qu\"o't&amp;", "été☃灯", "bell\x07", "rtl\u202eevil", "$x^2$"]


def require_torch():
    """torch, or skip the test: only the zoo and the test models of other exporters need it
    (`pip install -e ".[cpu]"` has no torch; `.ci/run` installs it with the `dev` extra)."""
    import pytest

    return pytest.importorskip("torch", reason="needs torch (pip install 'ftonnx[zoo]')")


def require_matplotlib() -> None:
    """Skip the test without matplotlib: the report's pictures need the `report` extra."""
    import pytest

    pytest.importorskip("matplotlib", reason="the report's pictures need matplotlib (pip install 'ftonnx[report]')")


def write_colours(root: Path, train: int, val: int) -> Path:
    """train/ and val/ with 3 classes of noisy, mostly one-colour 40x40 images (`train` + `val` of each)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(rgb, 90, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def write_image(path: Path, size: tuple[int, int] = (30, 24), seed: int = 0) -> Path:
    """A random RGB image of `size` (W, H), format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of `pixels` (H, W) grey or (H, W, 2|3|4) grey+alpha, RGB, RGBA; Pillow cannot write these."""
    pixels = np.asarray(pixels, np.uint16)
    height, width = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else {2: 4, 3: 2, 4: 6}[pixels.shape[2]]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels.reshape(height, -1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def write_tables(root: Path, data: Path) -> dict[str, Path]:
    """The images of the folder `data` (train/ and val/) as tables with a split column: paths.csv (paths relative
    to the table), bytes.parquet and a folder of three Parquet files of bytes (when pyarrow is installed)."""
    from ftonnx.data import discover

    train, val = discover(str(data))
    rows = [(path, train.classes[label], split) for split, dataset in (("train", train), ("val", val))
            for path, label in dataset.samples]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "paths.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class", "split"])
        writer.writerows((os.path.relpath(p, root), c, s) for p, c, s in rows)
    tables = {"csv": root / "paths.csv"}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return tables

    def parquet(path: Path, chosen: list[tuple[str, str, str]]) -> None:
        pq.write_table(pa.table({"image": pa.array([Path(p).read_bytes() for p, _, _ in chosen], pa.binary()),
                                 "label": [c for _, c, _ in chosen], "split": [s for _, _, s in chosen]}), path)

    parquet(root / "bytes.parquet", rows)
    (root / "parts").mkdir()
    for k, start in enumerate(range(0, len(rows), -(-len(rows) // 3))):
        parquet(root / "parts" / f"part-{k}.parquet", rows[start:start + -(-len(rows) // 3)])
    return {**tables, "parquet": root / "bytes.parquet", "parts": root / "parts"}


def make_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """One folder per class with the given number of PNG images of varied sizes."""
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"img{i}.png", (24 + 3 * i, 20 + 2 * c), seed=seed + 100 * c + i)
    return root


def hostile_data(root: Path) -> dict:
    """Images listed under the HOSTILE labels (6 training and 3 validation images each), as the arguments
    of `ftonnx.data.discover`."""
    from ftonnx.pipeline import data_args

    images = make_folder(root / "img", {"train": 6 * len(HOSTILE), "val": 3 * len(HOSTILE)}, seed=3)
    for split, per_class in (("train", 6), ("val", 3)):
        lines = [f"{split}/img{i}.png {HOSTILE[i % len(HOSTILE)]}\n" for i in range(per_class * len(HOSTILE))]
        (root / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return data_args(str(images), list_file=str(root / "train.txt"), val_list=str(root / "val.txt"))


def build_tiny_model(num_classes: int = 10, size: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm on (N, 3, size, size), dynamic batch,
    with preprocessing and labels in the metadata, like a zoo export but tiny."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv",
                         pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="/conv2/Conv",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/relu2/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="/Flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    inits = [init("conv1.weight", 8, 3, 3, 3), init("conv1.bias", 8), init("conv2.weight", 16, 8, 3, 3),
             init("conv2.bias", 16), init("fc.weight", num_classes, 16), init("fc.bias", num_classes)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ftonnx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return metadata.write(model, metadata.Meta(
        labels=[f"class_{i}" for i in range(num_classes)],
        preprocess=metadata.Preprocess(size=(size, size), resize=size + 4),
        source="tests:tiny"))


def skip_model() -> onnx.ModelProto:
    """conv1 -> r1 -> conv2 -> r2 -> conv3 -> Add(r1) -> pool -> fc: freezing conv1 and conv2
    leaves two tensors crossing into the trainable part, r2 and the skip connection r1."""
    rng = np.random.default_rng(1)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    conv = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "conv3.weight"], ["c3"], name="conv3", **conv),
        helper.make_node("Add", ["c3", "r1"], ["sum"], name="add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("conv1.weight", 8, 3, 3, 3), init("conv2.weight", 8, 8, 3, 3),
             init("conv3.weight", 8, 8, 3, 3), init("fc.weight", 4, 8), init("fc.bias", 4)]
    graph = helper.make_graph(
        nodes, "skip", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return metadata.write(model, metadata.Meta(labels=["a", "b", "c", "d"]))


def write_lists(folder: Path, hymenoptera: Path, per_class: int) -> dict[str, str]:
    """Train and val list files of `per_class` hymenoptera images per class; the `discover` kwargs."""
    args = {"data": str(hymenoptera)}
    for split, key in (("train", "list_file"), ("val", "val_list")):
        lines = [f"{split}/{c}/{p.name} {c}" for c in LABELS
                 for p in sorted((hymenoptera / split / c).glob("*.jpg"))[:per_class]]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
        args[key] = str(folder / f"{split}.txt")
    return args


def make_run(run: Path, model: onnx.ModelProto, data_args: dict) -> Path:
    """A RUN folder as `ftonnx finetune` writes it: model.onnx (logits and probabilities) and config.json."""
    run.mkdir()
    onnx.save(model, str(run / "model.onnx"))
    (run / "config.json").write_text(json.dumps({"data_args": data_args}))
    return run


def image_batch(images: list[Path], preprocess: metadata.Preprocess) -> np.ndarray:
    """Decode and preprocess image files the way training and eval do, into one float32 batch."""
    from ftonnx.data import load_image

    return np.stack([load_image(path, preprocess) for path in images])


def run_model(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray] | np.ndarray,
              outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run a model (ModelProto or file) on CPU with ONNX Runtime; a bare array feeds its first input."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    if isinstance(feeds, np.ndarray):
        feeds = {session.get_inputs()[0].name: feeds}
    return session.run(outputs, feeds)


def cli(*args: object) -> tuple[int, str, str]:
    """Invoke the `ftonnx` command line in-process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from ftonnx.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


TINY_NODE = "/pool/GlobalAveragePool"  # the tiny model's pooling, where its backbone ends


def finetune_tiny(model: Path, data: Path, out: Path, *options: object) -> tuple[int, str, str]:
    """`ftonnx finetune MODEL --node TINY_NODE --data DATA --out OUT OPTIONS...`, in-process."""
    return cli("finetune", model, "--node", TINY_NODE, "--data", data, "--out", out, *options)


def fails_cleanly(args: list, folder: Path) -> str:
    """Run the CLI on `args`: exit code 2, one line on stderr, nothing added to or removed from `folder`;
    returns that line."""
    before = sorted(p.name for p in folder.iterdir())
    code, stdout, stderr = cli(*args)
    lines = stderr.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ftonnx: error: "), (code, stderr, stdout)
    assert sorted(p.name for p in folder.iterdir()) == before
    return lines[0]


def interrupt_cached_training(monkeypatch, epoch: int) -> None:
    """Make training on cached activations stop with Ctrl-C (KeyboardInterrupt) as epoch `epoch` begins."""
    from ftonnx.train.cache import ActivationCache

    batches = ActivationCache.batches

    def interrupting(self, at: int, *args, **kwargs):
        if at == epoch:
            raise KeyboardInterrupt
        return batches(self, at, *args, **kwargs)

    monkeypatch.setattr(ActivationCache, "batches", interrupting)


class ArrayBatches:
    """A training batch source over arrays: batches of `batch_size` in a fixed order each epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, name: str = "input") -> None:
        self.x, self.y, self.batch_size, self.name = x, y, batch_size, name

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        for s in range(0, len(self.y), self.batch_size):
            yield {self.name: self.x[s:s + self.batch_size]}, self.y[s:s + self.batch_size]


def train_and_export(model: onnx.ModelProto, batches, val, run_dir: Path, config) -> onnx.ModelProto:
    """Train with the loop (defaults resolved as the pipeline resolves them), export RUN/model.onnx, load it."""
    from ftonnx.export.inference import export_inference
    from ftonnx.train.freeze import trainable_parameters
    from ftonnx.train.loop import train

    trainable = trainable_parameters(model, config.freeze)
    head = set(metadata.read(model).head_params)
    config = config.resolved(backbone_trains=any(p not in head for p in trainable))
    result = train(model, batches, val, run_dir, config, trainable)
    return onnx.load(str(export_inference(model, result.weights, Path(run_dir) / "model.onnx")))
