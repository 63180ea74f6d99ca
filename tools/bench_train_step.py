"""Training-step throughput of ftonnx (ONNX Runtime training) against PyTorch eager on the same network.

Both train EfficientNet-Lite0 with a 2-class head (the same initial weights: the zoo recipe's
PyTorch network, and its ONNX export cut at the pooling with an ftonnx head copied into torch),
on the same random batch, with AdamW, the same batch size and the same thread count. Batch norm
runs with its running statistics in both (the ONNX export folds it; torch is in eval mode), as
ftonnx trains it. Decoding is left out: this measures the step alone. The first-step losses of the
two are printed too: equal to a few decimals, they show that both train the same network.

    python tools/bench_train_step.py                     # freeze backbone and none, 10 timed steps
    python tools/bench_train_step.py --steps 2 --warmup 1  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ftonnx import zoo
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.train.artifacts import build_artifacts
from ftonnx.train.freeze import trainable_parameters

MODEL = "efficientnet-lite0"


def ort_images_per_s(model: onnx.ModelProto, freeze: str, x: np.ndarray, y: np.ndarray, steps: int, warmup: int,
                     threads: int) -> tuple[float, float]:
    """Images per second of ORT training steps (forward, backward, AdamW) on one fixed batch, first loss."""
    from ftonnx.train.session import TrainingSession

    with tempfile.TemporaryDirectory() as tmp:
        art = build_artifacts(model, trainable_parameters(model, freeze), Path(tmp) / "artifacts",
                              weight_decay=1e-4)
        session = TrainingSession(art, art.checkpoint, threads=threads)
        session.module.train()
        losses: list[float] = []
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            losses.append(session.step({"input": x}, y, 1e-3, np.random.default_rng(i)))
        return steps * len(y) / (time.perf_counter() - start), losses[0]


def torch_images_per_s(model: onnx.ModelProto, freeze: str, x: np.ndarray, y: np.ndarray, steps: int,
                       warmup: int, threads: int) -> tuple[float, float]:
    """Images per second of PyTorch eager training steps on the same network, head and batch, first loss."""
    import torch

    torch.set_num_threads(threads)
    net = zoo.get(MODEL).build()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    net._fc = torch.nn.Linear(net._fc.in_features, weights["head.fc.bias"].shape[0])
    with torch.no_grad():
        net._fc.weight.copy_(torch.from_numpy(weights["head.fc.weight"].copy()))
        net._fc.bias.copy_(torch.from_numpy(weights["head.fc.bias"].copy()))
    net.eval()
    if freeze == "backbone":
        for p in net.parameters():
            p.requires_grad_(False)
        for p in net._fc.parameters():
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    losses: list[float] = []
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(tx), ty)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return steps * len(y) / (time.perf_counter() - start), losses[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", nargs="+", default=["backbone", "none"], choices=["backbone", "none"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 for backbone, 16 for none")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of both")
    parser.add_argument("--node", default="AvgPool", help="where the ONNX model is cut for the head")
    args = parser.parse_args()

    model = add_head(cut(zoo.export_model(MODEL), args.node), 2, seed=0)
    print(f"{MODEL}, 2-class head, {args.threads} threads, {args.steps} timed steps after {args.warmup}")
    print("| freeze | batch | ftonnx (ORT) img/s | PyTorch eager img/s | ftonnx / PyTorch | first loss ORT / torch |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for freeze in args.freeze:
        batch = args.batch_size or (32 if freeze == "backbone" else 16)
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        y = rng.integers(0, 2, batch).astype(np.int64)
        ours, our_loss = ort_images_per_s(model, freeze, x, y, args.steps, args.warmup, args.threads)
        theirs, their_loss = torch_images_per_s(model, freeze, x, y, args.steps, args.warmup, args.threads)
        print(f"| {freeze} | {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | "
              f"{our_loss:.5f} / {their_loss:.5f} |", flush=True)


if __name__ == "__main__":
    main()
