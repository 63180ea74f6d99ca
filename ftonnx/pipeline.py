"""Whole runs from files: data discovery, loaders, the training loop and the export, for `ftonnx train`
(a model that already has a head) and `ftonnx finetune` (cut, head, train, export in one call).

A run stores its options and data arguments in RUN/config.json; `--resume` takes them from there
(and the pretrained model, node and head options for a finetune), so that it continues the very run.

When the frozen parameters form a prefix and nothing augments the images, the prefix runs once per
image (`ftonnx.train.cache`), the suffix trains on its activations, and RUN/model.onnx is prefix and
trained suffix joined again; config.json's "cache" records the boundary (null when the run trained
through the whole graph, "no_cache_reason" then says why).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.graph.split import split
from ftonnx.train import checkpoint
from ftonnx.train.cache import ActivationCache, default_mem_limit, plan
from ftonnx.train.data import Dataset, Loader, discover
from ftonnx.train.freeze import trainable_parameters
from ftonnx.train.loop import CONFIG, TrainConfig, TrainResult, check_device, check_run_dir
from ftonnx.train.loop import train as train_loop
from ftonnx.train.progress import Progress, log

CACHE_DIR = "cache"


def data_args(data: str, *, val: str | None = None, val_split: float | None = None, list_file: str | None = None,
              val_list: str | None = None, seed: int = 0, strict: bool = False) -> dict[str, Any]:
    """The keyword arguments of `ftonnx.train.data.discover` for these options (stored in RUN/config.json)."""
    return {"data": str(Path(data).expanduser().absolute()), "val": val and str(Path(val).expanduser().absolute()),
            "val_split": val_split, "list_file": list_file and str(Path(list_file).expanduser().absolute()),
            "val_list": val_list and str(Path(val_list).expanduser().absolute()), "seed": seed, "strict": strict}


def _stored(run_dir: str | os.PathLike, config: TrainConfig) -> dict[str, Any] | None:
    """RUN/config.json when resuming (its options win over the given ones, except the device)."""
    if not config.resume:
        return None
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FtonnxError(f"{run_dir}: no {CONFIG} to resume from; run without --resume")
    return json.loads(path.read_text())


def _resumed_config(stored: dict[str, Any], config: TrainConfig) -> TrainConfig:
    """The stored options, resuming, on the device asked for now."""
    resumed = TrainConfig.from_json(stored)
    resumed.resume, resumed.device = True, config.device
    return resumed


def _datasets(args: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """Training and validation sets; training needs both (best epoch, reported top-1)."""
    train, val = discover(**args)
    if val is None:
        raise FtonnxError("no validation images: DATA needs train/ and val/, or pass --val DIR or --val-split F")
    return train, val


def _announce(train: Dataset, val: Dataset) -> None:
    """What training will see (once every check has passed, so that an error stays the only line)."""
    for path, reason in train.skipped + val.skipped:
        log(f"ftonnx: skipped {path}: {reason}")
    log(f"data: {len(train.samples)} training and {len(val.samples)} validation images, "
        f"{len(train.classes)} classes ({', '.join(train.classes[:8])}{', ...' if len(train.classes) > 8 else ''})")


def _image_input(model: onnx.ModelProto) -> str:
    """The name of the model's one image input, the key of every batch."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise FtonnxError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); an image classifier has one")
    return inputs[0]


def _check_labels(model: onnx.ModelProto, classes: list[str]) -> None:
    """The model's labels must be the data's classes in the same order, or class indices would mismatch."""
    labels = metadata.read(model).labels
    if labels is None:
        raise FtonnxError("the model's metadata has no class labels; add a head with `ftonnx head` or use `ftonnx finetune`")
    if list(labels) != list(classes):
        raise FtonnxError(f"the model's {len(labels)} labels ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}) "
                          f"differ from the data's {len(classes)} classes ({', '.join(classes[:5])}"
                          f"{', ...' if len(classes) > 5 else ''}); give a head for these classes (`ftonnx finetune`)")


def _run(model: onnx.ModelProto, datasets: tuple[Dataset, Dataset], args: dict[str, Any],
         run_dir: str | os.PathLike, config: TrainConfig, source: dict[str, Any],
         stored: dict[str, Any] | None = None) -> TrainResult:
    """Train `model` on images: on cached activations of the frozen prefix when it can, else through the
    whole graph with loaders per the model's preprocessing and augmentation per the freeze policy."""
    config.validate()
    check_run_dir(run_dir, config)
    train_set, val_set = datasets
    _check_labels(model, train_set.classes)
    meta = metadata.read(model)
    if meta.preprocess is None:
        raise FtonnxError("the model's metadata has no preprocessing; export it with ftonnx or add it with `ftonnx head`")
    trainable = trainable_parameters(model, config.freeze)
    augment = config.augment
    if augment is None:
        augment = any(p not in set(meta.head_params) for p in trainable)
    if stored is not None and not stored.get("cache"):
        cut, why = [], "resuming a run trained through the whole graph"
    else:
        cut, why = plan(model, trainable, enabled=not config.no_cache, augment=augment, views=config.cache_views)
    name = _image_input(model)
    info = {"data_args": args, "source": source}
    if cut:
        return _run_cached(model, trainable, cut, datasets, run_dir, config, info)
    _announce(train_set, val_set)
    log(f"no activation cache: {why}")
    loader = Loader(train_set, meta.preprocess, batch_size=config.batch_size, shuffle=True, augment=augment,
                    seed=config.seed)
    val_loader = Loader(val_set, meta.preprocess, batch_size=config.batch_size)
    return train_loop(model, lambda epoch: (({name: x}, y) for x, y in loader.epoch(epoch)),
                      lambda: (({name: x}, y) for x, y in val_loader.epoch(0)), run_dir, config,
                      steps_per_epoch=len(loader), trainable=trainable,
                      run_info={**info, "augment_used": augment, "cache": None, "no_cache_reason": why})


