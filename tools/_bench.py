"""What the hymenoptera benchmarks share: where the data is, the late cut they finetune from, a progress
line on stderr, a smaller data set for smoke runs, and ftonnx's bytecode written before anything is timed.
Imported by the scripts beside it."""

from __future__ import annotations

import compileall
import sys
from pathlib import Path

import ftonnx
from ftonnx.pipeline import data_args

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "hymenoptera"
UNTIL = "/_blocks.14/Add"  # the `--freeze until:` node of the late-cut rows


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def limited(root: Path, limit: int, folder: Path) -> dict:
    """`discover` arguments for the first `limit` images of each class of train/ and val/ (list files)."""
    args = {"data": str(root)}
    for split, key in (("train", "list_file"), ("val", "val_list")):
        lines = [f"{split}/{c.name}/{f.name} {c.name}" for c in sorted((root / split).iterdir()) if c.is_dir()
                 for f in sorted(c.iterdir())[:limit]]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
        args[key] = str(folder / f"{split}.txt")
    return data_args(**args)


def compile_bytecode() -> None:
    """Write the bytecode of ftonnx's modules, as installing a wheel does. An editable install run with
    PYTHONDONTWRITEBYTECODE=1 (as on this project's machines) compiles every module from source again in every
    process: 0.05-0.1 s that no installed ftonnx spends, which a timed process would count."""
    compileall.compile_dir(Path(ftonnx.__file__).parent, quiet=1)
