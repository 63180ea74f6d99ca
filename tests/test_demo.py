"""The embedded default data: scikit-learn's digits written as an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ftonnx.data import discover
from ftonnx.demo import write_digits


def test_digits_become_a_stratified_image_folder(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "digits")
    train, val = discover(str(root))
    assert train.classes == [str(d) for d in range(10)]
    assert len(train.samples) + len(val.samples) == 1797
    assert {label for _, label in val.samples} == set(range(10))
    assert 0.18 < len(val.samples) / 1797 < 0.22
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}


def test_digit_images_are_dark_ink_on_white(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "digits")
    pixels = np.asarray(Image.open(next((root / "train" / "0").glob("*.png"))).convert("L"))
    assert pixels.shape == (32, 32)
    assert pixels[0, 0] > 200 and pixels.min() < 60  # white border, dark strokes
