"""`ftonnx finetune`: cut a pretrained model, add a head for the data's classes, train and export."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli.train import report, split_options, train_options


@click.command("finetune")
@click.argument("pretrained", type=click.Path(dir_okay=False))
@click.option("--node", "node_spec", default="auto",
              help="Where to cut: node name, tensor name, op type or 'auto' (the recommended cut, after pooling).")
@click.option("--last", is_flag=True, help="Cut at the last of several nodes --node matches.")
@click.option("--index", type=int, help="Cut at match K of several nodes --node matches.")
@click.option("--hidden", type=click.IntRange(min=1), help="Add a hidden layer this wide to the head.")
@click.option("--dropout", default=0.0, type=click.FloatRange(0, 1, max_open=True),
              help="Dropout ratio before the head's last linear layer.")
@click.option("--export", "export_variants", default="", metavar="int8,fp16,ort,on-device",
              help="After training, also export these variants to RUN/export (see `ftonnx export`).")
@train_options
def command(pretrained: str, node_spec: str, last: bool, index: int | None, hidden: int | None, dropout: float,
            export_variants: str, **opts: Any) -> None:
    """Finetune PRETRAINED on --data: cut at --node, new head (classes from the data), train, export
    RUN/model.onnx. When the frozen part is a prefix (e.g. the default --freeze backbone) and nothing
    augments the images, it runs once per image and the rest trains on its cached activations."""
    from pathlib import Path

    from ftonnx.export.edge import export_run, parse_variants
    from ftonnx.export.report import format_table
    from ftonnx.pipeline import finetune

    variants = parse_variants(export_variants)
    args, config = split_options(opts)
    result = finetune(pretrained, node_spec, args, opts["run_dir"], config, hidden=hidden, dropout=dropout,
                      last=last, index=index)
    report(result)
    if export_variants:
        out = Path(opts["run_dir"]) / "export"
        click.echo(format_table(export_run(result.run_dir, out, **variants,
                                           progress=lambda message: click.echo(message, err=True))))
        click.echo(f"exported: {out}")
