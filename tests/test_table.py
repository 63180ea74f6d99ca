"""Tables of images (--table): a CSV or Parquet table of paths is the same data set as the folder it lists, a
Parquet table of image bytes decodes as the files do, finetuning from either trains the folder's weights, the
validation sources (split column, second table, fraction), a run from a table resumes, and bad tables fail
as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ftonnx.data import Loader, discover
from ftonnx.errors import FtonnxError
from ftonnx.metadata import Preprocess
from ftonnx.train.cache import ActivationCache

from helpers import TINY_NODE, build_tiny_model, cli, fails_cleanly, interrupt_cached_training, write_tables

COLOUR_IMAGES = (10, 5)  # the `colours` fixture's training and validation images per class


@pytest.fixture(scope="module")
def data(colours: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The colour folder, the tables of its images, and a tiny 3-class model."""
    root = tmp_path_factory.mktemp("table")
    onnx.save(build_tiny_model(num_classes=3), str(root / "tiny.onnx"))
    return {"colours": colours, "model": root / "tiny.onnx", **write_tables(root / "tables", colours)}


def needs_pyarrow() -> None:
    pytest.importorskip("pyarrow", reason="Parquet tables need pyarrow: pip install 'ftonnx[table]'")


def test_a_csv_table_of_paths_is_the_folder_it_lists(data):
    folder = discover(str(data["colours"]))
    table = discover(table=str(data["csv"]), image_column="file", label_column="class", split_column="split")
    assert [d.samples for d in table] == [d.samples for d in folder]
    assert table[0].classes == folder[0].classes and table[0].images is None


@pytest.mark.parametrize("table", ["parquet", "parts"])
def test_a_parquet_table_of_bytes_decodes_as_the_files_do(data, table):
    needs_pyarrow()
    folder = discover(str(data["colours"]))
    got = discover(table=str(data[table]), split_column="split")
    preprocess = Preprocess(size=(24, 24), resize=28)
    for want, dataset in zip(folder, got):
        assert [label for _, label in dataset.samples] == [label for _, label in want.samples]
        assert all("#" in name for name, _ in dataset.samples)  # FILE#ROW, not a file
        for (x, y), (wx, wy) in zip(Loader(dataset, preprocess, batch_size=8).epoch(0),
                                    Loader(want, preprocess, batch_size=8).epoch(0)):
            assert np.array_equal(x, wx) and np.array_equal(y, wy)


def test_a_table_uri_is_read_with_pyarrow(data):
    needs_pyarrow()
    train, val = discover(table=f"file://{data['parquet']}", split_column="split")
    assert (len(train.samples), len(val.samples)) == (30, 15)
    assert train.samples[0][0] == f"file://{data['parquet']}#0"
    cache = ActivationCache.build(build_tiny_model(num_classes=3), train)
    assert len(cache) == 30
    train, val = discover(table=f"file://{data['parts']}", split_column="split")  # a folder: its files in order
    assert [name.rsplit("/", 1)[1] for name, _ in train.samples[:1] + val.samples[-1:]] == ["part-0.parquet#0",
                                                                                          "part-2.parquet#14"]


def test_validation_from_a_second_table_or_a_fraction(data, tmp_path):
    needs_pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(data["parquet"])
    is_val = np.array(table.column("split").to_pylist()) == "val"
    pq.write_table(table.filter(~is_val), tmp_path / "train.parquet")
    pq.write_table(table.filter(is_val), tmp_path / "val.parquet")
    train, val = discover(table=str(tmp_path / "train.parquet"), val_table=str(tmp_path / "val.parquet"))
    assert (len(train.samples), len(val.samples), val.classes) == (30, 15, ["blue", "green", "red"])
    train, val = discover(table=str(data["parquet"]), val_split=0.2, seed=3)
    assert (len(train.samples), len(val.samples)) == (36, 9)  # 3 of each class's 15
    assert not {name for name, _ in train.samples} & {name for name, _ in val.samples}
    assert discover(table=str(data["parquet"]), val_split=0.2, seed=3)[1].samples == val.samples


def weights(run: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(run / "model.onnx"))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("head")}


def finetune(data: dict[str, Path], out: Path, *source: object) -> tuple[int, str, str]:
    return cli("finetune", data["model"], "--node", TINY_NODE, *source, "--out", out, "--batch-size", 8, "--lr", 0.1,
               "--epochs", 3, "--no-report")


