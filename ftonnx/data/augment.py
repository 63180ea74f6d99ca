"""The pixel operations of the "strong" augmentation: colour jitter, then a RandAugment-style policy.

Both act on the decoded, cropped and flipped image (RGB, or L for grayscale models) at the model's
input size, with Pillow alone, and draw everything from the sample's generator, so a view depends
only on (seed, epoch, sample).
- Colour jitter: brightness, contrast and saturation factors drawn from [0.6, 1.4], applied in a
  random order (torchvision's ColorJitter(0.4, 0.4, 0.4)).
- RandAugment (Cubuk et al., 2020) with its defaults: 2 operations drawn uniformly from 14 (identity,
  shears, translations, rotation, brightness, colour, contrast, sharpness, posterize, solarize,
  autocontrast, equalize) at magnitude 9 of 30, the direction of signed ones drawn at random.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

JITTER = 0.4
OPS_PER_IMAGE = 2
MAGNITUDE = 9 / 30  # of each operation's largest change
FILL = 128  # the grey geometric operations leave where the image moved away

_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor in [1 - JITTER, 1 + JITTER], in random order."""
    factors = rng.uniform(1 - JITTER, 1 + JITTER, size=len(_ENHANCERS))
    for i in rng.permutation(len(_ENHANCERS)):
        image = _ENHANCERS[i](image).enhance(float(factors[i]))
    return image


def _fill(image: Image.Image) -> tuple[int, ...]:
    return (FILL,) * len(image.getbands())


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR,
                           fillcolor=_fill(image))


# operation -> f(image, signed magnitude in [-1, 1] times MAGNITUDE): RandAugment's list and ranges
OPERATIONS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "identity": lambda im, m: im,
    "shear_x": lambda im, m: _affine(im, (1, 0.3 * m, 0, 0, 1, 0)),
    "shear_y": lambda im, m: _affine(im, (1, 0, 0, 0.3 * m, 1, 0)),
    "translate_x": lambda im, m: _affine(im, (1, 0, 0.45 * m * im.width, 0, 1, 0)),
    "translate_y": lambda im, m: _affine(im, (1, 0, 0, 0, 1, 0.45 * m * im.height)),
    "rotate": lambda im, m: im.rotate(30 * m, Image.Resampling.BILINEAR, fillcolor=_fill(im)),
    "brightness": lambda im, m: ImageEnhance.Brightness(im).enhance(1 + 0.9 * m),
    "color": lambda im, m: ImageEnhance.Color(im).enhance(1 + 0.9 * m),
    "contrast": lambda im, m: ImageEnhance.Contrast(im).enhance(1 + 0.9 * m),
    "sharpness": lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + 0.9 * m),
    "posterize": lambda im, m: ImageOps.posterize(im, 8 - int(4 * abs(m))),
    "solarize": lambda im, m: ImageOps.solarize(im, int(255 * (1 - abs(m)))),
    "autocontrast": lambda im, m: ImageOps.autocontrast(im),
    "equalize": lambda im, m: ImageOps.equalize(im),
}
_NAMES = tuple(OPERATIONS)


def rand_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """OPS_PER_IMAGE operations drawn with replacement, each at MAGNITUDE in a random direction."""
    for i in rng.integers(len(_NAMES), size=OPS_PER_IMAGE):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        image = OPERATIONS[_NAMES[i]](image, sign * MAGNITUDE)
    return image


def strong(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Colour jitter, then RandAugment."""
    return rand_augment(colour_jitter(image, rng), rng)
