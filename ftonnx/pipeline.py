"""Whole runs from files: data discovery, loaders, the training loop and the export, for `ftonnx train`
(a model that already has a head) and `ftonnx finetune` (cut, head, train, export in one call).

A run stores its options and data arguments in RUN/config.json; `--resume` takes them from there
(and the pretrained model, node and head options for a finetune), so that it continues the very run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

from ftonnx import metadata
from ftonnx.errors import FtonnxError
from ftonnx.train.data import Dataset, Loader, discover
from ftonnx.train.freeze import trainable_parameters
from ftonnx.train.loop import CONFIG, TrainConfig, TrainResult, check_device, check_run_dir
from ftonnx.train.loop import train as train_loop
from ftonnx.train.progress import log


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
         run_dir: str | os.PathLike, config: TrainConfig, source: dict[str, Any]) -> TrainResult:
    """Train `model` on images: loaders per the model's preprocessing, augmentation per the freeze policy."""
    config.validate()
    check_run_dir(run_dir, config)
    train_set, val_set = datasets
    _check_labels(model, train_set.classes)
    meta = metadata.read(model)
    if meta.preprocess is None:
        raise FtonnxError("the model's metadata has no preprocessing; export it with ftonnx or add it with `ftonnx head`")
    head = set(meta.head_params)
    augment = config.augment
    if augment is None:
        augment = any(p not in head for p in trainable_parameters(model, config.freeze))
    name = _image_input(model)
    loader = Loader(train_set, meta.preprocess, batch_size=config.batch_size, shuffle=True, augment=augment,
                    seed=config.seed)
    val_loader = Loader(val_set, meta.preprocess, batch_size=config.batch_size)
    _announce(train_set, val_set)
    return train_loop(model, lambda epoch: (({name: x}, y) for x, y in loader.epoch(epoch)),
                      lambda: (({name: x}, y) for x, y in val_loader.epoch(0)), run_dir, config,
                      steps_per_epoch=len(loader), run_info={"data_args": args, "source": source, "augment_used": augment})


def train(model_path: str | os.PathLike, args: dict[str, Any], run_dir: str | os.PathLike,
          config: TrainConfig) -> TrainResult:
    """`ftonnx train`: train MODEL (which has a `logits` head and labels) on the data `args` describe."""
    from ftonnx.graph import load

    stored = _stored(run_dir, config)
    if stored is not None:
        config, args, model_path = _resumed_config(stored, config), stored["data_args"], stored["source"]["model"]
    config.validate()
    check_device(config.device)
    model = load(model_path)
    return _run(model, _datasets(args), args, run_dir, config, {"model": str(Path(model_path).absolute())})


def finetune(pretrained: str | os.PathLike, node_spec: str, data_args: dict[str, Any], run_dir: str | os.PathLike,
             config: TrainConfig, *, hidden: int | None = None, dropout: float = 0.0, last: bool = False,
             index: int | None = None) -> TrainResult:
    """Cut `pretrained` at `node_spec`, add a head for the data's classes, train and export (RUN/model.onnx)."""
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.head import add_head

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
    return _run(model, datasets, data_args, run_dir, config, source)
