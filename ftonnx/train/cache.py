"""Activations of the frozen prefix, computed once per image and served as training batches.

When the frozen parameters form a prefix of the network (see `ftonnx.graph.split`), every epoch
would recompute the same prefix outputs. `ActivationCache.build` runs the prefix once over a data
set, with ONNX Runtime, while the Loader's threads decode the next batches; `batches` then feeds
the suffix from memory, or from memory-mapped files when the activations exceed `mem_limit`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.data import Dataset, Loader
from ftonnx.errors import FtonnxError
from ftonnx.files import TEMP_PREFIX
from ftonnx.graph.index import GraphIndex
from ftonnx.graph.io import load_model
from ftonnx.graph.split import NotPrefixError, boundary
from ftonnx.metadata import Preprocess
from ftonnx.runtime import image_input, inference_session, providers


def default_mem_limit() -> int:
    """2 GiB or a quarter of the machine's RAM, whichever is less: room for training beside the cache."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 << 30
    return min(2 << 30, ram // 4)


def plan(model: onnx.ModelProto, trainable: list[str], *, enabled: bool = True, augment: str = "none",
         views: int = 1) -> tuple[list[str], str]:
    """(boundary, why not): the tensors to cache at, or [] and the reason to train through the whole graph.

    The cache needs the frozen parameters to form a prefix and, as it computes each image once,
    no augmentation unless `views` > 1 augmented views per image are cached.
    """
    if not enabled:
        return [], "--no-cache given"
    try:
        cut = boundary(model, trainable)
    except NotPrefixError as exc:
        if views > 1:
            raise FtonnxError(f"--cache-views needs a frozen prefix, but the freeze is {exc}") from None
        return [], str(exc)
    if augment != "none" and views == 1:
        return [], "augmentation is on (--no-augment, or --cache-views K to cache K augmented views per image)"
    return cut, ""


@dataclass
class ActivationCache:
    """One array per boundary tensor, shaped (views * N, ...): row v * N + i is view v of image i."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    views: int = 1
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cleanup = weakref.finalize(self, _remove, list(self.files))

    @property
    def names(self) -> list[str]:
        """The boundary tensors, i.e. the suffix's inputs, in the prefix's output order."""
        return list(self.arrays)

    @property
    def nbytes(self) -> int:
        """Bytes the activations take, in memory and on disk together."""
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def rms(self) -> float:
        """Root mean square of every cached activation value (the scale of the features a head reads)."""
        total = sum(float(np.square(a, dtype=np.float64).sum()) for a in self.arrays.values())
        return (total / max(1, sum(a.size for a in self.arrays.values()))) ** 0.5

    @property
    def on_disk(self) -> bool:
        """Whether some activations live in memory-mapped files (they exceeded `mem_limit`)."""
        return any(isinstance(a, np.memmap) for a in self.arrays.values())

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, epoch: int, batch_size: int, shuffle: bool = True,
                seed: int = 0) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """The batches of `epoch` as ({boundary tensor: activations}, int64 labels).

        Deterministic for (seed, epoch). With `shuffle` the images come in the same order as
        `Loader(..., shuffle=True, seed=seed).epoch(epoch)`; with views, each image contributes one
        view per epoch, drawn from the same generator.
        """
        if batch_size < 1:
            raise FtonnxError(f"batch size must be at least 1, not {batch_size}")
        n = len(self.labels)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if shuffle else np.arange(n)
        view = rng.integers(self.views, size=n) if self.views > 1 else np.zeros(n, np.int64)
        rows = view[order] * n + order
        for start in range(0, n, batch_size):
            chosen, images = rows[start:start + batch_size], order[start:start + batch_size]
            yield {name: a[chosen] for name, a in self.arrays.items()}, self.labels[images]

    def close(self) -> None:
        """Delete the spill files now (they are deleted anyway when the cache is garbage-collected)."""
        self.arrays = {}
        self._cleanup()

    @classmethod
    def build(cls, prefix: onnx.ModelProto | str | os.PathLike, dataset: Dataset,
              preprocess: Preprocess | None = None, *, batch_size: int = 64, views: int = 1,
              augment: str = "none", seed: int = 0, mem_limit: int | None = None,
              spill_dir: str | os.PathLike | None = None, device: str = "cpu",
              progress: Callable[[int], None] | None = None,
              session: "PrefixSession | None" = None) -> "ActivationCache":
        """Run `prefix` once over every image of `dataset` (`views` times, augmented, with `views > 1`).

        `preprocess` defaults to the prefix's metadata. View v is the Loader's epoch v (augmented with
        policy `augment`, "light" when it is "none" and `views > 1`; image i of view v is drawn with the
        generator seeded by (seed, v, i)). Tensors
        are kept in memory, in output order, while their total fits in `mem_limit` bytes (default
        `default_mem_limit()`); the rest go to .npy memory maps in `spill_dir`. The prefix runs on
        `device`, in `session` when given (shared by the builds of one run). `progress(k)` is called after each
        batch with the k images it added (tqdm's `update` fits).
        """
        if views < 1:
            raise FtonnxError(f"--cache-views must be at least 1, not {views}")
        if not dataset.samples:
            raise FtonnxError("no images to cache")
        model = prefix if isinstance(prefix, onnx.ModelProto) else load_model(prefix)
        preprocess = preprocess or metadata.read(model).preprocess
        if preprocess is None:
            raise FtonnxError("the prefix model has no preprocessing in its metadata; pass one")
        session = session or PrefixSession(model, device)
        policy = "light" if augment == "none" and views > 1 else augment
        loader = Loader(dataset, preprocess, batch_size=batch_size, augment=policy, seed=seed)
        total = len(dataset.samples) * views
        writer = Writer(total, mem_limit if mem_limit is not None else default_mem_limit(), spill_dir)
        try:
            labels = _fill(session, loader, views, writer, progress)
        except BaseException:
            _remove(writer.files)
            raise
        return cls(writer.arrays(), labels, views, writer.files)


def _fill(prefix: "PrefixSession", loader: Loader, views: int, writer: "Writer",
          progress: Callable[[int], None] | None) -> np.ndarray:
    """Run the prefix over `views` epochs of `loader` into `writer`; the labels of one view."""
    labels = None
    for v in range(views):
        seen: list[np.ndarray] = []
        for x, y in loader.epoch(v):  # the first batch starts decoding while the session opens
            writer.write(prefix.run(x))
            seen.append(y)
            if progress is not None:
                progress(len(y))
        got = np.concatenate(seen) if seen else np.zeros(0, np.int64)
        if labels is None:
            labels = got
        elif not np.array_equal(got, labels):
            raise FtonnxError(f"view {v} decoded a different set of images than view 0; "
                              "remove the unreadable files and cache again")
    if not len(labels):
        raise FtonnxError("no image could be decoded; nothing to cache")
    return labels


class Writer:
    """Batches of activations into preallocated arrays, in memory while they fit in `mem_limit` bytes and
    memory-mapped in `spill_dir` beyond: appended in order (`write`), or put at given rows (`put`, the Ray
    build, which then keeps the rows of the images that decoded: `kept`)."""

    COMPACT_ROWS = 4096  # rows moved at a time by `kept`

    def __init__(self, rows: int, mem_limit: int, spill_dir: str | os.PathLike | None) -> None:
        self.rows, self.mem_limit, self.spill_dir = rows, mem_limit, spill_dir
        self.filled = 0
        self.store: dict[str, np.ndarray] = {}
        self.files: list[Path] = []

    def write(self, batch: dict[str, np.ndarray]) -> None:
        if not self.store:
            self.reserve(batch)
        n = len(next(iter(batch.values())))
        for name, value in batch.items():
            self.store[name][self.filled:self.filled + n] = value
        self.filled += n

    def put(self, rows: np.ndarray, batch: dict[str, np.ndarray]) -> None:
        """Write `batch` at `rows`."""
        if not self.store:
            self.reserve(batch)
        for name, value in batch.items():
            self.store[name][rows] = value

    def arrays(self) -> dict[str, np.ndarray]:
        """The filled rows (fewer than allocated when some images could not be decoded)."""
        return {name: a[:self.filled] for name, a in self.store.items()}

    def kept(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """The rows `keep` (increasing), moved to the front in place, a chunk at a time (a memory map is never
        copied whole); what `arrays` returns afterwards."""
        for a in self.store.values():
            for start in range(0, len(keep), self.COMPACT_ROWS):
                chosen = keep[start:start + self.COMPACT_ROWS]
                a[start:start + len(chosen)] = a[chosen]  # a forward move: keep[j] >= j, no source is overwritten
        self.filled = len(keep)
        return self.arrays()

    @property
    def in_memory(self) -> int:
        """Bytes allocated in memory (not memory-mapped)."""
        return sum(a.nbytes for a in self.store.values() if not isinstance(a, np.memmap))

    def reserve(self, batch: dict[str, np.ndarray]) -> None:
        """Allocate every row for tensors shaped like `batch`'s, in memory in output order while they fit."""
        sizes = {name: self.rows * v[0].nbytes for name, v in batch.items()}
        budget = self.mem_limit
        spilled = []
        for name, value in batch.items():
            if sizes[name] <= budget:
                budget -= sizes[name]
                self.store[name] = np.empty((self.rows, *value.shape[1:]), value.dtype)
            else:
                spilled.append(name)
        if not spilled:
            return
        need = sum(sizes[n] for n in spilled)
        if self.spill_dir is None:
            raise FtonnxError(f"the activations need {need / 2**30:.2f} GiB beyond the cache memory limit of "
                              f"{self.mem_limit / 2**30:.2f} GiB; give a folder to spill them to or raise the limit")
        folder = Path(self.spill_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(folder).free < need:
            raise FtonnxError(f"{folder}: not enough free disk for {need / 2**30:.2f} GiB of activations; "
                              "raise the cache memory limit or free some space")
        for name in spilled:
            fd, path = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}activations-", suffix=".npy", dir=folder)
            os.close(fd)
            self.files.append(Path(path))
            value = batch[name]
            self.store[name] = np.lib.format.open_memmap(path, "w+", value.dtype, (self.rows, *value.shape[1:]))
        self.store = {name: self.store[name] for name in batch}  # keep the prefix's output order


class PrefixSession:
    """The throughput session of a prefix with one image input on `device`, opened in a background thread
    from the moment this is made, while the first images start decoding; ONNX Runtime holds the GIL for most of
    the tens of milliseconds it optimises a backbone, so the overlap is partial (docs/performance.md). The first
    `run` waits for it (and raises what opening it raised)."""

    def __init__(self, model: onnx.ModelProto, device: str) -> None:
        inputs = GraphIndex(model).inputs
        if len(inputs) != 1:
            raise FtonnxError(f"the prefix must have one image input to cache its activations, not {len(inputs)}")
        pool = ThreadPoolExecutor(1, thread_name_prefix="ftonnx-session")
        self._opening = pool.submit(inference_session, model, providers=providers(device), throughput=True)
        pool.shutdown(wait=False)  # the thread ends once the session is open

    @cached_property
    def _opened(self) -> tuple[Any, str, list[str]]:
        """The open session, its image input and its outputs."""
        session = self._opening.result()
        return session, image_input(session)[0], [o.name for o in session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{output name: activations} of the batch `x`."""
        session, name, outputs = self._opened
        return dict(zip(outputs, session.run(outputs, {name: x})))


def _remove(files: list[Path]) -> None:
    for path in files:
        path.unlink(missing_ok=True)
