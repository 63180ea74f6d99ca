"""Load and save ONNX models with clear errors and atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ftonnx.errors import FtonnxError, first_line
from ftonnx.files import TEMP_PREFIX, disk_full
from ftonnx.graph.index import skeleton

# Protobuf cannot hold a message over 2 GiB; past this the weights go to an external data file.
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file (with its external data, if any), or raise FtonnxError saying why not."""
    path = Path(path)
    if not path.exists():
        raise FtonnxError(f"{path}: no such file")
    if path.is_dir():
        raise FtonnxError(f"{path}: is a folder, not an ONNX file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, onnx.checker.ValidationError, RuntimeError, ValueError, OSError,
            UnicodeDecodeError) as exc:
        raise FtonnxError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    except Exception as exc:  # protobuf raises a variety of errors on garbage input
        raise FtonnxError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.graph.output:
        raise FtonnxError(f"{path}: not an ONNX model (no graph nodes or outputs); truncated?")
    return model


def check_model(model: onnx.ModelProto, what: str) -> None:
    """onnx's full check (graph, node schemas, strict shape inference) of a model ftonnx built, on its
    `skeleton`: its weights came from a model `ftonnx.graph.validate` checked or from numpy, and serialising
    them again for every check costs more than the check; the first complaint becomes an FtonnxError about
    `what`."""
    try:
        onnx.checker.check_model(skeleton(model), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError and others, depending on the check
        raise FtonnxError(f"{what} fails onnx's checker: {first_line(exc)}") from None


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before long work, when `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FtonnxError(f"{path}: folder {parent} does not exist")
    if path.is_dir():
        raise FtonnxError(f"{path}: is a folder; give a file name")
    return path


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` to `path` atomically: a temporary file in the same folder, then a rename.

    Models too large for one protobuf keep their weights in `<name>.data` beside the file. A full disk is
    an FtonnxError saying how much was needed, and leaves `path` as it was.
    """
    path = check_output_path(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        if model.ByteSize() > _EXTERNAL_DATA_THRESHOLD:
            data_name = path.name + ".data"
            onnx.save_model(model, str(tmp), save_as_external_data=True, location=data_name)
            os.replace(tmp_dir / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise disk_full(exc, path, model.ByteSize()) or exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path
