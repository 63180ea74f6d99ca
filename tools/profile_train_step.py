"""Where an ONNX Runtime training step's time goes: per op type, forward and backward, for the zoo's
EfficientNet-Lite0 with every parameter trainable (a full finetune), from ORT's own profiler.

Builds the artifacts as ftonnx does, runs `--warmup` untimed steps and `--steps` profiled steps on one
fixed batch, and prints a table of the op types by total time (the per-node kernel times ORT records),
with the share of the step they take and how many nodes there are; the README and docs/performance.md
quote it.

    python tools/profile_train_step.py                   # batch 16, 2 threads
    python tools/profile_train_step.py --batch 32 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ftonnx import zoo
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.train.artifacts import build_artifacts
from ftonnx.train.freeze import trainable_parameters


def profile(batch: int, threads: int, steps: int, warmup: int, freeze: str) -> tuple[dict, float]:
    """(op type -> [total ms, nodes], mean wall ms per step) over the profiled steps."""
    import onnxruntime
    from onnxruntime.training import api

    model = add_head(cut(zoo.export_model("efficientnet-lite0"), "auto"), 2, labels=["a", "b"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    y = np.arange(batch) % 2
    with tempfile.TemporaryDirectory() as tmp:
        art = build_artifacts(model, trainable_parameters(model, freeze), Path(tmp) / "artifacts", weight_decay=1e-4)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
        module = api.Module(str(art.training_model), state, str(art.eval_model), session_options=options)
        optimizer = api.Optimizer(str(art.optimizer_model), module)
        module.train()
        for i in range(warmup + steps):
            if i == warmup:
                start = time.perf_counter()
            module(x, y)
            optimizer.step()
            module.lazy_reset_grad()
        wall = (time.perf_counter() - start) / steps * 1000
        del optimizer, module  # ORT writes the trace when the sessions close
        gc.collect()
        trace = json.loads(max(Path(tmp).glob("profile*.json"), key=lambda p: p.stat().st_size).read_text())
    return _by_op(trace, steps), wall


def _by_op(trace: list[dict], steps: int) -> dict[str, list]:
    """Kernel time per op type per step (the last `steps` runs), and the number of nodes of each type."""
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, set()])
    for event in nodes:
        op = event["args"].get("op_name", "?")
        totals[op][0] += event["dur"] / 1000
        totals[op][1].add(event["name"])
    runs = max(1, len([e for e in trace if e.get("name") == "model_run"]))
    return {op: [ms / runs, len(names)] for op, (ms, names) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--freeze", default="none")
    args = parser.parse_args()
    ops, wall = profile(args.batch, args.threads, args.steps, args.warmup, args.freeze)
    kernel = sum(ms for ms, _ in ops.values())
    print(f"EfficientNet-Lite0, --freeze {args.freeze}, batch {args.batch}, {args.threads} threads: "
          f"{wall:.0f} ms per step ({args.batch / wall * 1000:.1f} img/s), kernels {kernel:.0f} ms per run\n")
    print("| op type | ms per run | share | nodes |")
    print("|---|---|---|---|")
    for op, (ms, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:20]:
        print(f"| {op} | {ms:.1f} | {100 * ms / kernel:.1f} % | {count} |")


if __name__ == "__main__":
    main()
