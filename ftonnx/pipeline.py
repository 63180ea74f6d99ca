"""Whole runs from files: `ftonnx train` (a model that already has a head) and `ftonnx finetune` (cut, head,
train and export in one call), each checking its options once, building its batch sources and calling
the training loop once, then exporting RUN/model.onnx with the trained weights.

`--resume` takes the options, data and source from RUN/config.json, so that it continues the very run;
`--resume --epochs N` makes it a run of N epochs (recorded in config.json's "extensions"): a finished run
trains on, an unfinished one stops at N. The learning-rate schedule is recomputed over the N epochs, so
the epochs still to train follow an N-epoch run's schedule (after a finished cosine run, the rate
rises from near zero to where an N-epoch cosine stands, then decays to near zero again). A run that
stopped early trains no further.

When the frozen parameters form a prefix and nothing augments the images, the prefix runs once per
image (`ftonnx.train.cache`), the suffix trains on its activations, and RUN/model.onnx is the whole
graph with the trained suffix weights; config.json's "cache" records the boundary (null when the run
trained through the whole graph, "no_cache_reason" then says why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import onnx

from ftonnx import cluster, folders, metadata
from ftonnx.data import Dataset, Loader, check_classes, discover
from ftonnx.errors import FtonnxError
from ftonnx.export.inference import export_inference
from ftonnx.graph.index import GraphIndex, value_shape
from ftonnx.graph.split import split
from ftonnx.preprocess import PreprocessFlags
from ftonnx.preprocess.use import preprocess_for
from ftonnx.progress import Progress, log
from ftonnx.runtime import check_device
from ftonnx.train.artifacts import Artifacts
from ftonnx.train.batches import Batches, CacheBatches, ImageBatches
from ftonnx.train.cache import ActivationCache, PrefixSession, default_mem_limit, plan
from ftonnx.train.config import FEATURE_RMS, TrainConfig
from ftonnx.train.freeze import trainable_parameters
from ftonnx.train.loop import TrainResult
from ftonnx.train.loop import train as train_loop
from ftonnx.train.qat import learned_ranges
from ftonnx.train.run import RunFolder, RunRecord
from ftonnx.train.strategy import idle_options, plan_strategy

if TYPE_CHECKING:  # --qat's modules load only for a --qat run
    from ftonnx.export.qat import QatCalibration

RUN_SIZE_FACTOR = 4  # a run folder holds about this many copies of the model: artifacts, two checkpoints, model.onnx


def data_args(data: str | None = None, *, val: str | None = None, val_split: float | None = None,
              list_file: str | None = None, val_list: str | None = None, seed: int = 0, strict: bool = False,
              labels: list[str] | None = None, table: str | None = None, val_table: str | None = None,
              image_column: str = "image", label_column: str = "label",
              split_column: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `ftonnx.data.discover` for these options (stored in RUN/config.json)."""
    return {"data": _absolute(data), "val": _absolute(val), "val_split": val_split, "list_file": _absolute(list_file),
            "val_list": _absolute(val_list), "seed": seed, "strict": strict, "labels": labels,
            "table": _absolute(table), "val_table": _absolute(val_table), "image_column": image_column,
            "label_column": label_column, "split_column": split_column}


