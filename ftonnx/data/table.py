"""Tables of images: one row per image, its image as a path or as encoded bytes, and its label.

A table is a Parquet or CSV file, or a folder of them (read in name order, rows in file order). The image
column holds paths, relative to the table's folder, or (Parquet only: a binary column) the encoded image
bytes; bytes decode exactly as the same file would (`ftonnx.data.images` reads either). A Parquet table of
bytes may also be a URI that pyarrow opens (s3://, gs://, hdfs://, file://): on a Ray cluster the workers read
it and the driver reads only the labels.

Validation images come from one of: a split column (`train`, `val` or `validation`; `test` rows are left
out), a second table (`val_table`, same columns), or `val_split` (a seeded fraction of each class, as for
folders). Labels follow list files' rules: names are sorted, integers must number the classes 0..K-1 unless
`labels` names them. Parquet needs pyarrow (`pip install 'ftonnx[table]'`); CSV needs nothing more.

Paths are checked when the table is read, as for folders; bytes are checked when they are decoded (an image
that does not decode is skipped then and reported), or up front with `strict`, which reads them all.
"""

from __future__ import annotations

import csv
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftonnx.data.dataset import Dataset, Line, _checked, _indices, _list_classes, _require_classes, _split
from ftonnx.errors import FtonnxError

INSTALL = "pip install 'ftonnx[table]'"
FORMATS = (".parquet", ".csv")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": None}


@dataclass(frozen=True)
class TableArgs:
    """Which table(s) and which of their columns hold the image, the label and the split."""

    table: str | None
    val_table: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    split_column: str | None = None


@dataclass
class _Rows:
    """What was read of a table: sample names (paths, or FILE#ROW keys of bytes), labels, splits."""

    names: list[str]
    tokens: list[str]
    splits: list[str | None]
    images: "TableImages | None" = None
    is_bytes: bool = False


def discover_table(args: TableArgs, *, val_split: float | None = None, seed: int = 0, strict: bool = False,
                   labels: list[str] | None = None) -> tuple[Dataset, Dataset | None]:
    """The training and validation sets (None without a validation source) of the table(s) `args` name."""
    if args.table is None:
        raise FtonnxError("--val-table and --split-column need --table")
    given = [name for name, on in (("--split-column", args.split_column), ("--val-table", args.val_table),
                                   ("--val-split", val_split is not None)) if on]
    if len(given) > 1:
        raise FtonnxError(f"give one source of validation images, not {' and '.join(given)}")
    rows = _read(args.table, args)
    lines = [(row + 1, name, token) for row, (name, token) in enumerate(zip(rows.names, rows.tokens))]
    classes = list(labels) if labels is not None else _list_classes(lines, args.table)
    named = labels is not None
    if args.split_column is not None:
        parts = _by_split(lines, rows.splits, args)
        train = _dataset(parts["train"], classes, args.table, rows.images, strict, named=named)
        val = _dataset(parts["val"], classes, args.table, rows.images, strict, named=named, train_table=args.table)
    else:
        train, val = _dataset(lines, classes, args.table, rows.images, strict, named=named), None
        if args.val_table is not None:
            vrows = _read(args.val_table, args)
            vlines = [(row + 1, name, token) for row, (name, token) in enumerate(zip(vrows.names, vrows.tokens))]
            val = _dataset(vlines, classes, args.val_table, vrows.images, strict, named=named, train_table=args.table)
    _require_classes(train, args.table)
    if val_split is not None:
        train, val = _split(train, val_split, seed)
    return train, val


def _dataset(lines: list[Line], classes: list[str], source: str, images: "TableImages | None", strict: bool, *,
             named: bool, train_table: str | None = None) -> Dataset:
    """The Dataset of some rows: paths probed as files are; bytes probed only when `strict`."""
    indices = _indices(lines, classes, source, named=named, train_list=train_table)
    names = [name for _, name, _ in lines]
    if images is None or strict:
        return _checked(names, indices, classes, strict, images)
    return Dataset(list(zip(names, indices)), list(classes), [], images)


