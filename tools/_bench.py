"""What the hymenoptera benchmarks share: where the data is, the late cut they finetune from, a progress
line on stderr, and a smaller data set for smoke runs. Imported by the scripts beside it."""

from __future__ import annotations

import sys
from pathlib import Path

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
