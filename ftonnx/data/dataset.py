"""Image classification data sets: find the samples (ImageFolder, MNN list files, or a table: see
`ftonnx.data.table`), check them, split off a validation set, and compare a data set's classes with a model's
labels.

Everything is deterministic: class order (sorted folder names; integer labels numerically) and the
validation split (seeded, stratified per class).
"""

from __future__ import annotations

import dataclasses
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from PIL import Image

from ftonnx.data.images import DECODE_ERRORS, RANGED_MODES, eight_bit
from ftonnx.errors import FtonnxError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ImageBytes(Protocol):
    """Encoded images by sample name (a table's image column)."""

    def __getitem__(self, name: str) -> bytes: ...


@dataclass(frozen=True)
class Dataset:
    """Samples as (name, class index), the class names in index order, and what was skipped. A sample's name
    is its absolute path, or, when `images` holds the encoded images (a table of image bytes), its key there."""

    samples: list[tuple[str, int]]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images: ImageBytes | None = None

    def open(self, name: str) -> str | BinaryIO:
        """What decoding reads for sample `name`: its file, or its bytes as a file-like object."""
        return name if self.images is None else io.BytesIO(self.images[name])


def discover(data: str | None = None, *, val: str | None = None, val_split: float | None = None,
             list_file: str | None = None, val_list: str | None = None, seed: int = 0, strict: bool = False,
             labels: list[str] | None = None, table: str | None = None, val_table: str | None = None,
             image_column: str = "image", label_column: str = "label",
             split_column: str | None = None) -> tuple[Dataset, Dataset | None]:
    """The training set and the validation set (None when there is none) that the arguments describe.

    With `list_file`, DATA is the image root of `relative/path label` lines (`val_list` likewise,
    rooted at `val` or DATA); integer labels must number the classes 0..K-1, unless `labels` names
    the classes (index order), and a path listed twice is used once. With `table`, the rows of a table
    (`ftonnx.data.table`), and no DATA. Otherwise DATA is one folder per class, or holds train/ and val/;
    `val` is a separate folder per class; `val_split` holds out that fraction of each class."""
    if val_split is not None and not 0 < val_split < 1:
        raise FtonnxError(f"--val-split must lie between 0 and 1, not {val_split}")
    if table is not None or val_table is not None or split_column is not None:
        from ftonnx.data.table import TableArgs, discover_table

        _refuse_beside_table(data=data, val=val, list_file=list_file, val_list=val_list)
        args = TableArgs(table, val_table, image_column, label_column, split_column)
        return discover_table(args, val_split=val_split, seed=seed, strict=strict, labels=labels)
    if data is None:
        raise FtonnxError("no data: pass --data FOLDER (an ImageFolder, or the image root of --list) or --table FILE")
    root = Path(data).expanduser().absolute()
    if not root.is_dir():
        raise FtonnxError(f"{data}: no such folder")
    if val_list is not None and list_file is None:
        raise FtonnxError("a validation list needs a training list too: pass --list")
    if labels is not None and list_file is None:
        raise FtonnxError("--labels names the classes of a list file's integer labels: pass --list")
    if list_file is not None:
        named = labels is not None
        train, classes = _listed(list_file, root, labels, named=named, strict=strict)
        val_set = None
        if val_list is not None:
            val_root = Path(val).expanduser().absolute() if val else root
            val_set = _listed(val_list, val_root, classes, named=named, strict=strict, train_list=list_file)[0]
    else:
        if val is None and (root / "train").is_dir() and (root / "val").is_dir():
            if val_split is not None:
                raise FtonnxError(f"{data} holds train/ and val/ already; drop --val-split")
            root, val = root / "train", str(root / "val")
        classes = _class_folders(root)
        train = _folder(root, classes, strict)
        val_set = _folder(Path(val).expanduser().absolute(), classes, strict, validation=True) if val else None
    _require_classes(train, data)
    if val_split is not None:
        if val_set is not None:
            raise FtonnxError("give either a validation set or --val-split, not both")
        train, val_set = _split(train, val_split, seed)
    return train, val_set


def _refuse_beside_table(**given: Any) -> None:
    """A table names its images itself: the folder and list options do not apply."""
    wrong = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
    if wrong:
        raise FtonnxError(f"{', '.join(wrong).replace('--list-file', '--list')} with --table: a table names its "
                          "images itself (paths relative to its folder, or bytes); drop "
                          f"{'them' if len(wrong) > 1 else 'it'}")


