"""The activation cache computed on a Ray cluster (`--ray`): the same ActivationCache the local build fills,
with the same rows in the same order, so that the suffix trains exactly as from a local cache.

One Ray Data job covers the training set (each of its cached views) and the validation set. Its rows are
images; `map_batches` hands them to a pool of actors, each holding one ONNX Runtime session of the prefix
(CPU, or CUDA with `--device cuda`, chosen on the node by the onnxruntime build installed there), which
decodes and preprocesses its images exactly as `ftonnx.data` does locally and runs the prefix. What travels:
image paths (a file system every node mounts) or the image bytes of a Parquet table, which the workers read
themselves, in; activations out. They stream back to the driver in job order (Ray Data's `preserve_order`)
and are written into the cache's arrays: in memory up to the memory limit, memory-mapped spill files beyond.

Ray retries the batches of a worker that dies (its actor pools restart actors without limit), and a
retried batch returns the same activations, so the cache is the same as without the death. An image that
does not decode is skipped and reported, as locally (with `strict`, the build fails).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.data import Dataset
from ftonnx.data.images import DECODE_ERRORS, check_augment, load_image
from ftonnx.data.table import TableImages
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.io import load_model
from ftonnx.metadata import Preprocess
from ftonnx.progress import log
from ftonnx.runtime import image_input, inference_session, providers, run
from ftonnx.train.cache import ActivationCache, Writer, default_mem_limit

BATCH = 32  # images per actor call (and per block of the job's input)


def build_caches(prefix: onnx.ModelProto | str | os.PathLike, sets: list[tuple[Dataset, int]], *,
                 augment: str = "none", seed: int = 0, mem_limit: int | None = None,
                 spill_dir: str | os.PathLike | None = None, device: str = "cpu", strict: bool = False,
                 actors: int | None = None, progress: Callable[[int], None] | None = None) -> list[ActivationCache]:
    """One ActivationCache per (dataset, views) of `sets`, as `ActivationCache.build(prefix, dataset, views=views,
    augment=augment if views > 1 else "none", seed=seed, ...)` makes it, computed on the Ray cluster this
    process is connected to (`ftonnx.cluster.connected`). The caches share `mem_limit`, in the order given;
    `actors` defaults to all the cluster's CPUs (GPUs with cuda), less one CPU when Ray reads a table, and no
    more than the job has batches. `progress(k)` is called as each batch of k images arrives."""
    import ray

    model = prefix if isinstance(prefix, onnx.ModelProto) else load_model(prefix)
    preprocess = metadata.read(model).preprocess
    if preprocess is None:
        raise FtonnxError("the prefix model has no preprocessing in its metadata")
    job = Job.of(sets)
    store = _table_store(sets)
    with _data_context(ray):
        size, resources = _pool(ray, device, reads=store is not None, actors=actors, useful=-(-len(job) // BATCH))
        inputs, route = _inputs(ray, job, store, augment)
        outputs = inputs.map_batches(
            PrefixActor, fn_constructor_kwargs={"model": ray.put(model.SerializeToString()), "device": device,
                                                "preprocess": preprocess, "threads": 1, "seed": seed},
            batch_size=BATCH, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size), **resources)
        collector = Collector(job, [o.name for o in model.graph.output], route,
                              mem_limit if mem_limit is not None else default_mem_limit(), spill_dir, strict, progress)
        try:
            for batch in outputs.iter_batches(batch_size=None, batch_format="numpy"):
                collector.add(batch)
        except BaseException as exc:
            collector.discard()
            if isinstance(exc, ray.exceptions.RayError):
                raise _failure(exc) from None
            raise
    return collector.caches()


@dataclass
class Job:
    """The rows of a job: row r is view `view[r]` of image `index[r]` of set `part[r]` (sets in order, each
    view by view, images in the data set's order: the local cache's row order)."""

    sets: list[tuple[Dataset, int]]
    part: np.ndarray
    view: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, sets: list[tuple[Dataset, int]]) -> "Job":
        parts, views, indices = [], [], []
        for s, (dataset, count) in enumerate(sets):
            if count < 1:
                raise FtonnxError(f"--cache-views must be at least 1, not {count}")
            if not dataset.samples:
                raise FtonnxError("no images to cache")
            n = len(dataset.samples)
            parts.append(np.full(n * count, s))
            views.append(np.repeat(np.arange(count), n))
            indices.append(np.tile(np.arange(n), count))
        return cls(list(sets), *(np.concatenate(a).astype(np.int64) for a in (parts, views, indices)))

    def __len__(self) -> int:
        return len(self.part)

    def name(self, row: int) -> str:
        """The sample name of job row `row`."""
        return self.sets[self.part[row]][0].samples[self.index[row]][0]


def _table_store(sets: list[tuple[Dataset, int]]) -> TableImages | None:
    """The Parquet files Ray reads the images from (all sets' tables), or None when the images are files."""
    stores = [dataset.images for dataset, _ in sets]
    if all(s is None for s in stores):
        return None
    if not all(isinstance(s, TableImages) for s in stores):
        raise FtonnxError("--ray reads images from files or from Parquet tables of image bytes, not from both")
    if any(views > 1 for _, views in sets):
        raise FtonnxError("--cache-views with --ray needs the images as files (a table of paths, or folders); "
                          "a table of image bytes caches one view")
    files = list(dict.fromkeys(f for s in stores for f in s.files))
    return TableImages(files, stores[0].column)


def _inputs(ray: Any, job: Job, store: TableImages | None, augment: str) -> tuple[Any, np.ndarray | None]:
    """The job's input dataset, and for a table the job row of each table row (-1: not in any set). Images of a
    set of several views are augmented with `augment` ("light" when it is "none"), as the local build does."""
    if store is None:
        check_augment(augment)
        policies = ["none" if views == 1 else "light" if augment == "none" else augment for _, views in job.sets]
        items = [{"row": r, "source": job.name(r), "view": int(job.view[r]), "index": int(job.index[r]),
                  "augment": policies[job.part[r]]} for r in range(len(job))]
        return ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // BATCH))), None
    starts = np.cumsum([0] + store.row_counts())
    offset = dict(zip(store.files, starts[:-1].tolist()))
    route = np.full(int(starts[-1]), -1, np.int64)
    for r in range(len(job)):
        file, row = job.name(r).rsplit("#", 1)
        route[offset[file] + int(row)] = r
    filesystem = None if "://" in store.files[0] else _pyarrow_local()
    data = ray.data.read_parquet(store.files, filesystem=filesystem).select_columns([store.column])
    return data.rename_columns({store.column: "source"}) if store.column != "source" else data, route


def _pyarrow_local() -> Any:
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def _pool(ray: Any, device: str, *, reads: bool, actors: int | None,
          useful: int | None = None) -> tuple[int, dict[str, float]]:
    """How many actors (`actors`, else as many as the cluster holds, and no more than the `useful` number of
    batches), and what each reserves: 1 CPU (and 1 GPU with cuda). Reading a table needs a CPU beside the
    actors' (Ray's read tasks wait for one forever otherwise)."""
    have = ray.cluster_resources()
    cpus, gpus = int(have.get("CPU", 0)), int(have.get("GPU", 0))
    most = cpus - (1 if reads else 0)
    if device == "cuda":
        if gpus < 1:
            raise FtonnxError("--device cuda with --ray: the cluster has no GPUs; add GPU nodes or use --device cpu")
        most = min(most, gpus)
    size = actors or min(most, useful or most)
    if size < 1 or size > most:
        need = f"{size} actor(s) and one CPU for reading the table" if reads else f"{max(size, 1)} actor(s)"
        raise FtonnxError(f"the Ray cluster has {cpus} CPU(s) and {gpus} GPU(s): too few for {need}; add nodes"
                          + (" or use fewer actors" if actors else ""))
    return size, {"num_cpus": 1, "num_gpus": 1 if device == "cuda" else 0}


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data returns results in input order (the local cache's row order) and draws no progress bars (ftonnx
    draws its own), without a warning that it does not."""
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order, context.enable_progress_bars = True, False
    quiet = logging.getLogger("ray.data._internal.progress")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        quiet.setLevel(level)


def _failure(exc: Exception) -> FtonnxError:
    """The one line for a failed job: ftonnx's own error from a worker (an actor that could not start reaches
    the driver as Ray's text of it), else the first line of Ray's error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # Ray colours its messages
    found = re.search(r"FtonnxError: (.+)", text)
    if found:
        return FtonnxError(found[1].strip())
    return FtonnxError(f"the Ray job failed: {text.splitlines()[0] if text else type(exc).__name__}")


def actor_session(model: onnx.ModelProto, device: str, threads: int) -> Any:
    """The prefix's session on this node: `device`'s providers, as this node's onnxruntime build has them.
    ONNX Runtime falls back to the CPU with only a warning when CUDA's libraries do not load: refused."""
    session = inference_session(model, providers=providers(device), threads=threads, throughput=True)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise FtonnxError(f"--device cuda: onnxruntime on {os.uname().nodename} runs on {session.get_providers()[0]}; "
                          "its CUDA libraries did not load (see onnxruntime's CUDA requirements)")
    return session


class PrefixActor:
    """A Ray Data actor: one session of the prefix; decodes its rows' images (paths or bytes) and runs it."""

    def __init__(self, model: Any, preprocess: Preprocess, device: str, threads: int, seed: int) -> None:
        if not isinstance(model, bytes):  # the object store's reference, resolved on the node
            import ray

            model = ray.get(model)
        self.session = actor_session(onnx.ModelProto.FromString(model), device, threads)
        self.input, _ = image_input(self.session)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.preprocess, self.seed = preprocess, seed
        blank = np.zeros(self.preprocess.batch_shape(1), np.float32)
        self.shapes = [(a.shape[1:], a.dtype) for a in run(self.session, self.outputs, {self.input: blank})]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["source"])
        x = np.zeros(self.preprocess.batch_shape(n), np.float32)
        reasons = np.array([self._decode(batch, k, x) for k in range(n)], dtype=object)
        ok = reasons == ""
        results = [np.zeros((n, *shape), dtype) for shape, dtype in self.shapes]
        if ok.any():
            for array, value in zip(results, run(self.session, self.outputs, {self.input: x[ok]})):
                array[ok] = value
        out = {"ok": ok, "reason": reasons.astype(str), **{f"a{j}": a for j, a in enumerate(results)}}
        return {**out, "row": batch["row"]} if "row" in batch else out

    def _decode(self, batch: dict[str, np.ndarray], k: int, x: np.ndarray) -> str:
        """Decode row k's image into x[k] (augmented per its view when asked); why not, or ""."""
        source = batch["source"][k]
        augment = str(batch["augment"][k]) if "augment" in batch else "none"
        rng = None if augment == "none" else np.random.default_rng([self.seed, int(batch["view"][k]),
                                                                    int(batch["index"][k])])
        try:
            x[k] = load_image(io.BytesIO(source) if isinstance(source, bytes) else str(source), self.preprocess,
                              augment=augment, rng=rng)
        except DECODE_ERRORS as exc:
            return first_line(exc) or type(exc).__name__
        return ""