@pytest.fixture(scope="module")
def folder_run(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("folder") / "run"
    code, _, stderr = finetune(data, run, "--data", data["colours"])
    assert code == 0, stderr
    return run


@pytest.mark.parametrize("table, columns", [
    ("csv", ("--image-column", "file", "--label-column", "class")),
    ("parquet", ()),
])
def test_finetune_from_a_table_trains_the_folders_weights(data, folder_run, tmp_path, table, columns):
    if table == "parquet":
        needs_pyarrow()
    run = tmp_path / "run"
    code, stdout, stderr = finetune(data, run, "--table", data[table], "--split-column", "split", *columns)
    assert code == 0, stderr
    assert "data: 30 training and 15 validation images, 3 classes" in stderr
    got, want = weights(run), weights(folder_run)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    args = json.loads((run / "config.json").read_text())["data_args"]
    assert args["table"] == str(data[table]) and args["split_column"] == "split" and args["data"] is None


def test_a_run_from_a_table_resumes_to_the_uninterrupted_model(data, folder_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupt_cached_training(monkeypatch, 1)
    source = ("--table", data["csv"], "--image-column", "file", "--label-column", "class", "--split-column", "split")
    assert finetune(data, run, *source)[0] == 130
    monkeypatch.undo()
    code, _, stderr = finetune(data, run, *source, "--resume")
    assert code == 0, stderr
    assert "resuming" in stderr
    got, want = weights(run), weights(folder_run)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_the_cli_wants_a_folder_or_a_table(data, tmp_path):
    finetune = ["finetune", data["model"], "--out", tmp_path / "run"]
    assert fails_cleanly(finetune, tmp_path) == "ftonnx: error: give the images with --data FOLDER or --table FILE"
    assert "give --data or --table, not both" in fails_cleanly(
        [*finetune, "--data", data["colours"], "--table", data["csv"]], tmp_path)


@pytest.fixture
def bad(tmp_path: Path, data) -> Path:
    """A folder for bad tables, beside a copy of one image."""
    image = next((data["colours"] / "train" / "red").iterdir())
    (tmp_path / "a.png").write_bytes(image.read_bytes())
    return tmp_path


def write_csv(path: Path, header: str, *lines: str) -> str:
    path.write_text("\n".join([header, *lines]) + "\n")
    return str(path)


@pytest.mark.parametrize("lines, options, message", [
    (["image,label", "a.png,x", "a.png,y"], {}, "no validation images"),
    (["img,label", "a.png,x"], {"split_column": "split"}, "t.csv: no column image, split (it has img, label); name the "
                                                           "columns with --image-column"),
    (["image,label,split", "a.png,x,train", "a.png,y,holdout"], {"split_column": "split"},
     "t.csv:2: split is 'holdout'; use train, val (or validation), or test"),
    (["image,label,split", "a.png,x,train", "a.png,,val"], {"split_column": "split"}, "t.csv:2: no label in column"),
    (["image,label,split", "a.png,x,train", ",y,val"], {"split_column": "split"}, "t.csv:2: no image path"),
    (["image,label,split", "a.png,0,train", "a.png,2,val"], {"split_column": "split"},
     "t.csv:2: label 2: integer labels must number the classes 0..K-1"),
    (["image,label,split", "a.png,x,train", "a.png,y,test"], {"split_column": "split"},
     "no row has split = val"),
])
def test_bad_tables_fail_as_one_line(bad, lines, options, message):
    from ftonnx.pipeline import _datasets

    table = write_csv(bad / "t.csv", *lines)
    with pytest.raises(FtonnxError) as error:
        _datasets({"table": table, **options})
    assert message in str(error.value)


def test_tables_refuse_folder_options_and_two_validation_sources(bad):
    table = write_csv(bad / "t.csv", "image,label", "a.png,x", "a.png,y")
    with pytest.raises(FtonnxError, match="--val, --list with --table: a table names its images itself"):
        discover(table=table, val=str(bad), list_file=table)
    with pytest.raises(FtonnxError, match="give one source of validation images, not --split-column and --val-split"):
        discover(table=table, split_column="label", val_split=0.5)
    with pytest.raises(FtonnxError, match="nope.csv: no such table file"):
        discover(table=str(bad / "nope.csv"))
    with pytest.raises(FtonnxError, match="a table is a .parquet or .csv file"):
        discover(table=str(bad / "a.png"))


def test_a_parquet_column_of_another_type_and_missing_pyarrow(bad, monkeypatch):
    needs_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [1, 2], "label": ["x", "y"]}), bad / "ints.parquet")
    with pytest.raises(FtonnxError, match="column image is int64; it must hold paths .string. or encoded images"):
        discover(table=str(bad / "ints.parquet"))
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    with pytest.raises(FtonnxError, match=r"Parquet tables need pyarrow: pip install 'ftonnx\[table\]'"):
        discover(table=str(bad / "ints.parquet"))


def test_undecodable_bytes_are_skipped_when_decoded_or_refused_with_strict(bad):
    needs_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = (bad / "a.png").read_bytes()
    pq.write_table(pa.table({"image": pa.array([good, b"not an image", good, good], pa.binary()),
                             "label": ["x", "x", "y", "y"], "split": ["train", "train", "train", "val"]}),
                   bad / "b.parquet")
    train, _ = discover(table=str(bad / "b.parquet"), split_column="split")
    cache = ActivationCache.build(build_tiny_model(num_classes=2), train)
    assert cache.labels.tolist() == [0, 1]  # the second row is left out as it fails to decode
    with pytest.raises(FtonnxError, match=r"b.parquet#1: unreadable image \(cannot identify image file"):
        discover(table=str(bad / "b.parquet"), split_column="split", strict=True)
