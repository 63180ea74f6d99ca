"""Run and export folders: ftonnx writes only into its own or empty folders, never through a link, one
process at a time (a killed holder's lock is taken over), replaces an export whole, keeps outputs and
data apart, cleans what killed runs left, and says in one line when the disk is read-only or full or a
run to resume is damaged."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli, finetune_tiny

NODE = "/pool/GlobalAveragePool"

COLOUR_IMAGES = (6, 3)  # per class, train and val (the `colours` fixture)


def finetune(tiny_path: Path, data: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    """A one-epoch finetune (a resume keeps the run's own epochs: `--resume --epochs N` would extend it)."""
    epochs = () if "--resume" in extra else ("--epochs", 1)
    return finetune_tiny(tiny_path, data, out, "--batch-size", 6, *epochs, *extra)


def one_line(code: int, stderr: str, *parts: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ftonnx: error: "), (code, stderr)
    assert all(p in lines[0] for p in parts), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` (links not followed) with its bytes."""
    return {str(p.relative_to(folder)): None if p.is_dir() or p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def trained(tiny_path: Path, colours: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    code, _, stderr = finetune(tiny_path, colours, run, "--epochs", 2)
    assert code == 0, stderr
    return run


def test_a_folder_of_another_tool_is_refused_and_left_as_it_was(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    for name, data in {"artifacts/training_model.onnx": b"theirs", "model.onnx": b"their model",
                       "checkpoints/epoch-0001.ckpt": b"their checkpoint", "config.json": b"{}"}.items():
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_bytes(data)
    before = snapshot(other)
    for extra in ((), ("--resume",)):
        one_line(*finetune(tiny_path, colours, other, *extra)[::2], "holds files ftonnx did not write")
    assert snapshot(other) == before
    exported = tmp_path / "edge"
    (exported / "notes").mkdir(parents=True)
    one_line(*cli("export", other, "-o", exported)[::2])
    assert (exported / "notes").is_dir()


def test_an_empty_folder_is_adopted_and_a_failed_start_leaves_it_empty(tiny_path: Path, colours: Path,
                                                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(*finetune(tiny_path, colours, empty, "--node", "nosuchnode")[::2], "no node or tensor matches")
    assert empty.is_dir() and not any(empty.iterdir())
    code, _, stderr = finetune(tiny_path, colours, empty)
    assert code == 0, stderr
    marker = json.loads((empty / ".ftonnx-run").read_text())
    assert {"created", "version"} <= set(marker) and (empty / "model.onnx").is_file()


def test_links_in_a_run_folder_are_refused_and_never_followed(trained: Path, tiny_path: Path, colours: Path,
                                                              tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "precious.ckpt").write_bytes(b"keep me")
    shutil.rmtree(trained / "checkpoints")
    (trained / "checkpoints").symlink_to(victim, target_is_directory=True)
    one_line(*finetune(tiny_path, colours, trained, "--resume")[::2], "checkpoints: is a symbolic link")
    assert (victim / "precious.ckpt").read_bytes() == b"keep me"


def hold(run: Path) -> subprocess.Popen:
    """A process that claims `run` as a training does and keeps it until killed."""
    code = ("import sys, time; from ftonnx.train.run import RunFolder; "
            "cm = RunFolder(sys.argv[1]).claimed(False); cm.__enter__(); print('held', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_training_fails_at_once_naming_the_holder_and_a_killed_holder_is_taken_over(
        tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    try:
        start = time.monotonic()
        one_line(*finetune(tiny_path, colours, run)[::2], f"is in use by another ftonnx process (pid {holder.pid})")
        assert time.monotonic() - start < 30
        assert not (run / "metrics.jsonl").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    code, _, stderr = finetune(tiny_path, colours, run)
    assert code == 0, stderr
    assert f"taking over from pid {holder.pid}, which ended without releasing it" in stderr
    assert (run / ".lock").read_text() == ""  # released: no pid left behind


def test_two_trainings_started_together_never_share_a_folder(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-c", "from ftonnx.cli import main; main()", "finetune", str(tiny_path), "--node", NODE,
            "--data", str(colours), "--out", str(run), "--batch-size", "6", "--epochs", "3"]
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another ftonnx process" in loser or "already holds a training run" in loser
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_out_and_data_must_not_nest(tiny_path: Path, colours: Path, tmp_path: Path, trained: Path) -> None:
    one_line(*finetune(tiny_path, colours, colours / "run")[::2], "lies inside the data folder")
    assert not (colours / "run").exists()
    one_line(*finetune(tiny_path, colours, colours.parent)[::2], "holds the data folder")
    one_line(*cli("export", trained, "-o", colours / "train" / "edge")[::2], "lies inside the data folder")
    assert not (colours / "train" / "edge").exists()


def test_an_export_replaces_the_earlier_one_whole(trained: Path, tmp_path: Path) -> None:
    edge = tmp_path / "edge"
    assert cli("export", trained, "-o", edge, "--int8", "--ort", "--calib-count", 4)[0] == 0
    assert {"model.int8.onnx", "model.int8.ort", "model.ort"} <= {p.name for p in edge.iterdir()}
    code, _, stderr = cli("export", trained, "-o", edge)
    assert code == 0, stderr
    assert sorted(p.name for p in edge.iterdir()) == [".ftonnx-export", "model.onnx", "report.json"]
    assert [v["name"] for v in json.loads((edge / "report.json").read_text())["variants"]] == ["float"]
    assert json.loads((edge / ".ftonnx-export").read_text())["files"] == ["model.onnx", "report.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (edge / "my-notes.txt").write_text("mine")
    one_line(*cli("export", trained, "-o", edge)[::2], "holds my-notes.txt, which the earlier export did not write")
    assert (edge / "my-notes.txt").read_text() == "mine" and (edge / "model.onnx").is_file()


def test_leftovers_of_killed_runs_and_exports_go_and_only_those(trained: Path, tiny_path: Path, colours: Path,
                                                                tmp_path: Path) -> None:
    planted = [trained / ".ftonnx-tmp-artifacts.k1ll3d00" / "training_model.onnx",
               trained / ".ftonnx-tmp-model.onnx.k1ll3d00" / "model.onnx",
               trained / "checkpoints" / ".ftonnx-tmp-epoch-0009.ckpt",
               tmp_path / ".ftonnx-export-edge.k1ll3d00" / "model.onnx"]
    kept = [trained / ".my-notes", tmp_path / ".ftonnx-export-other.k1ll3d00" / "model.onnx"]
    for path in planted + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    code, _, stderr = finetune(tiny_path, colours, trained, "--resume")
    assert code == 0, stderr
    assert cli("export", trained, "-o", tmp_path / "edge")[0] == 0
    assert [p for p in planted if p.exists()] == [] and all(p.exists() for p in kept)
    assert not (trained / ".ftonnx-tmp-artifacts.k1ll3d00").exists()


def test_a_killed_runs_spill_files_go_when_the_next_run_starts(tiny_path: Path, colours: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-c", "from ftonnx.cli import main; main()", "finetune", str(tiny_path), "--node", NODE,
            "--data", str(colours), "--out", str(run), "--batch-size", "6", "--epochs", "300", "--cache-mem", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and list(run.glob("cache/*.npy"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spilled = list(run.glob("cache/*.npy"))
    assert spilled and all(p.name.startswith(".ftonnx-tmp-activations-") for p in spilled)
    resumed = subprocess.Popen(args + ["--resume"], stderr=subprocess.PIPE, text=True)
    for line in resumed.stderr:
        if line.startswith("epoch "):  # training has begun: the cache of this run is built
            assert not [p for p in spilled if p.exists()]
            break
    resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    assert not (run / "cache").exists()


@pytest.fixture
def read_only(tmp_path: Path):
    """A folder nothing can be written into: by permissions, or for root (whom permissions do not stop) a
    read-only tmpfs, when this machine lets the tests mount one."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("running as root and cannot mount a read-only file system")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_read_only_out_is_one_line_before_any_decoding(tiny_path: Path, colours: Path, tmp_path: Path,
                                                         read_only: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    (data / "train" / "red" / "broken.png").write_bytes(b"not an image")  # --strict would fail on it when decoding
    one_line(*finetune(tiny_path, data, read_only / "run", "--strict")[::2], "cannot write there")


def limited(limit: int) -> callable:
    """preexec_fn: files may not grow past `limit` bytes, and the write that would fails (EFBIG) rather than
    killing the process: a full disk for the files ftonnx writes, without a file system to fill."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_a_save_is_one_line_and_nothing_half_written(tiny_path: Path, colours: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-c", "from ftonnx.cli import main; main()", "finetune", str(tiny_path), "--node", NODE,
            "--data", str(colours), "--out", str(run), "--batch-size", "6", "--epochs", "1", "--freeze", "none"]
    proc = subprocess.run(args, capture_output=True, text=True, preexec_fn=limited(12_000), timeout=300)
    line = one_line(proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr else "", "needs about")
    assert "epoch-0001.ckpt: could not save the checkpoint" in line and "File too large" in line
    assert not run.exists()  # it failed before its first checkpoint: nothing of it stays
    assert not [p for p in tmp_path.rglob("*") if ".ftonnx-tmp" in p.name]


@pytest.mark.parametrize("damage, outcome", [
    ("truncated config.json", "config.json: damaged, not valid JSON"),
    ("config.json of wrong types", "config.json: damaged: epochs is \"3\""),
    ("truncated last.json", "resuming from the best checkpoint (epoch 1)"),
    ("truncated last checkpoint", "resuming from the best checkpoint (epoch 1)"),
    ("both checkpoints truncated", "cannot resume"),
    ("torn metrics line", "resuming"),
])
def test_resume_of_a_damaged_run_continues_from_what_is_intact_or_says_what_is_damaged(
        trained: Path, tiny_path: Path, colours: Path, damage: str, outcome: str) -> None:
    checkpoints = trained / "checkpoints"
    last = json.loads((checkpoints / "last.json").read_text())
    shutil.copyfile(checkpoints / last["checkpoint"], checkpoints / "epoch-0001.ckpt")  # an earlier best
    (checkpoints / "best.json").write_text(json.dumps({**last, "epoch": 1, "checkpoint": "epoch-0001.ckpt"}))
    config = trained / "config.json"
    if damage == "truncated config.json":
        config.write_text(config.read_text()[:40])
    elif damage == "config.json of wrong types":
        config.write_text(json.dumps({**json.loads(config.read_text()), "epochs": "3"}))
    elif damage == "truncated last.json":
        (checkpoints / "last.json").write_text('{"epoch": 2, "ste')
    elif "truncated" in damage:
        for name in [last["checkpoint"]] + (["epoch-0001.ckpt"] if damage.startswith("both") else []):
            (checkpoints / name).write_bytes((checkpoints / name).read_bytes()[:100])
    else:
        with open(trained / "metrics.jsonl", "a") as metrics:
            metrics.write('{"epoch": 3, "train_lo')
    code, _, stderr = finetune(tiny_path, colours, trained, "--resume")
    if code == 2:
        one_line(code, stderr, outcome)
        return
    assert code == 0 and outcome in stderr, stderr
    epochs = [json.loads(line)["epoch"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and (trained / "model.onnx").is_file()
