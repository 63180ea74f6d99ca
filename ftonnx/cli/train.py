"""`ftonnx train`: train a model that already has a head (`logits`, labels) with ONNX Runtime."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli._options import echo_result, preprocess_flags, preprocess_options, split_train_options, train_options


@click.command("train")
@click.argument("model", type=click.Path(dir_okay=False))
@train_options
@preprocess_options
def command(model: str, **opts: Any) -> None:
    """Train MODEL (a classifier with a `logits` output and labels, e.g. from `ftonnx head`) on --data and
    write the run to --out, ending with RUN/model.onnx (outputs logits and probabilities) and RUN/report.html."""
    from ftonnx.pipeline import train

    flags = preprocess_flags(opts)
    args, config = split_train_options(opts)
    echo_result(train(model, args, opts["run_dir"], config, preprocess=flags, report=not opts["no_report"]))