@dataclass
class Collector:
    """The job's results, as they stream back, into one Writer per set (the sets share the memory limit)."""

    job: Job
    names: list[str]
    route: np.ndarray | None
    mem_limit: int
    spill_dir: str | os.PathLike | None
    strict: bool
    progress: Callable[[int], None] | None
    writers: list[Writer] = field(default_factory=list)
    arrived: int = 0  # table rows so far

    def __post_init__(self) -> None:
        shapes = [(count, len(dataset.samples)) for dataset, count in self.job.sets]
        self.ok = [np.zeros(shape, bool) for shape in shapes]
        self.seen = [np.zeros(shape, bool) for shape in shapes]
        self.reported: set[str] = set()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """Write one batch of results where its rows belong."""
        rows = batch["row"] if self.route is None else self._numbered(len(batch["ok"]))
        values = {name: batch[f"a{j}"] for j, name in enumerate(self.names)}
        if not self.writers:
            self._reserve(values)
        for r, ok, reason in zip(rows, batch["ok"], batch["reason"]):
            if r >= 0 and not ok:
                self._failed(self.job.name(r), str(reason))
        for s, writer in enumerate(self.writers):
            chosen = np.flatnonzero((rows >= 0) & (self.job.part[np.maximum(rows, 0)] == s))
            picked = rows[chosen]
            view, index = self.job.view[picked], self.job.index[picked]
            writer.put(view * self.seen[s].shape[1] + index, {name: v[chosen] for name, v in values.items()})
            self.ok[s][view, index], self.seen[s][view, index] = batch["ok"][chosen], True
        if self.progress is not None:
            self.progress(int((rows >= 0).sum()))

    def _numbered(self, n: int) -> np.ndarray:
        """Job rows of the next `n` table rows (they arrive in table order)."""
        start, self.arrived = self.arrived, self.arrived + n
        if self.arrived > len(self.route):
            raise FtonnxError(f"Ray read more rows than the table has ({len(self.route)}); was it changed meanwhile?")
        return self.route[start:self.arrived]

    def _reserve(self, example: dict[str, np.ndarray]) -> None:
        limit = self.mem_limit
        for count, n in (ok.shape for ok in self.ok):
            writer = Writer(count * n, max(limit, 1), self.spill_dir)
            writer.reserve(example)
            limit -= writer.in_memory
            self.writers.append(writer)

    def _failed(self, name: str, reason: str) -> None:
        if self.strict:
            raise FtonnxError(f"{name}: unreadable image ({reason}); fix or remove it, or drop --strict")
        if name not in self.reported:
            self.reported.add(name)
            log(f"ftonnx: skipped {name}: {reason}")

    def caches(self) -> list[ActivationCache]:
        """The caches, once every row has arrived: the rows of the images that decoded, in the local order."""
        missing = sum(int((~seen).sum()) for seen in self.seen)
        if missing or (self.route is not None and self.arrived != len(self.route)):
            self.discard()
            raise FtonnxError(f"the Ray job returned {len(self.job) - missing} of {len(self.job)} images' activations")
        caches = []
        for (dataset, views), ok, writer in zip(self.job.sets, self.ok, self.writers):
            decoded = ok.all(axis=0)
            if (ok.any(axis=0) & ~decoded).any():
                self.discard()
                raise FtonnxError("the augmented views decoded different sets of images; remove the unreadable files "
                                  "and cache again")
            if not decoded.any():
                self.discard()
                raise FtonnxError("no image could be decoded; nothing to cache")
            keep = (np.arange(views)[:, None] * ok.shape[1] + np.flatnonzero(decoded)[None, :]).ravel()
            labels = np.array([label for _, label in dataset.samples], np.int64)[decoded]
            caches.append(ActivationCache(writer.kept(keep), labels, views, writer.files))
        return caches

    def discard(self) -> None:
        """Delete the spill files of a build that failed."""
        for writer in self.writers:
            for path in writer.files:
                path.unlink(missing_ok=True)
