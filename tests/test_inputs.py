"""Images and list files as users have them: every Pillow mode and bit depth decodes to the right pixels (16-bit
and 32-bit ones used to come out white), list-file labels must number the classes unless --labels names
them, and a path listed twice is used once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from ftonnx.data import discover, load_image
from ftonnx.errors import FtonnxError
from ftonnx.metadata import Preprocess

from helpers import build_tiny_model, cli, make_folder, write_colours, write_png16

SIDE = 16
RAW = Preprocess(size=(SIDE, SIDE), resize=SIDE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixels as they are
GREY16 = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 257).astype(np.uint16)  # 0 .. 65535
EIGHT = (GREY16 >> 8).astype(np.uint8)  # the 8-bit picture they hold


def decoded(path: Path) -> np.ndarray:
    """The decoded image as (H, W, 3) in 0-255."""
    return load_image(path, RAW).transpose(1, 2, 0)


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


@pytest.mark.parametrize("kind", ["png grey", "png grey+alpha", "png rgb", "png rgba", "tiff I;16", "tiff I;16B",
                                  "tiff I (32-bit int)", "tiff F (0-1)"])
def test_high_bit_depth_images_decode_to_their_8_bit_picture(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("image.png" if kind.startswith("png") else "image.tif")
    rgb = np.stack([GREY16, GREY16 // 2, GREY16 // 4], axis=2)
    if kind == "png grey":
        write_png16(path, GREY16)
    elif kind == "png grey+alpha":
        write_png16(path, np.stack([GREY16, np.full_like(GREY16, 65535)], axis=2))
    elif kind in ("png rgb", "png rgba"):
        alpha = np.full_like(GREY16, 65535)[..., None]
        write_png16(path, rgb if kind == "png rgb" else np.concatenate([rgb, alpha], axis=2))
    elif kind == "tiff I;16":
        Image.fromarray(GREY16).save(path)
    elif kind == "tiff I;16B":
        Image.frombytes("I;16B", (SIDE, SIDE), GREY16.astype(">u2").tobytes()).save(path)
    elif kind == "tiff I (32-bit int)":
        Image.fromarray(GREY16.astype(np.int32)).save(path)
    else:
        Image.fromarray((GREY16 / 65535).astype(np.float32)).save(path)
    expected = (rgb >> 8).astype(np.float32) if "rgb" in kind else as_rgb(EIGHT)
    got = decoded(path)
    assert np.abs(got - expected).max() <= 1, kind  # 16-bit white was 255 everywhere before
    assert discover_one(path) == []


def discover_one(path: Path) -> list:
    """What discovery skips in a two-class folder holding `path` (and plain images)."""
    root = path.parent / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(EIGHT).save(root / name / "plain.png")
    path.rename(root / "a" / path.name)
    train, _ = discover(str(root))
    (root / "a" / path.name).rename(path)
    return train.skipped


def test_pixels_of_no_known_range_are_skipped_with_the_reason(tmp_path: Path) -> None:
    floats, ints = tmp_path / "floats.tif", tmp_path / "ints.tif"
    Image.fromarray((GREY16 / 257).astype(np.float32)).save(floats)  # 0-255 floats: 0-1 or 0-255 is a guess
    Image.fromarray(GREY16.astype(np.int32) * 1000).save(ints)
    for path, reason in ((floats, "32-bit float pixels outside 0-1"), (ints, "32-bit integer pixels from 0 to")):
        skipped = discover_one(path)
        assert len(skipped) == 1 and reason in skipped[0][1], skipped
    write = tmp_path / "model.onnx"
    onnx.save(build_tiny_model(), str(write))
    code, _, stderr = cli("predict", write, floats)
    assert code == 2 and "cannot decode the image (32-bit float pixels outside 0-1" in stderr


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I", "F"])
def test_every_mode_decodes_like_its_rgb_conversion(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        path = tmp_path / "image.png"
        image.save(path, transparency=0)
    else:
        image = rgb.convert("L").convert(mode) if mode in ("I", "F") else rgb.convert(mode)
        if mode == "F":
            image = Image.fromarray(np.asarray(image, np.float32) / 255)
        path = tmp_path / ("image.tif" if mode in ("CMYK", "I", "F") else "image.png")
        image.save(path)
    with Image.open(path) as opened:
        reference = np.asarray(opened.convert("RGBA").convert("RGB") if mode.startswith("P") else
                               rgb.convert("L").convert("RGB") if mode in ("I", "F") else opened.convert("RGB"),
                               np.float32)
    if mode == "I":
        reference = np.floor(reference / 256)  # an I image is taken as 16-bit
    assert np.abs(decoded(path) - reference).max() <= 1


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "img", {"x": 6})


@pytest.mark.parametrize("labels, line, token", [([0, 1, 0, 7, 1, 0], 4, "7"), ([0, -1, 1, 0, 1, 0], 2, "-1"),
                                                 ([1, 2, 1, 2, 1, 2], 2, "2")])
def test_integer_labels_must_number_the_classes(images: Path, tmp_path: Path, labels: list, line: int,
                                                token: str) -> None:
    listed = write_list(tmp_path / "list.txt", [f"x/img{i}.png {label}" for i, label in enumerate(labels)])
    with pytest.raises(FtonnxError, match=rf"list.txt:{line}: label {token}: integer labels must number the "
                                          r"classes 0..K-1.*name the classes with --labels"):
        discover(str(images), list_file=str(listed))


def test_labels_name_the_classes_of_integer_labels(images: Path, tmp_path: Path) -> None:
    listed = write_list(tmp_path / "list.txt", [f"x/img{i}.png {i % 2 * 2}" for i in range(6)])  # 0 and 2
    train, _ = discover(str(images), list_file=str(listed), labels=["cat", "dog", "emu"])
    assert train.classes == ["cat", "dog", "emu"] and [y for _, y in train.samples] == [0, 2, 0, 2, 0, 2]
    with pytest.raises(FtonnxError, match=r"list.txt:2: label 2 is not one of the classes --labels names \(cat\)"):
        discover(str(images), list_file=str(listed), labels=["cat"])
    with pytest.raises(FtonnxError, match="--labels names the classes of a list file"):
        discover(str(images), labels=["cat", "dog"])


def test_a_path_listed_twice_is_used_once_and_said_so(images: Path, tmp_path: Path) -> None:
    lines = [f"x/img{i}.png {i % 2}" for i in range(6)] + ["x/img0.png 0", "./x/../x/img1.png 1", "x/img2.png 00"]
    listed = write_list(tmp_path / "list.txt", lines)
    for seed in range(5):
        train, val = discover(str(images), list_file=str(listed), val_split=0.5, seed=seed)
        assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
        assert len(train.samples) + len(val.samples) == 6
    assert [(Path(p).name, reason) for p, reason in train.skipped] == [
        ("img0.png", f"listed again at {listed}:7 (first at line 1); used once"),
        ("img1.png", f"listed again at {listed}:8 (first at line 2); used once"),
        ("img2.png", f"listed again at {listed}:9 (first at line 3); used once")]
    write_list(listed, lines + ["x/img3.png 0"])
    with pytest.raises(FtonnxError, match=r"list.txt:10: x/img3.png has label 0, but line 4 gave it label 1"):
        discover(str(images), list_file=str(listed))


def test_finetune_takes_labels_for_a_list_and_records_them(tmp_path: Path) -> None:
    data = write_colours(tmp_path / "colours", train=4, val=2)
    names = ["blue", "green", "red"]
    for split in ("train", "val"):
        write_list(tmp_path / f"{split}.txt", [f"{split}/{c}/{i}.png {names.index(c)}" for c in names
                                               for i in range(4 if split == "train" else 2)])
    onnx.save(build_tiny_model(), str(tmp_path / "tiny.onnx"))
    code, _, stderr = cli("finetune", tmp_path / "tiny.onnx", "--data", data, "--list", tmp_path / "train.txt",
                          "--val-list", tmp_path / "val.txt", "--labels", "azure,grass,fire", "--out",
                          tmp_path / "run", "--epochs", 1, "--batch-size", 4)
    assert code == 0, stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_args"]["labels"] == ["azure", "grass",
                                                                                                "fire"]
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    assert json.loads({p.key: p.value for p in model.metadata_props}["ftonnx.labels"]) == ["azure", "grass", "fire"]
