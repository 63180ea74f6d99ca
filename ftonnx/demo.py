"""The embedded default job: finetune the zoo's EfficientNet-Lite0 on scikit-learn's handwritten
digits (real scanned images that ship inside the scikit-learn wheel), with no data of the user's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ftonnx.errors import FtonnxError


def write_digits(folder: Path, *, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the 1797 8x8 digit scans as 32x32 PNGs in ImageFolder layout (train/ and val/)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = round(len(indices) * val_fraction)
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            out = folder / split / str(label)
            out.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)  # dark ink on white
                Image.fromarray(pixels, "L").convert("RGB").resize((32, 32), Image.BICUBIC).save(
                    out / f"{i:04d}.png")
    return folder


def run_demo(out: Path, *, epochs: int = 30, seed: int = 0) -> dict:
    """Zoo EfficientNet-Lite0 -> cut at its pooling -> new head -> train -> export -> eval, on the digits.

    Returns the evaluation of the exported model on the held-out digits, with `model` and `report` (the
    paths of the model and of its report page, None without the `report` extra).
    """
    from ftonnx import zoo
    from ftonnx.data import discover
    from ftonnx.evaluate import evaluate
    from ftonnx.graph.inspect import recommended_cut
    from ftonnx.pipeline import data_args, finetune
    from ftonnx.progress import log
    from ftonnx.train.config import TrainConfig

    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    if run_dir.exists():
        raise FtonnxError(f"{run_dir} already holds a run; remove it or choose another --out")
    data = write_digits(out / "digits", seed=seed)
    log(f"data: scikit-learn's handwritten digits written to {data} (train/ and val/, 10 classes)")
    pretrained = out / "efficientnet-lite0.onnx"
    model = zoo.export_model("efficientnet-lite0", pretrained)
    cut_at = recommended_cut(model)
    log(f"zoo: {pretrained} ({len(model.graph.node)} nodes); cut at {cut_at['node']} -> {cut_at['tensor']} "
        f"{cut_at['shape']}: {cut_at['reason']}")
    result = finetune(pretrained, "auto", data_args(str(data), seed=seed), run_dir,
                      TrainConfig(epochs=epochs, seed=seed))
    _, val = discover(**data_args(str(data), seed=seed))
    report = evaluate(result.model_path, val)
    report["model"] = str(result.model_path)
    report["report"] = result.report_path and str(result.report_path)
    return report