def _by_split(lines: list[Line], splits: list[str | None], args: TableArgs) -> dict[str, list[Line]]:
    """The rows of each split by the split column's values; an unknown value is an error naming its row."""
    parts: dict[str, list[Line]] = {"train": [], "val": []}
    for line, value in zip(lines, splits):
        key = str(value).strip().lower() if value is not None else ""
        if key not in SPLITS:
            raise FtonnxError(f"{args.table}:{line[0]}: {args.split_column} is {value!r}; use train, val (or "
                              "validation), or test for rows to leave out")
        if SPLITS[key] is not None:
            parts[SPLITS[key]].append(line)
    if not parts["val"]:
        raise FtonnxError(f"{args.table}: no row has {args.split_column} = val; mark some rows val, or use "
                          "--val-split F instead of --split-column")
    return parts


def table_files(table: str) -> tuple[list[str], str]:
    """The files of `table` (a file, a folder of one format, or a URI of Parquet) in read order, and its format."""
    if "://" in table:
        return _remote_files(table), ".parquet"
    path = Path(table).expanduser().absolute()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS
                       and not p.name.startswith("."))
        kinds = {p.suffix.lower() for p in files}
        if len(kinds) != 1:
            raise FtonnxError(f"{table}: a table folder holds .parquet or .csv files, one kind only; found "
                              f"{', '.join(sorted(kinds)) or 'neither'}")
        return [str(p) for p in files], kinds.pop()
    if not path.is_file():
        raise FtonnxError(f"{table}: no such table file")
    if path.suffix.lower() not in FORMATS:
        raise FtonnxError(f"{table}: a table is a .parquet or .csv file (or a folder of them)")
    return [str(path)], path.suffix.lower()


def _remote_files(uri: str) -> list[str]:
    """The Parquet files of a table URI (one file or a folder), as URIs."""
    fs, path = _filesystem(uri)
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            found = fs.get_file_info(pafs.FileSelector(path))
            paths = sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
        elif info.type == pafs.FileType.File:
            paths = [path]
        else:
            raise FtonnxError(f"{uri}: no such table")
    except OSError as exc:
        raise FtonnxError(f"{uri}: cannot list it ({exc})") from None
    if not paths:
        raise FtonnxError(f"{uri}: no .parquet files")
    scheme = uri[:uri.index("://") + 3]
    return [scheme + (p if scheme != "file://" or p.startswith("/") else "/" + p) for p in paths]


def _filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for a URI (or a local path) and the path within it."""
    pafs = _pyarrow("fs")
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise FtonnxError(f"{uri}: pyarrow cannot open it ({exc})") from None


def _pyarrow(module: str) -> Any:
    """pyarrow.`module`, or the one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(f"pyarrow.{module}")
    except ImportError:
        raise FtonnxError(f"Parquet tables need pyarrow: {INSTALL}") from None


def _read(table: str, args: TableArgs) -> _Rows:
    """Names, label tokens and split values of every row of `table`, in order (image bytes are not read)."""
    files, kind = table_files(table)
    rows = _Rows([], [], [])
    for file in files:
        got = _read_parquet(file, args) if kind == ".parquet" else _read_csv(file, args)
        if rows.names and got.is_bytes != rows.is_bytes:
            raise FtonnxError(f"{file}: column {args.image_column} holds {'bytes' if got.is_bytes else 'paths'}, "
                              "unlike the table's first file; one table holds one kind")
        rows.names += got.names
        rows.tokens += got.tokens
        rows.splits += got.splits
        rows.is_bytes = got.is_bytes
    if not rows.names:
        raise FtonnxError(f"{table}: no rows")
    rows.images = TableImages(files, args.image_column) if rows.is_bytes else None
    return rows


