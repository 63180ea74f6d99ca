"""Decode one image with Pillow and turn it into the model's input tensor, per `Preprocess`.

Both evaluation (resize the shorter side, center-crop) and augmentation (random resized crop, as
torchvision draws it) are expressed as a crop box in the original image's pixels plus an output
size, so one `Image.resize(size, box=...)` does the work, and JPEG draft mode can decode a large
file at 1/2, 1/4 or 1/8 scale whenever that still leaves the box at least as large as the output.

Augmentation policies: "none" (center crop), "light" (random resized crop and horizontal flip) and
"strong" (light, then colour jitter and RandAugment at the output size; see `ftonnx.data.augment`).
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

from ftonnx.data.augment import strong
from ftonnx.errors import FtonnxError
from ftonnx.metadata import Preprocess

AUGMENTATIONS = ("none", "light", "strong")

# What Pillow raises on unreadable, truncated or hostile files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

Box = tuple[float, float, float, float]
# What an image is decoded from: a file, or a binary file-like object holding the encoded image (a table's bytes).
Source = str | os.PathLike | BinaryIO
# Modes whose pixels may lie outside what 8 bits can scale to (decoding them tells whether they do).
RANGED_MODES = ("I", "F")


def eight_bit(img: Image.Image) -> Image.Image:
    """`img` with 8 bits per channel. Pillow keeps 16-bit grey (I;16...) and 32-bit (I, F) pixels as they are,
    and converting them to RGB clips everything above 255 to white; here 16-bit values keep their top 8
    bits (as Pillow does with 16-bit RGB), 32-bit integers within 0-65535 are taken as 16-bit, and floats
    within 0-1 are scaled by 255. Other ranges have no known scale: ValueError (the image is skipped)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        pixels = np.asarray(img).astype(np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"32-bit integer pixels from {pixels.min()} to {pixels.max()}: no known scale to 8 bits; "
                             "save the image with 8 or 16 bits per channel")
        return Image.fromarray((pixels >> 8).astype(np.uint8), "L")
    if img.mode == "F":
        pixels = np.asarray(img, np.float64)
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1):
            raise ValueError("32-bit float pixels outside 0-1: no known scale to 8 bits; save the image with 8 or "
                             "16 bits per channel")
        return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA")  # what Pillow asks for (and warns about) before dropping the alpha
    return img


def center_box(width: int, height: int, preprocess: Preprocess) -> Box:
    """The region that "scale the image to cover the resize target, then crop the centre `size`" keeps.

    The resize target is `size` scaled so that its shorter side is `resize` (for a square input: the
    image's shorter side becomes `resize`); the image is scaled to cover it, keeping its aspect ratio,
    so a non-square input (say 48x192) is filled, never stretched or padded.
    """
    th, tw = preprocess.size
    target_h, target_w = (round(preprocess.resize * d / min(th, tw)) for d in (th, tw))
    if target_h * width >= target_w * height:  # the height limits: it becomes exactly target_h
        rh, rw = target_h, int(target_h * width / height)
    else:
        rh, rw = int(target_w * height / width), target_w
    left, top = round((rw - tw) / 2), round((rh - th) / 2)
    sx, sy = width / rw, height / rh
    return left * sx, top * sy, (left + tw) * sx, (top + th) * sy


def random_box(width: int, height: int, rng: np.random.Generator,
               scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A random crop covering `scale` of the area with aspect `ratio` (torchvision's RandomResizedCrop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def check_augment(augment: str) -> None:
    """Refuse an unknown augmentation policy."""
    if augment not in AUGMENTATIONS:
        raise FtonnxError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTATIONS)}")


def decode(source: Source, preprocess: Preprocess, *, augment: str = "none",
           rng: np.random.Generator | None = None, draft: bool = True) -> Image.Image:
    """Decode `source` (a file, or a file-like object of encoded bytes: both decode alike) to an RGB (or, for
    GRAY, L) image of size `preprocess.size`, center-cropped or augmented per `augment`."""
    check_augment(augment)
    th, tw = preprocess.size
    rng = rng if rng is not None or augment == "none" else np.random.default_rng()
    with Image.open(source) as img:
        width, height = img.size
        if augment != "none":
            box = random_box(width, height, rng)
            flip = bool(rng.random() < 0.5)
        else:
            box, flip = center_box(width, height, preprocess), False
        factor = 1.0
        if draft and img.format == "JPEG":
            # The smallest decode that keeps the box at least as large as the output, in both directions.
            need = (math.ceil(width * tw / (box[2] - box[0])), math.ceil(height * th / (box[3] - box[1])))
            drafted = img.draft("RGB", need)
            if drafted is not None:
                factor = drafted[1][2] / width
        pixels = eight_bit(img).convert("L" if preprocess.channel_order == "GRAY" else "RGB")
    box = (box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor)
    out = pixels.resize((tw, th), Image.Resampling.BILINEAR, box=box)
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out
    return strong(out, rng) if augment == "strong" else out


def to_array(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """(pixel - mean) / std in 0-255 units, in the model's channel order and layout (no batch dim)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if preprocess.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    if preprocess.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_image(source: Source, preprocess: Preprocess, *, augment: str = "none",
               rng: np.random.Generator | None = None, draft: bool = True) -> np.ndarray:
    """Decode and preprocess one image (a file or a file-like object): float32 in the model's layout, no batch
    dimension."""
    return to_array(decode(source, preprocess, augment=augment, rng=rng, draft=draft), preprocess)