def _run_cached(model: onnx.ModelProto, trainable: list[str], cut: list[str], datasets: tuple[Dataset, Dataset],
                run_dir: str | os.PathLike, config: TrainConfig, info: dict[str, Any]) -> TrainResult:
    """Split at `cut`, run the frozen prefix once per image, train the suffix on the activations (spill
    files live in RUN/cache while the run lasts), and export `model` with the trained suffix weights:
    prefix and trained suffix joined, node for node the graph an uncached run exports."""
    try:
        prefix, suffix = split(model, cut)
    except FtonnxError as exc:
        raise FtonnxError(f"{exc}; pass --no-cache to train through the whole graph") from None
    train_set, val_set = datasets
    views = config.cache_views
    _announce(train_set, val_set)
    log(f"activation cache: frozen prefix computed once for {len(train_set.samples)}"
        f"{f'x{views} augmented views' if views > 1 else ''}+{len(val_set.samples)} images "
        f"(boundary: {', '.join(cut)})")
    run_dir = Path(run_dir)
    created, spill = not run_dir.exists(), run_dir / CACHE_DIR
    caches: list[ActivationCache] = []
    try:
        start = time.monotonic()
        limit = config.cache_mem or default_mem_limit()
        for dataset, n in ((train_set, views), (val_set, 1)):
            with Progress(len(dataset.samples) * n, "caching activations") as bar:
                caches.append(ActivationCache.build(prefix, dataset, views=n, augment=n > 1, seed=config.seed,
                                                    mem_limit=limit, spill_dir=spill, progress=bar.update))
            limit = max(limit - _in_memory(caches[-1]), 1)
        cache, val_cache = caches
        nbytes, on_disk = cache.nbytes + val_cache.nbytes, cache.on_disk or val_cache.on_disk
        log(f"activation cache: {_size(nbytes)}{f', spilled to {spill}' if on_disk else ' in memory'}, "
            f"built in {time.monotonic() - start:.1f} s")
        bs = config.batch_size
        return train_loop(suffix, lambda epoch: cache.batches(epoch, bs, seed=config.seed),
                          lambda: val_cache.batches(0, bs, shuffle=False), run_dir, config,
                          steps_per_epoch=-(-len(cache) // bs), trainable=trainable, export_graph=model,
                          run_info={**info, "augment_used": views > 1, "cache": {
                              "boundary": cut, "views": views, "on_disk": on_disk, "bytes": nbytes}})
    except BaseException:
        if created and checkpoint.read_sidecar(run_dir, "last") is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for c in caches:
            c.close()
        if spill.is_dir() and not any(spill.iterdir()):
            spill.rmdir()


def _size(nbytes: int) -> str:
    """A byte count for people: 1.5 KiB, 12.3 MiB, 2.0 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes / 1024:.1f} KiB"


def _in_memory(cache: ActivationCache) -> int:
    """Bytes of `cache` held in memory rather than in spill files."""
    return sum(a.nbytes for a in cache.arrays.values() if not isinstance(a, np.memmap))


def train(model_path: str | os.PathLike, args: dict[str, Any], run_dir: str | os.PathLike,
          config: TrainConfig | None = None) -> TrainResult:
    """`ftonnx train`: train MODEL (which has a `logits` head and labels) on the data `args` describe."""
    from ftonnx.graph import load

    config = config or TrainConfig()

    stored = _stored(run_dir, config)
    if stored is not None:
        config, args, model_path = _resumed_config(stored, config), stored["data_args"], stored["source"]["model"]
    config.validate()
    check_device(config.device)
    model = load(model_path)
    return _run(model, _datasets(args), args, run_dir, config, {"model": str(Path(model_path).absolute())}, stored)


def finetune(pretrained: str | os.PathLike, node_spec: str, data_args: dict[str, Any], run_dir: str | os.PathLike,
             config: TrainConfig | None = None, *, hidden: int | None = None, dropout: float = 0.0,
             last: bool = False, index: int | None = None) -> TrainResult:
    """Cut `pretrained` at `node_spec`, add a head for the data's classes, train and export (RUN/model.onnx)."""
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head

    config = config or TrainConfig()

    stored = _stored(run_dir, config)
    if stored is not None:
        config, data_args, source = _resumed_config(stored, config), stored["data_args"], stored["source"]
    else:
        source = {"pretrained": str(Path(pretrained).absolute()), "node": node_spec, "hidden": hidden,
                  "dropout": dropout, "last": last, "index": index}
    config.validate()
    check_device(config.device)
    backbone = cut(load(source["pretrained"]), source["node"], last=source["last"], index=source["index"])
    datasets = _datasets(data_args)
    model = add_head(backbone, len(datasets[0].classes), hidden=source["hidden"], dropout=source["dropout"],
                     seed=config.seed, labels=datasets[0].classes)
    return _run(model, datasets, data_args, run_dir, config, source, stored)