def _read_csv(file: str, args: TableArgs) -> _Rows:
    """A CSV table's rows: its image column holds paths."""
    try:
        with open(file, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            _require_columns(file, reader.fieldnames or [], args)
            records = list(reader)
    except UnicodeDecodeError:
        raise FtonnxError(f"{file}: not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise FtonnxError(f"{file}: not a CSV file ({exc})") from None
    column = [r[args.image_column] or None for r in records]
    labels = [r[args.label_column] or None for r in records]
    splits = [r[args.split_column] for r in records] if args.split_column else [None] * len(records)
    return _Rows(_paths(file, column, args), _tokens(file, labels, args), splits)


def _read_parquet(file: str, args: TableArgs) -> _Rows:
    """A Parquet table's rows: a string image column holds paths, a binary one bytes (left unread here)."""
    pq, pa, types = _pyarrow("parquet"), _pyarrow("lib"), _pyarrow("types")
    fs, path = _filesystem(file)
    try:
        schema = pq.read_schema(path, filesystem=fs)
        _require_columns(file, schema.names, args)
        kind = schema.field(args.image_column).type
        is_bytes = types.is_binary(kind) or types.is_large_binary(kind)
        if not (is_bytes or types.is_string(kind) or types.is_large_string(kind)):
            raise FtonnxError(f"{file}: column {args.image_column} is {kind}; it must hold paths (string) or "
                              "encoded images (binary)")
        wanted = [c for c in (None if is_bytes else args.image_column, args.label_column, args.split_column) if c]
        data = pq.read_table(path, columns=wanted, filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        raise FtonnxError(f"{file}: cannot read it as Parquet ({exc})") from None
    labels = data.column(args.label_column).to_pylist()
    splits = data.column(args.split_column).to_pylist() if args.split_column else [None] * data.num_rows
    if is_bytes:
        names = [f"{file}#{row}" for row in range(data.num_rows)]
        return _Rows(names, _tokens(file, labels, args), splits, is_bytes=True)
    return _Rows(_paths(file, data.column(args.image_column).to_pylist(), args), _tokens(file, labels, args), splits)


def _require_columns(file: str, names: list[str], args: TableArgs) -> None:
    wanted = [c for c in (args.image_column, args.label_column, args.split_column) if c]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise FtonnxError(f"{file}: no column {', '.join(missing)} (it has {', '.join(names[:12])}); name the "
                          "columns with --image-column, --label-column, --split-column")


def _paths(file: str, values: list[Any], args: TableArgs) -> list[str]:
    """Absolute image paths: relative ones are relative to the table file's folder."""
    if "://" in file:
        raise FtonnxError(f"{file}: a table on object storage must hold the images' bytes, not paths "
                          f"(column {args.image_column} holds strings)")
    folder = Path(file).parent
    missing = next((row for row, v in enumerate(values) if not v), None)
    if missing is not None:
        raise FtonnxError(f"{file}:{missing + 1}: no image path in column {args.image_column}")
    return [os.path.normpath(folder / str(v).strip()) for v in values]


def _tokens(file: str, values: list[Any], args: TableArgs) -> list[str]:
    """Label tokens as list files have them: integers and names as text."""
    missing = next((row for row, v in enumerate(values) if v is None or str(v).strip() == ""), None)
    if missing is not None:
        raise FtonnxError(f"{file}:{missing + 1}: no label in column {args.label_column}")
    if any(isinstance(v, float) for v in values):
        if not all(float(v).is_integer() for v in values):
            raise FtonnxError(f"{file}: column {args.label_column} holds fractions; labels are names or integers")
        values = [int(v) for v in values]
    return [str(v).strip() for v in values]


class TableImages:
    """The encoded images of Parquet tables' binary column, by sample name (FILE#ROW). Read on first use, the
    whole column at once (an image is read many times, in random order), and held in memory."""

    def __init__(self, files: list[str], column: str) -> None:
        self.files, self.column = list(files), column
        self._columns: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> bytes:
        file, row = name.rsplit("#", 1)
        with self._lock:
            if file not in self._columns:
                self._columns[file] = self._load(file)
        return self._columns[file][int(row)].as_py()

    def row_counts(self) -> list[int]:
        """The rows of each file, from its Parquet footer (nothing else is read)."""
        pq, pa = _pyarrow("parquet"), _pyarrow("lib")
        counts = []
        for file in self.files:
            fs, path = _filesystem(file)
            try:
                with fs.open_input_file(path) as stream:
                    counts.append(pq.ParquetFile(stream).metadata.num_rows)
            except (OSError, pa.ArrowException) as exc:
                raise FtonnxError(f"{file}: cannot read it as Parquet ({exc})") from None
        return counts

    def _load(self, file: str) -> Any:
        pq, pa = _pyarrow("parquet"), _pyarrow("lib")
        fs, path = _filesystem(file)
        try:
            return pq.read_table(path, columns=[self.column], filesystem=fs).column(self.column)
        except (OSError, pa.ArrowException) as exc:
            raise FtonnxError(f"{file}: cannot read its images ({exc})") from None
