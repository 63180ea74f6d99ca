"""Data sets, preprocessing, augmentation and the threaded loader (ftonnx.train.data / images)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftonnx.data import Dataset, Loader, discover, load_image
from ftonnx.data.augment import MAGNITUDE, OPERATIONS
from ftonnx.data.images import decode
from ftonnx.errors import FtonnxError
from ftonnx.metadata import Preprocess

from helpers import make_folder, write_image

PRE = Preprocess(size=(16, 16), resize=20)






def test_imagefolder_sorted_classes_and_absolute_paths(tmp_path):
    root = make_folder(tmp_path / "d", {"zebra": 2, "ant": 3, "Bee": 1})
    (root / "ant" / "notes.txt").write_text("not an image")
    train, val = discover(str(root))
    assert val is None
    assert train.classes == ["Bee", "ant", "zebra"]
    assert [label for _, label in train.samples] == [0, 1, 1, 1, 2, 2]
    assert all(Path(p).is_absolute() and Path(p).parent.name == train.classes[label] for p, label in train.samples)
    assert train.skipped == []


def test_train_val_layout_uses_training_classes(tmp_path):
    make_folder(tmp_path / "d" / "train", {"a": 2, "b": 2, "c": 2})
    make_folder(tmp_path / "d" / "val", {"a": 1, "c": 1})
    train, val = discover(str(tmp_path / "d"))
    assert val.classes == train.classes == ["a", "b", "c"]
    assert [label for _, label in val.samples] == [0, 2]
    make_folder(tmp_path / "d" / "val", {"d": 1})
    with pytest.raises(FtonnxError, match="d are not in the training set"):
        discover(str(tmp_path / "d"))


def test_corrupt_image_skipped_or_strict_error(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    bad = root / "b" / "broken.jpg"
    bad.write_bytes(b"this is no jpeg")
    train, _ = discover(str(root))
    assert [p for p, _ in train.skipped] == [str(bad)] and train.skipped[0][1]
    assert str(bad) not in [p for p, _ in train.samples] and len(train.samples) == 4
    with pytest.raises(FtonnxError, match="broken.jpg"):
        discover(str(root), strict=True)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("empty_class", "empty class folder"),
    ("one_class", "only one class"),
    ("all_corrupt", "no readable images"),
])
def test_bad_folders_are_clear_errors(tmp_path, case, message):
    root = make_folder(tmp_path / "d", {"a": 2} if case == "one_class" else {"a": 2, "b": 2})
    if case == "empty_class":
        (root / "c").mkdir()
    if case == "all_corrupt":
        (root / "c").mkdir()
        (root / "c" / "x.png").write_bytes(b"garbage")
    with pytest.raises(FtonnxError, match=message):
        discover(str(tmp_path / "nowhere") if case == "missing" else str(root))


def test_list_files_integer_labels_numeric_and_names_sorted(tmp_path):
    root = make_folder(tmp_path / "img", {"x": 3})
    (tmp_path / "int.txt").write_text("x/img0.png 1\n\nx/img1.png 0\nx/img2.png 01\n")
    train, _ = discover(str(root), list_file=str(tmp_path / "int.txt"))
    assert train.classes == ["0", "1"]
    assert [label for _, label in train.samples] == [1, 0, 1]
    (tmp_path / "names.txt").write_text("x/img0.png dog\nx/img1.png cat\n")
    (tmp_path / "val.txt").write_text("x/img2.png cat\n")
    train, val = discover(str(root), list_file=str(tmp_path / "names.txt"), val_list=str(tmp_path / "val.txt"))
    assert train.classes == val.classes == ["cat", "dog"]
    assert train.samples == [(str(root / "x" / "img0.png"), 1), (str(root / "x" / "img1.png"), 0)]
    assert val.samples == [(str(root / "x" / "img2.png"), 0)]


def test_list_file_errors(tmp_path):
    root = make_folder(tmp_path / "img", {"x": 3})
    (tmp_path / "train.txt").write_text("x/img0.png 0\nx/img1.png 1\n")
    (tmp_path / "val.txt").write_text("x/img2.png 7\n")
    with pytest.raises(FtonnxError, match="val.txt:1: label 7 is not one of the classes of .*train.txt \\(0, 1\\)"):
        discover(str(root), list_file=str(tmp_path / "train.txt"), val_list=str(tmp_path / "val.txt"))
    (tmp_path / "bad.txt").write_text("x/img0.png 0\nx/img1.png\n")
    with pytest.raises(FtonnxError, match="bad.txt:2: expected"):
        discover(str(root), list_file=str(tmp_path / "bad.txt"))
    (tmp_path / "missing.txt").write_text("x/img0.png 0\nx/gone.png 1\n")
    train, _ = discover(str(root), list_file=str(tmp_path / "missing.txt"))
    assert train.skipped == [(str(root / "x" / "gone.png"), "no such file")]


def test_val_split_is_seeded_stratified_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 10, "b": 5})
    everything = set(discover(str(root))[0].samples)
    train, val = discover(str(root), val_split=0.2, seed=3)
    assert (train, val) == discover(str(root), val_split=0.2, seed=3)
    assert set(train.samples) | set(val.samples) == everything and not set(train.samples) & set(val.samples)
    assert sorted(label for _, label in val.samples) == [0, 0, 1]
    other = [discover(str(root), val_split=0.2, seed=s)[1].samples for s in range(4, 8)]
    assert any(o != val.samples for o in other)
    with pytest.raises(FtonnxError, match="between 0 and 1"):
        discover(str(root), val_split=1.5)


def test_preprocess_numerics_by_hand(tmp_path):
    path = write_image(tmp_path / "x.png", (24, 20), seed=1)
    pixels = np.asarray(Image.open(path), np.float32)
    pre = Preprocess(size=(16, 12), resize=15, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    crop = pixels[2:18, 6:18]  # 20x24 already covers the 20x15 target: no resampling, center crop 16x12
    want = (crop - [10.0, 20.0, 30.0]) / [2.0, 4.0, 8.0]
    np.testing.assert_array_equal(load_image(path, pre), want.transpose(2, 0, 1).astype(np.float32))
    bgr = Preprocess(size=(16, 12), resize=15, mean=(30.0, 20.0, 10.0), std=(8.0, 4.0, 2.0),
                     channel_order="BGR", layout="NHWC")
    np.testing.assert_array_equal(load_image(path, bgr), want[..., ::-1].astype(np.float32))


def test_resize_then_center_crop_matches_pillow(tmp_path):
    path = write_image(tmp_path / "x.png", (61, 45), seed=2)
    img = Image.open(path).convert("RGB")
    resized = img.resize((27, 20), Image.Resampling.BILINEAR)  # shorter side 45 -> 20, 61 -> int(27.1)
    want = np.asarray(resized, np.float32)[2:18, 6:22]
    got = load_image(path, PRE).transpose(1, 2, 0) * 128.0 + 127.0
    np.testing.assert_allclose(got, want, atol=1.01)
    assert np.abs(got - want).mean() < 0.05


def test_draft_mode_close_to_full_decode(tmp_path):
    yy, xx = np.mgrid[0:960, 0:1280]
    smooth = np.stack([xx * 255 // 1279, yy * 255 // 959, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    pre = Preprocess(size=(64, 64), resize=73)
    fast, full = load_image(path, pre, draft=True), load_image(path, pre, draft=False)
    assert fast.shape == full.shape == (3, 64, 64)
    assert not np.array_equal(fast, full)  # the JPEG was decoded at reduced scale ...
    assert np.abs(fast - full).mean() * 128 < 1.5  # ... and is within a gray level or so on average


def test_augmentation_reproducible_and_random(tmp_path):
    path = write_image(tmp_path / "x.jpg", (80, 60), seed=3)
    first = load_image(path, PRE, augment="light", rng=np.random.default_rng([0, 1, 2]))
    again = load_image(path, PRE, augment="light", rng=np.random.default_rng([0, 1, 2]))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (3, 16, 16)
    others = [load_image(path, PRE, augment="light", rng=np.random.default_rng([0, 1, k])) for k in range(3, 8)]
    assert all(not np.array_equal(first, o) for o in others)
    flips = [decode(path, PRE, augment="light", rng=np.random.default_rng(k)) for k in range(40)]
    assert len({img.tobytes() for img in flips}) == 40


def test_strong_augmentation_adds_colour_and_randaugment_to_the_light_crop(tmp_path):
    path = write_image(tmp_path / "x.png", (80, 60), seed=4)
    pre = Preprocess(size=(32, 32), resize=36)
    light = [decode(path, pre, augment="light", rng=np.random.default_rng([5, 0, k])) for k in range(6)]
    strong = [decode(path, pre, augment="strong", rng=np.random.default_rng([5, 0, k])) for k in range(6)]
    again = [decode(path, pre, augment="strong", rng=np.random.default_rng([5, 0, k])) for k in range(6)]
    assert [s.tobytes() for s in strong] == [a.tobytes() for a in again]
    for lo, hi in zip(light, strong):  # the same crop and flip (drawn first), then different pixels
        assert hi.size == lo.size == (32, 32) and hi.mode == "RGB"
        assert np.abs(np.asarray(hi, np.float32) - np.asarray(lo, np.float32)).mean() > 2
    image = light[0]
    for name in OPERATIONS:  # every operation runs in both directions and keeps size and mode, grayscale too
        for im in (image, image.convert("L")):
            for m in (MAGNITUDE, -MAGNITUDE):
                out = OPERATIONS[name](im, m)
                assert out.size == im.size and out.mode == im.mode, name
    changed = [name for name in OPERATIONS if OPERATIONS[name](image, MAGNITUDE).tobytes() != image.tobytes()]
    assert len(changed) >= len(OPERATIONS) - 2  # identity, and autocontrast on an image spanning 0..255
    with pytest.raises(FtonnxError, match="unknown augmentation 'heavy'"):
        Loader(Dataset([(str(path), 0)], ["a"]), pre, batch_size=1, augment="heavy")


def _batches(loader: Loader, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.copy(), y.copy()) for x, y in loader.epoch(epoch)]


def test_loader_deterministic_across_worker_counts(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 6, "b": 5})
    train, _ = discover(str(root))
    kwargs = dict(batch_size=4, shuffle=True, augment="light", seed=7)
    one, three = Loader(train, PRE, workers=1, **kwargs), Loader(train, PRE, workers=3, prefetch=1, **kwargs)
    a, b = _batches(one, 0), _batches(three, 0)
    assert len(one) == len(a) == 3 and [len(y) for _, y in a] == [4, 4, 3]
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape[1:] == (3, 16, 16) and xa.dtype == np.float32 and ya.dtype == np.int64
    assert sorted(np.concatenate([y for _, y in a]).tolist()) == [0] * 6 + [1] * 5
    assert not np.array_equal(np.concatenate([y for _, y in _batches(one, 1)]), np.concatenate([y for _, y in a]))
    plain = Loader(train, PRE, batch_size=4, drop_last=True)
    assert len(plain) == 2 and [len(y) for _, y in plain.epoch(0)] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([y for _, y in plain.epoch(0)]), [0] * 6 + [1] * 2)


def test_loader_skips_image_failing_at_load_time(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"a": 3, "b": 3})
    truncated = root / "b" / "trunc.jpg"
    write_image(truncated, (200, 150), seed=9)
    truncated.write_bytes(truncated.read_bytes()[:2000])  # the header still verifies; the pixels are gone
    train, _ = discover(str(root))
    assert str(truncated) in [p for p, _ in train.samples]
    loader = Loader(train, PRE, batch_size=4, workers=2)
    with caplog.at_level(logging.WARNING, logger="ftonnx.train.data"):
        sizes = [len(y) for _, y in loader.epoch(0)]
        sizes2 = [len(y) for _, y in loader.epoch(1)]
    assert sizes == sizes2 == [4, 2]
    assert list(loader.failed) == [str(truncated)]
    assert sum("trunc.jpg" in r.getMessage() for r in caplog.records) == 1


def test_loader_on_real_images(hymenoptera):
    train, val = discover(str(hymenoptera))
    assert train.classes == ["ants", "bees"] and len(train.samples) == 245 and len(val.samples) == 153
    subset = Dataset(val.samples[:3] + val.samples[-3:], val.classes)
    pre = Preprocess()
    x, y = next(Loader(subset, pre, batch_size=6).epoch(0))
    assert x.shape == (6, 3, 224, 224) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.isfinite(x).all() and x.std() > 0.2 and -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[0], load_image(subset.samples[0][0], pre))
