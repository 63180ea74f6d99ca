"""Options and parameter types the commands share; bad values fail while parsing, as one line and exit 2.

Imports stay light here (click only): every command's start-up pays for what this module imports.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import click

from ftonnx.cli._output import echo

EXPORT_VARIANTS = ("int8", "fp16", "ort", "on-device", "static", "pixels")


class Size(click.ParamType):
    """Bytes from a size such as "512M", "2G", "1.5GiB" or "100000" (binary units)."""

    name = "SIZE"
    _UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if match is None or float(match[1]) * self._UNITS[match[2].lower()] < 1:
            self.fail(f"{value!r} is not a size; give one such as 512M or 2G, or a number of bytes", param, ctx)
        return int(float(match[1]) * self._UNITS[match[2].lower()])


class RayAddress(click.ParamType):
    """--ray's value: a cluster's address, or `local` when none is given; the `ray` extra must be installed."""

    name = "ADDRESS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ftonnx import cluster
        from ftonnx.errors import FtonnxError

        try:
            cluster.require()
            return cluster.check_address(str(value).strip())
        except FtonnxError as exc:
            raise click.UsageError(str(exc), ctx) from None


class FreezePolicy(click.ParamType):
    """backbone, none, or until:SPEC with a non-empty SPEC (which node SPEC names is checked on the model)."""

    name = "backbone|none|until:SPEC"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text in ("backbone", "none") or (text.startswith("until:") and text[len("until:"):].strip()):
            return text
        self.fail(f"{text!r}: use backbone, none or until:SPEC (SPEC names a node)", param, ctx)


class ClassWeights(click.ParamType):
    """auto, or one positive number per class in class order (comma-separated)."""

    name = "auto|W1,W2,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | list[float]:
        if value == "auto" or isinstance(value, list):
            return value
        try:
            weights = [float(w) for w in str(value).split(",")]
        except ValueError:
            weights = []
        if not weights or not all(0 < w < float("inf") for w in weights):
            self.fail(f"{value!r}: use auto or positive numbers, one per class (e.g. 1,2.5)", param, ctx)
        return weights


class CommaList(click.ParamType):
    """A comma-separated list; with `choices`, each item must be one of them."""

    name = "A,B,..."

    def __init__(self, choices: tuple[str, ...] | None = None) -> None:
        self.choices = choices
        if choices:
            self.name = ",".join(choices)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        unknown = [v for v in items if self.choices and v not in self.choices]
        if unknown:
            self.fail(f"{unknown[0]!r} is not one of {', '.join(self.choices)}", param, ctx)
        return items


class KeepFloat(click.ParamType):
    """auto, none, or node names separated by commas (which nodes exist is checked on the model)."""

    name = "auto|none|NODE[,NODE...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if text in ("auto", "none"):
            return "auto" if text == "auto" else ()
        names = tuple(n.strip() for n in text.split(","))
        if not text or not all(names):
            self.fail(f"{value!r}: give auto, none, or node names separated by commas", param, ctx)
        return names


class HeightWidth(click.ParamType):
    """H or H,W (pixels)."""

    name = "H[,W]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            self.fail(f"{value!r}: give the input height, or height,width, in pixels", param, ctx)
        return (int(parts[0]), int(parts[-1]))


class PixelValues(click.ParamType):
    """One value or three for --mean/--std, in 0-255 units or 0-1 units (recognised by their range)."""

    name = "V[,V,V]"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        from ftonnx.errors import FtonnxError
        from ftonnx.preprocess import pixel_units

        if isinstance(value, tuple):
            return value
        try:
            return pixel_units([float(v) for v in str(value).split(",")], self.what)
        except ValueError:
            self.fail(f"{value!r}: give numbers separated by commas", param, ctx)
        except FtonnxError as exc:
            self.fail(str(exc), param, ctx)


PRESET_NAMES = ("imagenet", "inception", "caffe", "unit", "raw", "auto")


def preprocess_options(f: Callable) -> Callable:
    """How images become the model's input, for models whose metadata does not say (recorded in the
    models ftonnx writes, so it is given once)."""
    options = [
        click.option("--preprocess", "pp_preset", type=click.Choice(PRESET_NAMES),
                     help="Preprocessing preset: imagenet (torchvision, timm, Paddle), inception ((x-127.5)/127.5, "
                          "TF/Keras), caffe (BGR, mean subtracted), unit (x/255), raw (0-255), or auto (chosen by "
                          "the pretrained classifier's confidence on your images) [default: the model's metadata]."),
        click.option("--size", "pp_size", type=HeightWidth(),
                     help="Input height[,width] in pixels [default: the model's static input shape]."),
        click.option("--resize", "pp_resize", type=click.IntRange(min=1),
                     help="Scale the image to cover this (for the shorter side of --size), then centre-crop "
                          "[default: the presets' 0.875 crop, 256 for 224]."),
        click.option("--mean", "pp_mean", type=PixelValues("mean"),
                     help="Per-channel mean, in the model's channel order, in 0-255 units (123.675,116.28,103.53) "
                          "or 0-1 units (0.485,0.456,0.406), told apart by range."),
        click.option("--std", "pp_std", type=PixelValues("std"),
                     help="Per-channel standard deviation, 0-255 units (58.395,57.12,57.375) or 0-1 units "
                          "(0.229,0.224,0.225)."),
        click.option("--bgr", "pp_bgr", is_flag=True, help="The model takes BGR channel order."),
        click.option("--gray", "pp_gray", is_flag=True,
                     help="The model takes one grayscale channel [default: when its input has one channel]."),
        click.option("--nhwc", "pp_nhwc", is_flag=True,
                     help="The model takes N,H,W,C layout [default: from its input shape, else N,C,H,W]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def preprocess_flags(opts: dict[str, Any]) -> Any:
    """The PreprocessFlags of `preprocess_options`, removed from `opts`."""
    from ftonnx.preprocess import PreprocessFlags

    return PreprocessFlags(preset=opts.pop("pp_preset"), size=opts.pop("pp_size"), resize=opts.pop("pp_resize"),
                           mean=opts.pop("pp_mean"), std=opts.pop("pp_std"), bgr=opts.pop("pp_bgr"),
                           gray=opts.pop("pp_gray"), nhwc=opts.pop("pp_nhwc"))


# The data and training options `train` and `finetune` share, in the order --help shows them.
_TRAIN_OPTIONS = [
    click.option("--data", type=click.Path(file_okay=False),
                 help="Image folder: train/ and val/ with one folder per class, or one folder per class "
                      "(with --val or --val-split), or the image root of --list. Or give --table."),
    click.option("--out", "run_dir", required=True, type=click.Path(),
                 help="Run folder: model.onnx, metrics.jsonl, config.json, checkpoints/."),
    click.option("--val", type=click.Path(file_okay=False), help="Validation images, one folder per class."),
    click.option("--val-split", type=float, help="Hold out this fraction of each class for validation (seeded)."),
    click.option("--list", "list_file", type=click.Path(dir_okay=False),
                 help="List file of 'relative/path label' lines (MNN's layout), paths relative to --data."),
    click.option("--val-list", type=click.Path(dir_okay=False),
                 help="Validation list file, paths relative to --val or --data."),
    click.option("--labels", type=CommaList(),
                 help="Names of --list's or --table's integer labels 0, 1, ... (else: 0..K-1)."),
    click.option("--table",
                 help="Instead of --data: a Parquet or CSV table (or a folder of them; Parquet also as a URI such as "
                      "s3://...) with a row per image: its path relative to the table's folder, or (Parquet) its "
                      "bytes, and its label. Validation: --split-column, --val-table or --val-split."),
    click.option("--val-table", help="Validation table, with the same columns as --table."),
    click.option("--image-column", default="image", help="--table's column of image paths or bytes."),
    click.option("--label-column", default="label", help="--table's column of labels (names or 0..K-1)."),
    click.option("--split-column", help="--table's column saying train, val (or validation) or test for each row."),
    click.option("--epochs", type=click.IntRange(min=1),
                 help="Passes over the training images [default: 5]. With --resume: make the run one of N "
                      "epochs (a finished run trains on; the schedule is recomputed over N)."),
    click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Images per step."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                 help="Peak learning rate [default: adamw 1e-3 when only the head trains, 1e-4 when the "
                      "backbone trains too; sgd ten times that]."),
    click.option("--optimizer", default="adamw", type=click.Choice(["adamw", "sgd"]), help="Optimizer."),
    click.option("--weight-decay", type=click.FloatRange(min=0),
                 help="AdamW's decoupled weight decay; ORT's SGD has none [default: 1e-4 with adamw]."),
    click.option("--schedule", default="cosine", type=click.Choice(["cosine", "constant"]),
                 help="Learning rate after the warmup."),
    click.option("--warmup-epochs", type=click.IntRange(min=0),
                 help="Epochs of linear warmup [default: 1 when --epochs > 1, else 0]."),
    click.option("--freeze", default="backbone", type=FreezePolicy(),
                 help="What stays fixed: the backbone (only head.* trains), none (full finetune), or "
                      "everything up to node SPEC (the parameters after it train)."),
    click.option("--augment", type=click.Choice(["none", "light", "strong"]),
                 help="none; light: random resized crop and flip; strong: light, colour jitter and RandAugment "
                      "[default: light when a backbone parameter trains, else none]."),
    click.option("--no-augment", is_flag=True, help="Same as --augment none."),
    click.option("--no-cache", is_flag=True,
                 help="Train through the whole graph even when the frozen part is a prefix (by default its "
                      "activations are computed once per image and the rest trains on them)."),
    click.option("--cache-mem", type=Size(),
                 help="Activations kept in memory, e.g. 512M or 2G; the rest spill to RUN/cache "
                      "[default: 2G or a quarter of the RAM, whichever is less]."),
    click.option("--cache-views", default=1, type=click.IntRange(min=1),
                 help="Cache K randomly augmented views of each training image (one drawn per epoch), "
                      "augmented per --augment (light when it is not given)."),
    click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda"]),
                 help="cuda needs the CUDA build: pip install 'ftonnx[cuda]'."),
    click.option("--ray", type=RayAddress(), is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                 help="Compute the frozen prefix's activations on a Ray cluster (one ONNX Runtime session per "
                      "actor, --device in the actors): at ADDRESS (HOST:PORT, ray://HOST:PORT, auto), or without "
                      "one on a local cluster started for the run. Needs pip install 'ftonnx[ray]'."),
    click.option("--seed", default=0, type=int, help="Seed of data order, augmentation, split and head."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --out from its last checkpoint, with the options it started with."),
    click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it."),
    click.option("--no-report", is_flag=True,
                 help="Skip RUN/report.html (its evaluation of the model on the validation images); "
                      "`ftonnx report RUN` writes it later."),
]

# the finetuning strategies (ftonnx.train.strategy), after the training options in --help
_STRATEGY_OPTIONS = [
    click.option("--backbone-lr-mult", default=1.0, type=click.FloatRange(min=0, min_open=True),
                 help="Trainable backbone parameters learn at this fraction of the head's rate (e.g. 0.1)."),
    click.option("--l2sp", default=0.0, type=click.FloatRange(min=0), metavar="ALPHA",
                 help="L2-SP: add ALPHA/2 * ||w - w0||^2 over trainable backbone weights (pulls them towards "
                      "their pretrained values w0)."),
    click.option("--delta", default=0.0, type=click.FloatRange(min=0), metavar="ALPHA",
                 help="DELTA: keep feature maps of --delta-layers close to the pretrained network's, per "
                      "channel by attention (costs a forward of the trainable nodes before them per step)."),
    click.option("--delta-layers", type=CommaList(), metavar="SPEC,...",
                 help="Nodes whose outputs DELTA regularises [default: the feature map the head pools]."),
    click.option("--label-smoothing", default=0.0, type=click.FloatRange(0, 1, max_open=True), metavar="EPS",
                 help="Cross-entropy against (1 - EPS) * one-hot + EPS / classes."),
    click.option("--class-weights", type=ClassWeights(),
                 help="Weigh each class's loss: auto (inverse class frequency) or one weight per class."),
    click.option("--patience", default=0, type=click.IntRange(min=0),
                 help="Stop after this many epochs without a better --monitor (0: never stop early)."),
    click.option("--monitor", default="val_loss", type=click.Choice(["val_loss", "val_top1"]),
                 help="What --patience watches."),
    click.option("--qat", is_flag=True,
                 help="Quantisation-aware training: train (and validate) with int8 fake quantisation where the "
                      "int8 export quantises, scales calibrated on the training images and learned where training "
                      "changes the values; `ftonnx export RUN --int8` then uses those scales (CPU, AdamW)."),
]


def train_options(f: Callable) -> Callable:
    """The data, training and strategy options `train` and `finetune` share."""
    return functools.reduce(lambda decorated, option: option(decorated), reversed(_TRAIN_OPTIONS + _STRATEGY_OPTIONS),
                            f)


def split_train_options(opts: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(data_args, TrainConfig) from the shared options."""
    from ftonnx.pipeline import data_args
    from ftonnx.train.config import TrainConfig

    if opts["no_augment"] and opts["augment"] not in (None, "none"):
        raise click.UsageError(f"--no-augment contradicts --augment {opts['augment']}; give one of them")
    if (opts["data"] is None) == (opts["table"] is None):
        raise click.UsageError("give the images with --data FOLDER or --table FILE" if opts["data"] is None else
                               "give --data or --table, not both (a table's image paths are relative to its folder)")
    args = data_args(opts["data"], val=opts["val"], val_split=opts["val_split"], list_file=opts["list_file"],
                     val_list=opts["val_list"], seed=opts["seed"], strict=opts["strict"], labels=opts["labels"],
                     table=opts["table"], val_table=opts["val_table"], image_column=opts["image_column"],
                     label_column=opts["label_column"], split_column=opts["split_column"])
    names = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "warmup_epochs", "freeze",
             "device", "seed", "resume", "no_cache", "cache_mem", "cache_views", "backbone_lr_mult", "l2sp", "delta",
             "delta_layers", "label_smoothing", "class_weights", "patience", "monitor", "ray", "qat")
    config = TrainConfig(**{name: opts[name] for name in names},
                         augment="none" if opts["no_augment"] else opts["augment"])
    return args, config


def echo_result(result: Any) -> None:
    """The last lines of a run: its best val top-1, where the model is, and its report."""
    best = result.best
    click.echo(f"val top-1 {best['val_top1']:.4f} (epoch {best['epoch']}, val loss {best['val_loss']:.4f})")
    echo(f"model: {result.model_path}")
    if result.report_path is not None:
        echo(f"report: {result.report_path}")
