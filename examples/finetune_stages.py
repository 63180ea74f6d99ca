"""Finetune EfficientNet-Lite0 stage by stage with ftonnx's Python API, then export for the edge.

    python examples/finetune_stages.py DATA OUT     # DATA: train/ and val/, one folder per class

Each stage passes an ONNX model to the next; labels, preprocessing and which parameters are head
and which backbone travel in the model's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ftonnx
from ftonnx import pipeline, zoo
from ftonnx.data import discover
from ftonnx.graph.inspect import recommended_cut
from ftonnx.graph.io import save_model


def main(data: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pretrained = zoo.export_model("efficientnet-lite0", out_dir / "lite0.onnx")
    print("cut at:", recommended_cut(pretrained)["node"])
    args = ftonnx.data_args(data)
    classes = discover(**args)[0].classes
    features = ftonnx.cut(pretrained, "auto")
    save_model(ftonnx.add_head(features, len(classes), labels=classes), out_dir / "classifier.onnx")
    result = pipeline.train(out_dir / "classifier.onnx", args, out_dir / "run", ftonnx.TrainConfig(epochs=10))
    print(f"val top-1 {result.best['val_top1']:.4f}: {result.model_path}")
    report = ftonnx.export_run(out_dir / "run", out_dir / "edge", int8=True, ort=True)
    for variant in report["variants"]:
        print(f"{variant['name']:10} {variant['file']:18} top-1 {variant['top1']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
