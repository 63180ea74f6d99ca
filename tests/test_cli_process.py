"""The console script against the in-process entry point: only a process of its own (`ftonnx.cli.run`) freezes
what start-up made out of the garbage collector's passes; `main`, which tests and notebooks call, leaves the
collector as it found it."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """import gc, sys
from ftonnx.cli import {entry}
sys.argv = ["ftonnx", "inspect", "--help"]
try:
    {entry}()
except SystemExit:
    pass
print(gc.get_freeze_count())
"""


@pytest.mark.parametrize("entry, frozen", [("run", True), ("main", False)])
def test_only_the_console_script_freezes_start_up(entry: str, frozen: bool) -> None:
    proc = subprocess.run([sys.executable, "-c", CODE.format(entry=entry)], capture_output=True, text=True,
                          check=True)
    assert "Usage: ftonnx inspect" in proc.stdout
    count = int(proc.stdout.strip().splitlines()[-1])
    assert (count > 10_000) is frozen, count