def _absolute(path: str | None) -> str | None:
    """`path` made absolute, so that a resumed run finds it from any folder; a URI (s3://...) as it is."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().absolute())


def train(model_path: str | os.PathLike, args: dict[str, Any], run_dir: str | os.PathLike,
          config: TrainConfig | None = None, preprocess: PreprocessFlags | None = None, *,
          report: bool = True) -> TrainResult:
    """`ftonnx train`: train MODEL (which has a `logits` head and labels) on the data `args` describe;
    `preprocess` gives the preprocessing when the model's metadata has none; with `report`, write
    RUN/report.html too."""
    from ftonnx.graph import load

    run, config = RunFolder(run_dir), config or TrainConfig()
    with _started(run, config, args, model_path, ("model",)) as stored:
        if stored is not None:
            config, args, source = stored.config, stored.data_args, stored.source
        else:
            source = {"model": str(Path(model_path).absolute())}
        datasets, loaded = _datasets_and(args, load, source["model"])
        model = _preprocessed(loaded, preprocess, datasets[0], source)
        return _run(model, datasets, run, RunRecord(config, args, source), stored, report)


def finetune(pretrained: str | os.PathLike, node_spec: str, data_args: dict[str, Any], run_dir: str | os.PathLike,
             config: TrainConfig | None = None, *, hidden: int | None = None, dropout: float = 0.0,
             last: bool = False, index: int | None = None, preprocess: PreprocessFlags | None = None,
             report: bool = True) -> TrainResult:
    """Cut `pretrained` at `node_spec`, add a head for the data's classes, train and export (RUN/model.onnx);
    `preprocess` gives the preprocessing when the pretrained model's metadata has none; with `report`, write
    RUN/report.html too."""
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head

    run, config = RunFolder(run_dir), config or TrainConfig()
    keys = ("pretrained", "node", "hidden", "dropout", "last", "index")
    with _started(run, config, data_args, pretrained, keys) as stored:
        if stored is not None:
            config, data_args, source = stored.config, stored.data_args, stored.source
        else:
            source = {"pretrained": str(Path(pretrained).absolute()), "node": node_spec, "hidden": hidden,
                      "dropout": dropout, "last": last, "index": index}
        datasets, loaded = _datasets_and(data_args, load, source["pretrained"])
        original = _preprocessed(loaded, preprocess, datasets[0], source)
        backbone = cut(original, source["node"], last=source["last"], index=source["index"])
        model = add_head(backbone, len(datasets[0].classes), hidden=source["hidden"], dropout=source["dropout"],
                         seed=config.seed, labels=datasets[0].classes)
        return _run(model, datasets, run, RunRecord(config, data_args, source), stored, report)


def _preprocessed(model: onnx.ModelProto, flags: PreprocessFlags | None, images: Dataset,
                  source: dict[str, Any]) -> onnx.ModelProto:
    """`model` itself (fresh from its file) with the preprocessing the run feeds it in its metadata: from its
    metadata, input shape and the flags (`auto` chooses on `images`), decided once and kept in `source`, which a
    resume reuses."""
    if "preprocess" in source:
        chosen = metadata.Preprocess.from_json(source["preprocess"])
    else:
        chosen = preprocess_for(model, flags, images, say=log)
        source["preprocess"] = chosen.to_json()
    return metadata.update(model, preprocess=chosen)


@contextlib.contextmanager
def _started(run: RunFolder, config: TrainConfig, args: dict[str, Any], model: str | os.PathLike,
             source_keys: tuple[str, ...]) -> Iterator[RunRecord | None]:
    """Check the options once, then hold the run folder for the block (`RunFolder.claimed`: created or
    adopted, locked, removed again when the run fails before its first checkpoint), all before any
    decoding. When resuming, yields the stored record, on the device asked for now."""
    if not config.resume:
        _check_start(run, config, args)
        folders.check_free(run.path.absolute().parent if not run.path.exists() else run.path,
                           RUN_SIZE_FACTOR * _file_size(model), "a run of this model (artifacts, checkpoints, model)")
    with run.claimed(config.resume):
        stored = None
        if config.resume:
            stored = run.resume_record()
            if config.epochs is not None and config.epochs != stored.config.epochs:
                _extend(run, stored, config.epochs)
            if config.qat and not stored.config.qat:
                raise FtonnxError(f"{run} was trained without --qat, and --resume continues a run as it started; "
                                  "drop --qat or start a new run")
            stored.config = dataclasses.replace(stored.config, resume=True, device=config.device, ray=config.ray)
            if not isinstance(stored.source, dict) or not set(source_keys) <= set(stored.source):
                raise FtonnxError(f"{run.config_path}: damaged: its source lacks {', '.join(source_keys)}; "
                                  "was it written by another command?")
            _check_start(run, stored.config, stored.data_args)
        yield stored


def _check_start(run: RunFolder, config: TrainConfig, args: dict[str, Any]) -> None:
    """The options, the device, and where the run goes: not inside the data, and the data not inside it."""
    config.validate()
    check_device(config.device)
    if config.ray:
        cluster.require()
    folders.check_apart(run.path, [args.get("data"), args.get("val")], "--out")


def _file_size(path: str | os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # loading it will say what is wrong


def _extend(run: RunFolder, stored: RunRecord, epochs: int) -> None:
    """Make the stored run one of `epochs` epochs, in RUN/config.json too; refuse to end before the epochs
    it has trained, or to train on after it stopped early."""
    last = run.check_start(True)
    done, was = last["epoch"], stored.config.epochs
    if last.get("stopped"):
        raise FtonnxError(f"{run} stopped early after epoch {done} ({last['stopped']}); it trains no further: "
                          "resume without --epochs to export it, or start a new run")
    if epochs < done:
        raise FtonnxError(f"{run} has trained {done} epochs already; --epochs must be at least {done}")
    stored.config = dataclasses.replace(stored.config, epochs=epochs)
    stored.config.validate()
    stored.extensions.append({"after_epoch": done, "from": was, "to": epochs})
    run.write_record(stored)
    log(f"{run}: {was} -> {epochs} epochs; the learning-rate schedule now spans {epochs} epochs")


def _datasets(args: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """Training and validation sets; training needs both (best epoch, reported top-1)."""
    train_set, val_set = discover(**args)
    if val_set is None:
        raise FtonnxError("no validation images: DATA needs train/ and val/, or pass --val DIR or --val-split F "
                          "(with --table: --split-column, --val-table or --val-split F)")
    return train_set, val_set


def _datasets_and(args: dict[str, Any], load: Callable[[str], onnx.ModelProto],
                  path: str) -> tuple[tuple[Dataset, Dataset], onnx.ModelProto]:
    """The data `args` describe, found (listed and every image's header read) in a thread while the model at
    `path` loads in this one; a fault in the data is reported before one in the model, as if in turn."""
    with ThreadPoolExecutor(1, thread_name_prefix="ftonnx-data") as pool:
        found = pool.submit(_datasets, args)
        try:
            model = load(path)
        finally:
            datasets = found.result()
    return datasets, model


def _run(model: onnx.ModelProto, datasets: tuple[Dataset, Dataset], run: RunFolder, record: RunRecord,
         stored: RunRecord | None, report: bool) -> TrainResult:
    """Train `model` on images, through the cached prefix when it can (with `--qat`, fake-quantised and the
    prefix in int8), export RUN/model.onnx and, with `report`, write the run's report."""
    meta, name = _checked(model, datasets[0])
    trainable = trainable_parameters(model, record.config.freeze)
    backbone_trains = any(p not in set(meta.head_params) for p in trainable)
    counts = np.bincount([label for _, label in datasets[0].samples], minlength=len(datasets[0].classes)).tolist()
    given = record.config
    config = record.config = given.resolved(backbone_trains=backbone_trains, class_counts=counts)
    idle = idle_options(config, plan_strategy(model, config, trainable))  # checks --delta-layers before any work
    if idle:
        log(f"ftonnx: no backbone parameter trains under --freeze {config.freeze}, so {', '.join(idle)} "
            f"{'has' if len(idle) == 1 else 'have'} no effect")
    if stored is not None and not stored.cache:
        cut, why = [], "resuming a run trained through the whole graph"
    else:
        cut, why = plan(model, trainable, enabled=not config.no_cache, augment=config.augment,
                        views=config.cache_views)
    qat = _qat_calibration(model, datasets[0], run, stored is not None) if config.qat else None
    with contextlib.ExitStack() as cleanup:
        if cut:
            trained, batches, val = _cached(model, cut, datasets, run, record, cleanup, qat)
            if not backbone_trains:
                config = record.config = _head_rate(given, record.cache["feature_rms"], counts)
        else:
            record.no_cache_reason = why
            if config.ray:
                log(f"--ray: not used, as there is no activation cache to compute ({why})")
            trained, batches, val = _uncached(model, name, datasets, meta.preprocess, config, why)
        result = train_loop(trained, batches, val, run, config, trainable, record, qat=qat and qat.plan)
    if qat is not None:
        _store_qat_ranges(run, model)
    best = {k: result.best[k] for k in ("epoch", "val_top1", "val_loss", "train_loss")}
    result.model_path = export_inference(model, result.weights, run.model_path, trained=best)
    result.report_path = write_report(run.path) if report else None
    return result


def _checked(model: onnx.ModelProto, train_set: Dataset) -> tuple[metadata.Meta, str]:
    """The model's metadata and image input, checked against the data: labels for its classes, an input the
    preprocessing fits."""
    meta = metadata.read(model)
    if meta.labels is None:
        raise FtonnxError("the model's metadata has no class labels; add a head with `ftonnx head` or use "
                          "`ftonnx finetune`")
    check_classes(meta.labels, train_set.classes, hint="give a head for these classes (`ftonnx finetune`)")
    name = _image_input(model)
    meta.preprocess.check_input(value_shape(next(i for i in model.graph.input if i.name == name)), name)
    return meta, name


def _qat_calibration(model: onnx.ModelProto, train_set: Dataset, run: RunFolder, resuming: bool) -> QatCalibration:
    """`--qat`'s int8 calibration: on the training images as `ftonnx export --int8` calibrates, recorded in
    RUN/quantisation.json; a resumed run reuses the record, so that it trains with the very same scales."""
    from ftonnx.export.qat import calibrate_qat
    from ftonnx.export.quantize import CALIBRATION_CAP, calibration_batches

    stored = run.read_quantisation() if resuming else None
    count = min(CALIBRATION_CAP, len(train_set.samples))
    start = time.monotonic()
    batches = None if stored else calibration_batches(train_set, metadata.read(model).preprocess, count)
    qat = calibrate_qat(model, batches, stored, workdir=run.path)
    if stored is None:
        run.write_quantisation(qat.record())
    log(f"qat: int8 ranges {'from ' + str(run.quantisation_path) if stored else f'calibrated on {qat.images} images'}"
        f" ({time.monotonic() - start:.1f} s): {len(qat.plan.activations)} activations and {len(qat.plan.weights)} "
        "weights quantised")
    return qat


def _store_qat_ranges(run: RunFolder, model: onnx.ModelProto) -> None:
    """RUN/quantisation.json's "ranges": what `ftonnx export RUN --int8` quantises with, the calibrated ranges
    with those learned at the best epoch; graph outputs, which trained in float, are left to the export."""
    record = run.read_quantisation()
    manifest = (Artifacts(run.artifacts).manifest() or {}).get("qat")
    if record is None or manifest is None:
        raise FtonnxError(f"{run}: a --qat run without its quantisation record or artifacts; start a new run")
    outputs = {o.name for o in model.graph.output}
    ranges = {t: r for t, r in record["calibrated"].items() if t not in outputs}
    learned = learned_ranges(run.path, manifest)
    run.write_quantisation({**record, "ranges": {**ranges, **learned}, "learned": sorted(learned)})


def _head_rate(given: TrainConfig, feature_rms: float, class_counts: list[int]) -> TrainConfig:
    """The options of a head-only run, its default rate suited to the scale of the (cached) features."""
    config = given.resolved(backbone_trains=False, feature_rms=feature_rms, class_counts=class_counts)
    if given.lr is None and feature_rms < FEATURE_RMS:
        log(f"head learning rate {config.lr:.3g}: the features' RMS is {feature_rms:.3g}, below the {FEATURE_RMS} "
            f"the default 1e-3 suits (see --lr)")
    return config


def write_report(run_dir: str | os.PathLike) -> Path | None:
    """RUN/report.html for a finished run, or None: a missing `report` extra or a report that cannot be
    written (say, the data has moved) is one line in the log, never the failure of a finished training."""
    from ftonnx import report

    if not report.available():
        log(f"report: not written; {report.INSTALL} adds RUN/report.html (then `ftonnx report {run_dir}`)")
        return None
    try:
        return report.write_run_report(run_dir)
    except FtonnxError as exc:
        log(f"report: not written ({exc}); `ftonnx report {run_dir}` tries again")
        return None


def _image_input(model: onnx.ModelProto) -> str:
    """The name of the model's one image input, the key of every batch."""
    inputs = GraphIndex(model).inputs
    if len(inputs) != 1:
        raise FtonnxError(f"the model has {len(inputs)} inputs ({', '.join(inputs)}); an image classifier has one")
    return inputs[0]


def _announce(train_set: Dataset, val_set: Dataset) -> None:
    """What training will see (once every check has passed, so that an error stays the only line)."""
    for path, reason in train_set.skipped + val_set.skipped:
        log(f"ftonnx: skipped {path}: {reason}")
    classes = train_set.classes
    log(f"data: {len(train_set.samples)} training and {len(val_set.samples)} validation images, "
        f"{len(classes)} classes ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")


def _uncached(model: onnx.ModelProto, name: str, datasets: tuple[Dataset, Dataset], preprocess: metadata.Preprocess,
              config: TrainConfig, why: str) -> tuple[onnx.ModelProto, Batches, Batches]:
    """The whole model and its image batches (augmented per the config), decoded every epoch."""
    train_set, val_set = datasets
    _announce(train_set, val_set)
    log(f"no activation cache: {why}")
    loader = Loader(train_set, preprocess, batch_size=config.batch_size, shuffle=True, augment=config.augment,
                    seed=config.seed)
    val_loader = Loader(val_set, preprocess, batch_size=config.batch_size)
    return model, ImageBatches(loader, name), ImageBatches(val_loader, name)


def _cached(model: onnx.ModelProto, cut: list[str], datasets: tuple[Dataset, Dataset], run: RunFolder,
            record: RunRecord, cleanup: contextlib.ExitStack,
            qat: QatCalibration | None = None) -> tuple[onnx.ModelProto, Batches, Batches]:
    """Split at `cut`, run the frozen prefix (with `qat`, its int8 version) once per image; the suffix and
    batches of its cached input activations. Records the cache in `record`; spill files in RUN/cache live
    until `cleanup` closes."""
    try:
        prefix, suffix = split(model, cut)
    except FtonnxError as exc:
        raise FtonnxError(f"{exc}; pass --no-cache to train through the whole graph") from None
    if qat is not None:
        from ftonnx.export.qat import int8_prefix

        prefix = int8_prefix(qat, cut)
    config, (train_set, val_set) = record.config, datasets
    views = config.cache_views
    _announce(train_set, val_set)
    log(f"activation cache: frozen prefix{' in int8 (--qat)' if qat else ''} computed once for {len(train_set.samples)}"
        f"{f'x{views} augmented views' if views > 1 else ''}+{len(val_set.samples)} images "
        f"(boundary: {', '.join(cut)})")
    start = time.monotonic()
    cleanup.callback(_remove_if_empty, run.cache_dir)
    if config.ray:
        cache, val_cache = _ray_caches(prefix, datasets, run, config, record.data_args.get("strict", False), cleanup)
    else:
        cache, val_cache = _build_caches(prefix, datasets, run, config, cleanup)
    nbytes, on_disk = cache.nbytes + val_cache.nbytes, cache.on_disk or val_cache.on_disk
    seconds = time.monotonic() - start
    log(f"activation cache: {_size(nbytes)}{f', spilled to {run.cache_dir}' if on_disk else ' in memory'}, "
        f"built in {seconds:.1f} s")
    record.cache = {"boundary": cut, "views": views, "on_disk": on_disk, "bytes": nbytes, "feature_rms": cache.rms,
                    "seconds": seconds, **({"ray": config.ray} if config.ray else {})}
    bs = config.batch_size
    return suffix, CacheBatches(cache, bs, seed=config.seed), CacheBatches(val_cache, bs, shuffle=False)


def _build_caches(prefix: onnx.ModelProto, datasets: tuple[Dataset, Dataset], run: RunFolder, config: TrainConfig,
                  cleanup: contextlib.ExitStack) -> list[ActivationCache]:
    """The training set's activations (`cache_views` views) and the validation set's, sharing the memory
    limit; each is closed (its spill files deleted) when `cleanup` closes."""
    caches: list[ActivationCache] = []
    limit = config.cache_mem or default_mem_limit()
    session = PrefixSession(prefix, config.device)  # opening in the background; one for both data sets
    for dataset, n in zip(datasets, (config.cache_views, 1)):
        with Progress(len(dataset.samples) * n, "caching activations") as bar:
            caches.append(cleanup.enter_context(contextlib.closing(ActivationCache.build(
                prefix, dataset, views=n, augment=config.augment if n > 1 else "none", seed=config.seed,
                mem_limit=limit, spill_dir=run.cache_dir, device=config.device, progress=bar.update,
                session=session))))
        limit = max(limit - _in_memory(caches[-1]), 1)
    return caches


def _ray_caches(prefix: onnx.ModelProto, datasets: tuple[Dataset, Dataset], run: RunFolder, config: TrainConfig,
                strict: bool, cleanup: contextlib.ExitStack) -> list[ActivationCache]:
    """The caches of `_build_caches`, computed in one job on the Ray cluster of `--ray` (`ftonnx.train.raycache`),
    which is connected to (or started, and stopped) around it."""
    from ftonnx.train.raycache import build_caches

    sets = list(zip(datasets, (config.cache_views, 1)))
    with cluster.connected(config.ray) as where:
        log(f"activation cache: computed on Ray, {where}")
        with Progress(sum(len(d.samples) * n for d, n in sets), "caching activations on Ray") as bar:
            caches = build_caches(prefix, sets, augment=config.augment, seed=config.seed,
                                  mem_limit=config.cache_mem or default_mem_limit(), spill_dir=run.cache_dir,
                                  device=config.device, strict=strict, progress=bar.update)
    return [cleanup.enter_context(contextlib.closing(cache)) for cache in caches]


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _size(nbytes: int) -> str:
    """A byte count for people: 1.5 KiB, 12.3 MiB, 2.0 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes / 1024:.1f} KiB"


def _in_memory(cache: ActivationCache) -> int:
    """Bytes of `cache` held in memory rather than in spill files."""
    return sum(a.nbytes for a in cache.arrays.values() if not isinstance(a, np.memmap))
