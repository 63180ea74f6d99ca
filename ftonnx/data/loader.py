"""Batches of a Dataset for a model, decoded ahead of the consumer by a thread pool.

Order, shuffling and augmentation depend only on (seed, epoch) and (seed, epoch, sample), never on
thread scheduling, so a run sees the same batches whatever the number of threads.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ftonnx.data.dataset import Dataset
from ftonnx.data.images import DECODE_ERRORS, check_augment, decode, load_image
from ftonnx.errors import FtonnxError, first_line, printable
from ftonnx.metadata import Preprocess

log = logging.getLogger(__name__)


class Loader:
    """Batches (x float32, y int64) of a Dataset, decoded ahead of the consumer by a thread pool.

    Order, shuffling and augmentation (a policy of `ftonnx.data.images.AUGMENTATIONS`) depend only on
    (seed, epoch), never on thread scheduling. An image that fails to decode is left out of its batch and
    reported once. With `pixels`, x holds the decoded, cropped images instead: uint8, (N, H, W, channels),
    before any scaling or layout.
    """

    def __init__(self, dataset: Dataset, preprocess: Preprocess, *, batch_size: int, shuffle: bool = False,
                 augment: str = "none", seed: int = 0, workers: int | None = None, drop_last: bool = False,
                 prefetch: int = 2, draft: bool = True, pixels: bool = False) -> None:
        if batch_size < 1:
            raise FtonnxError(f"batch size must be at least 1, not {batch_size}")
        check_augment(augment)
        self.dataset, self.preprocess = dataset, preprocess
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.drop_last, self.prefetch, self.draft, self.pixels = drop_last, max(1, prefetch), draft, pixels
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        n = len(self.dataset.samples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset.samples)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def _decode_into(self, out: np.ndarray, slot: int, index: int, epoch: int) -> str | None:
        """Decode sample `index` into out[slot]; the reason when it cannot be decoded."""
        path = self.dataset.samples[index][0]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment != "none" else None
        try:
            if self.pixels:
                out[slot] = np.asarray(decode(self.dataset.open(path), self.preprocess, augment=self.augment,
                                              rng=rng, draft=self.draft)).reshape(out.shape[1:])
            else:
                out[slot] = load_image(self.dataset.open(path), self.preprocess, augment=self.augment, rng=rng,
                                       draft=self.draft)
        except DECODE_ERRORS as exc:
            return first_line(exc)
        return None

    def _submit(self, pool: ThreadPoolExecutor, indices: np.ndarray, epoch: int):
        """Start decoding one batch; returns its buffer, labels, sample indices and futures."""
        if self.pixels:
            x = np.empty((len(indices), *self.preprocess.size, self.preprocess.channels), np.uint8)
        else:
            x = np.empty(self.preprocess.batch_shape(len(indices)), np.float32)
        y = np.array([self.dataset.samples[i][1] for i in indices], np.int64)
        futures = [pool.submit(self._decode_into, x, slot, int(i), epoch) for slot, i in enumerate(indices)]
        return x, y, indices, futures

    def _collect(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                 futures: list[Future]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Wait for one batch; drop (and report once) the images that failed."""
        reasons = [f.result() for f in futures]
        keep = [slot for slot, reason in enumerate(reasons) if reason is None]
        for slot, reason in enumerate(reasons):
            path = self.dataset.samples[int(indices[slot])][0]
            if reason is not None and path not in self.failed:
                self.failed[path] = reason
                log.warning("skipping %s: %s", printable(path), printable(reason))
        return (x, y, indices) if len(keep) == len(y) else (x[keep], y[keep], indices[keep])

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch `epoch`, in order, with up to `prefetch` more batches decoding ahead."""
        return ((x, y) for x, y, _ in self.indexed_epoch(epoch))

    def indexed_epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`epoch`'s batches with the index in `dataset.samples` of each image they hold."""
        order = self._order(epoch)
        batches = (order[s:s + self.batch_size] for s in range(0, len(self) * self.batch_size, self.batch_size))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ftonnx-decode") as pool:
            pending = deque(self._submit(pool, b, epoch) for b in itertools.islice(batches, self.prefetch + 1))
            try:
                while pending:
                    x, y, indices = self._collect(*pending.popleft())
                    following = next(batches, None)
                    if following is not None:
                        pending.append(self._submit(pool, following, epoch))
                    if len(y):
                        yield x, y, indices
            finally:
                for *_, futures in pending:
                    for f in futures:
                        f.cancel()
