"""Where training batches come from, behind one small interface: decoded images or cached activations.

A source yields, for each epoch, batches of ({input name: array}, int64 labels), and says how many
batches an epoch has (the learning-rate schedule needs it before the first one).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol

import numpy as np

from ftonnx.data import Loader
from ftonnx.train.cache import ActivationCache

Batch = tuple[dict[str, np.ndarray], np.ndarray]


class Batches(Protocol):
    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterable[Batch]: ...


class ImageBatches:
    """A Loader's decoded images, fed to the model's image input `name`."""

    def __init__(self, loader: Loader, name: str) -> None:
        self.loader, self.name = loader, name

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        return (({self.name: x}, y) for x, y in self.loader.epoch(epoch))


class CacheBatches:
    """Batches of cached activations, fed to the suffix's inputs (see `ActivationCache.batches`)."""

    def __init__(self, cache: ActivationCache, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.cache, self.batch_size, self.shuffle, self.seed = cache, batch_size, shuffle, seed

    def __len__(self) -> int:
        return -(-len(self.cache) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        return self.cache.batches(epoch, self.batch_size, shuffle=self.shuffle, seed=self.seed)