def _class_folders(root: Path) -> list[str]:
    """Sorted names of the class folders under `root`."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FtonnxError(f"{root}: no class folders; expected one folder of images per class")
    return classes


def _folder(root: Path, classes: list[str], strict: bool, validation: bool = False) -> Dataset:
    """The images of an ImageFolder `root`, labelled by `classes` (a validation set's come from training)."""
    if not root.is_dir():
        raise FtonnxError(f"{root}: no such folder")
    found = _class_folders(root)
    extra = [c for c in found if c not in classes]
    if validation and extra:
        raise FtonnxError(f"{root}: class folder(s) {', '.join(extra[:5])} are not in the training set")
    paths, labels = [], []
    for name in found:
        files = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        if not files:
            raise FtonnxError(f"{root / name}: empty class folder (no image files); remove it or add images")
        paths += [str(f) for f in files]
        labels += [classes.index(name)] * len(files)
    dataset = _checked(paths, labels, classes, strict)
    present = {label for _, label in dataset.samples}
    for name in found:
        if classes.index(name) not in present:
            raise FtonnxError(f"{root / name}: no readable images in this class folder")
    return dataset


Line = tuple[int, str, str]  # (line number, absolute path, label token)


def _listed(list_file: str, root: Path, classes: list[str] | None, *, named: bool, strict: bool,
            train_list: str | None = None) -> tuple[Dataset, list[str]]:
    """The Dataset of a list file and its classes: `classes` when given (the training list's, or --labels,
    which are `named`: integer labels index them), else the list's own labels; a duplicate line is
    reported among the skipped."""
    lines, duplicates = _read_list(list_file, root)
    if classes is None:
        classes = _list_classes(lines, list_file)
    indices = _indices(lines, classes, list_file, named=named, train_list=train_list)
    dataset = _checked([path for _, path, _ in lines], indices, classes, strict)
    return dataclasses.replace(dataset, skipped=duplicates + dataset.skipped), classes


def _read_list(list_file: str, root: Path) -> tuple[list[Line], list[tuple[str, str]]]:
    """The `relative/path label` lines of a list file (paths joined to `root`), each path once, and the
    duplicates left out (path, reason); the same path with two labels is an error."""
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise FtonnxError(f"{list_file}: no such list file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FtonnxError(f"{list_file}: not a UTF-8 text file of 'relative/path label' lines") from None
    lines: list[Line] = []
    first: dict[str, Line] = {}
    duplicates = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise FtonnxError(f"{list_file}:{number}: expected 'relative/path label', got {line!r}")
        entry = (number, os.path.normpath(root / parts[0].strip()), parts[1])
        seen = first.setdefault(os.path.realpath(entry[1]), entry)
        if seen is entry:
            lines.append(entry)
        elif _same_label(seen[2], entry[2]):
            duplicates.append((entry[1], f"listed again at {list_file}:{number} (first at line {seen[0]}); used once"))
        else:
            raise FtonnxError(f"{list_file}:{number}: {parts[0].strip()} has label {entry[2]}, but line {seen[0]} "
                              f"gave it label {seen[2]}; an image has one class")
    if not lines:
        raise FtonnxError(f"{list_file}: no 'relative/path label' lines")
    return lines, duplicates


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _same_label(a: str, b: str) -> bool:
    return a == b or (_is_int(a) and _is_int(b) and int(a) == int(b))


def _list_classes(lines: list[Line], list_file: str) -> list[str]:
    """Class names in index order: integer labels must be 0..K-1 (each present), names are sorted."""
    tokens = [token for _, _, token in lines]
    if not all(_is_int(t) for t in tokens):
        return sorted(set(tokens))
    values = sorted({int(t) for t in tokens})
    count = len(values)
    if values != list(range(count)):
        number, _, token = next(line for line in lines if not 0 <= int(line[2]) < count)
        occurring = ", ".join(map(str, values[:8])) + (", ..." if count > 8 else "")
        raise FtonnxError(f"{list_file}:{number}: label {token}: integer labels must number the classes 0..K-1, "
                          f"but these occur: {occurring}; fix the label, or name the classes with --labels")
    return [str(v) for v in values]


def _indices(lines: list[Line], classes: list[str], source: str, *, named: bool, train_list: str | None) -> list[int]:
    """Class indices of the lines' label tokens: with `named` classes (--labels) an integer is an index into
    them, integer classes compare by value, names must be one of the classes; else the error names the line."""
    numeric = all(_is_int(c) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    result = []
    for number, _, token in lines:
        if named and _is_int(token) and token not in index:
            found = int(token) if 0 <= int(token) < len(classes) else None
        else:
            found = index.get(str(int(token)) if numeric and _is_int(token) else token)
        if found is None:
            where = f"the classes of {train_list}" if train_list else "the classes --labels names"
            raise FtonnxError(f"{source}:{number}: label {token} is not one of {where} "
                              f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
        result.append(found)
    return result


def _probe(source: str | BinaryIO) -> str | None:
    """Why `source` (a file or encoded bytes) cannot be an image (from its header; cheap), or None when it looks
    fine. Images of 32-bit pixels are decoded, to tell whether their values can be scaled to 8 bits."""
    try:
        with Image.open(source) as img:
            mode = img.mode
            img.verify()
        if mode in RANGED_MODES:
            if not isinstance(source, str):
                source.seek(0)
            with Image.open(source) as img:
                eight_bit(img)
    except FileNotFoundError:
        return "no such file"
    except DECODE_ERRORS as exc:
        return first_line(exc)
    return None


def _checked(paths: list[str], labels: list[int], classes: list[str], strict: bool,
             images: ImageBytes | None = None) -> Dataset:
    """A Dataset of the readable images (files, or the `images` of these names); the others are skipped, or an
    error when `strict`."""
    opened = Dataset([], [], images=images).open
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        reasons = list(pool.map(lambda path: _probe(opened(path)), paths))
    samples, skipped = [], []
    for path, label, reason in zip(paths, labels, reasons):
        if reason is None:
            samples.append((path, label))
        elif strict:
            raise FtonnxError(f"{path}: unreadable image ({reason}); fix or remove it, or drop --strict")
        else:
            skipped.append((path, reason))
    return Dataset(samples, list(classes), skipped, images)


def _require_classes(dataset: Dataset, data: str) -> None:
    """A classifier needs two classes and an image in each."""
    if len(dataset.classes) < 2:
        raise FtonnxError(f"{data}: only one class ({', '.join(dataset.classes)}); a classifier needs at least two")
    if not dataset.samples:
        raise FtonnxError(f"{data}: no readable images")


def _split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `fraction` of each class, chosen by `seed` (at least one image per class on each side)."""
    train, val = [], []
    for index, name in enumerate(dataset.classes):
        members = sorted(s for s in dataset.samples if s[1] == index)
        if len(members) < 2:
            raise FtonnxError(f"class {name!r} has {len(members)} image(s); --val-split needs at least 2 per class")
        order = np.random.default_rng([seed, index]).permutation(len(members))
        n_val = min(max(1, round(len(members) * fraction)), len(members) - 1)
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return (dataclasses.replace(dataset, samples=train),
            dataclasses.replace(dataset, samples=val, skipped=[]))


def image_files(paths: list[str]) -> list[str]:
    """The image files `paths` name: files as given, folders walked for image files (sorted by path)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(path).parts))
        else:
            found.append(str(path))
    if not found:
        raise FtonnxError(f"no image files in {', '.join(paths)} ({', '.join(IMAGE_EXTENSIONS)})")
    return found


def check_classes(labels: list[str], classes: list[str], *, hint: str = "") -> None:
    """Raise FtonnxError saying how a model's labels and a data set's classes differ, if they do;
    `hint` (e.g. what to do instead) ends the message."""
    labels, classes = list(labels), list(classes)
    if labels != classes:
        raise FtonnxError(_class_mismatch(labels, classes) + (f"; {hint}" if hint else ""))


def _class_mismatch(labels: list[str], classes: list[str]) -> str:
    """Say how the model's labels and the data set's classes differ."""
    only_model = [c for c in labels if c not in classes]
    only_data = [c for c in classes if c not in labels]
    if not only_model and not only_data:
        return (f"the data set's classes are the model's labels in another order (model: {', '.join(labels[:10])}; "
                f"data: {', '.join(classes[:10])})")
    parts = []
    if only_model:
        parts.append(f"only the model has {', '.join(only_model[:10])}" + (" ..." if len(only_model) > 10 else ""))
    if only_data:
        parts.append(f"only the data has {', '.join(only_data[:10])}" + (" ..." if len(only_data) > 10 else ""))
    return f"the data set's classes differ from the model's labels: {'; '.join(parts)}"
