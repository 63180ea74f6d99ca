"""`ftonnx finetune`: cut a pretrained model, add a head for the data's classes, train and export."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli._options import (
    EXPORT_VARIANTS,
    CommaList,
    echo_result,
    preprocess_flags,
    preprocess_options,
    split_train_options,
    train_options,
)
from ftonnx.cli._output import echo, progress_line


@click.command("finetune")
@click.argument("pretrained", type=click.Path(dir_okay=False))
@click.option("--node", "node_spec", default="auto",
              help="Where to cut: node name, tensor name, op type or 'auto' (the recommended cut, after pooling).")
@click.option("--last", is_flag=True, help="Cut at the last of several nodes --node matches.")
@click.option("--index", type=int, help="Cut at match K of several nodes --node matches.")
@click.option("--hidden", type=click.IntRange(min=1), help="Add a hidden layer this wide to the head.")
@click.option("--dropout", default=0.0, type=click.FloatRange(0, 1, max_open=True),
              help="Dropout ratio before the head's last linear layer.")
@click.option("--export", "export_variants", default="", type=CommaList(EXPORT_VARIANTS),
              help="After training, also export these variants to RUN/export (see `ftonnx export`).")
@train_options
@preprocess_options
def command(pretrained: str, node_spec: str, last: bool, index: int | None, hidden: int | None, dropout: float,
            export_variants: list[str], **opts: Any) -> None:
    """Finetune PRETRAINED on --data: cut at --node, new head (classes from the data), train, export
    RUN/model.onnx and write RUN/report.html. When the frozen part is a prefix (e.g. the default --freeze
    backbone) and nothing augments the images, it runs once per image and the rest trains on its cached
    activations."""
    from ftonnx.pipeline import finetune, write_report

    flags = preprocess_flags(opts)
    args, config = split_train_options(opts)
    report = not opts["no_report"]
    result = finetune(pretrained, node_spec, args, opts["run_dir"], config, hidden=hidden, dropout=dropout,
                      last=last, index=index, preprocess=flags, report=report and not export_variants)
    echo_result(result)
    if export_variants:
        from ftonnx.export.edge import export_run  # the edge exports' imports, only when they are asked for
        from ftonnx.export.report import format_table
        from ftonnx.train.run import RunFolder

        out = RunFolder(result.run_dir).export_dir
        flags = {v.replace("-", "_"): v in export_variants for v in EXPORT_VARIANTS}
        click.echo(format_table(export_run(result.run_dir, out, **flags,
                                           progress=progress_line)))
        echo(f"exported: {out}")
        if report and (page := write_report(result.run_dir)) is not None:
            echo(f"report: {page}")
