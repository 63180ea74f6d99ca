"""The activation cache: equal to a direct forward of the prefix, deterministic, and the same on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from ftonnx import metadata
from ftonnx.data import Dataset, Loader
from ftonnx.errors import FtonnxError
from ftonnx.graph.split import split
from ftonnx.train.cache import ActivationCache

CUT = ["r1", "flat"]  # two tensors of different shapes, as with a skip connection


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Eleven small random images in two classes (an odd count, so the last batch is short)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(11):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    return Dataset(samples, ["even", "odd"])


@pytest.fixture
def prefix(tiny_model) -> onnx.ModelProto:
    return split(tiny_model, CUT)[0]


def forward(prefix: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(prefix.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(CUT, session.run(CUT, {"input": x})))


def collect(batches) -> tuple[dict[str, np.ndarray], np.ndarray]:
    batches = list(batches)
    return {n: np.concatenate([b[0][n] for b in batches]) for n in CUT}, np.concatenate([b[1] for b in batches])


def test_cache_equals_a_direct_forward_in_the_loaders_order(prefix, dataset):
    done: list[int] = []
    cache = ActivationCache.build(prefix, dataset, batch_size=4, progress=done.append)
    assert done == [4, 4, 3]
    preprocess = metadata.read(prefix).preprocess
    assert len(cache) == 11 and cache.names == CUT and not cache.on_disk
    assert cache.arrays["r1"].shape == (11, 8, 16, 16) and cache.arrays["flat"].shape == (11, 16)
    assert cache.arrays["r1"].dtype == np.float32
    assert cache.nbytes == 11 * (8 * 16 * 16 + 16) * 4
    np.testing.assert_array_equal(cache.labels, [s[1] for s in dataset.samples])
    for shuffle in (False, True):
        loader = Loader(dataset, preprocess, batch_size=3, shuffle=shuffle, seed=5)
        for (x, y), (acts, labels) in zip(loader.epoch(2), cache.batches(2, 3, shuffle=shuffle, seed=5),
                                          strict=True):
            np.testing.assert_array_equal(labels, y)
            for name, value in forward(prefix, x).items():
                np.testing.assert_allclose(acts[name], value, rtol=0, atol=1e-6)


def test_batches_are_deterministic_per_seed_and_epoch(prefix, dataset):
    cache = ActivationCache.build(prefix, dataset, batch_size=4)
    acts, labels = collect(cache.batches(1, 4, seed=3))
    again, labels_again = collect(cache.batches(1, 4, seed=3))
    np.testing.assert_array_equal(labels, labels_again)
    for name in CUT:
        np.testing.assert_array_equal(acts[name], again[name])
    flats = [collect(cache.batches(e, 4, seed=s))[0]["flat"] for e, s in ((2, 3), (1, 4))]
    assert all(not np.array_equal(f, acts["flat"]) for f in flats)
    # every epoch is a permutation of the cached rows
    np.testing.assert_array_equal(np.sort(acts["flat"], axis=0), np.sort(cache.arrays["flat"], axis=0))


def test_spill_to_disk_gives_the_same_batches(prefix, dataset, tmp_path):
    in_memory = ActivationCache.build(prefix, dataset, batch_size=4)
    spill = tmp_path / "run" / "cache"
    limit = in_memory.arrays["r1"].nbytes  # r1 fits, flat does not
    on_disk = ActivationCache.build(prefix, dataset, batch_size=4, mem_limit=limit, spill_dir=spill)
    assert on_disk.on_disk and not isinstance(on_disk.arrays["r1"], np.memmap)
    assert isinstance(on_disk.arrays["flat"], np.memmap)
    files = list(spill.glob("*.npy"))
    assert len(files) == 1 and files[0].stat().st_size >= on_disk.arrays["flat"].nbytes
    for (a, y), (b, z) in zip(in_memory.batches(3, 4, seed=1), on_disk.batches(3, 4, seed=1), strict=True):
        np.testing.assert_array_equal(y, z)
        for name in CUT:
            np.testing.assert_array_equal(a[name], b[name])
    on_disk.close()
    assert not list(spill.glob("*.npy"))
    everything = ActivationCache.build(prefix, dataset, batch_size=4, mem_limit=1, spill_dir=spill)
    assert all(isinstance(a, np.memmap) for a in everything.arrays.values()) and len(list(spill.glob("*"))) == 2
    with pytest.raises(FtonnxError, match="beyond the cache memory limit"):
        ActivationCache.build(prefix, dataset, mem_limit=1)


def test_an_interrupted_build_leaves_no_spill_files(prefix, dataset, tmp_path):
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ActivationCache.build(prefix, dataset, batch_size=4, mem_limit=1, spill_dir=tmp_path, progress=interrupt)
    assert not list(tmp_path.glob("*.npy"))


def test_views_cache_augmented_epochs_and_draw_one_per_image(prefix, dataset):
    cache = ActivationCache.build(prefix, dataset, batch_size=4, views=3, seed=7)
    assert cache.arrays["flat"].shape == (33, 16) and len(cache) == 11
    preprocess = metadata.read(prefix).preprocess
    loader = Loader(dataset, preprocess, batch_size=11, augment="light", seed=7)
    for v in range(3):
        (x, _), = loader.epoch(v)
        np.testing.assert_allclose(cache.arrays["flat"][v * 11:(v + 1) * 11], forward(prefix, x)["flat"],
                                   rtol=0, atol=1e-6)
    rows = {tuple(r) for r in cache.arrays["flat"]}
    assert len(rows) == 33  # the views differ
    acts, labels = collect(cache.batches(0, 5, shuffle=False))
    assert len(labels) == 11
    drawn = [[v for v in range(3) if np.array_equal(acts["flat"][i], cache.arrays["flat"][v * 11 + i])]
             for i in range(11)]
    assert all(len(d) == 1 for d in drawn) and len({d[0] for d in drawn}) > 1
