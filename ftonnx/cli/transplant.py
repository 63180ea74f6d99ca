"""`ftonnx transplant`: copy a pretrained model's parameters into another network by name and shape."""

from __future__ import annotations

import click

from ftonnx.cli._output import echo, echo_lines


@click.command("transplant")
@click.option("--from", "pretrained", required=True, type=click.Path(dir_okay=False),
              help="Pretrained ONNX model whose parameter values are copied.")
@click.option("--to", "target", required=True, type=click.Path(dir_okay=False),
              help="ONNX model (same names, maybe other class count) that receives them.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the target with the copied parameters.")
def command(pretrained: str, target: str, output: str) -> None:
    """Copy every parameter whose name and shape match from --from into --to; list the dropped and unplaced."""
    from ftonnx.graph import load
    from ftonnx.graph.io import check_output_path, save_model
    from ftonnx.graph.transplant import transplant

    check_output_path(output)
    model, report = transplant(load(pretrained), load(target))
    save_model(model, output)
    echo_lines(report.lines())
    echo(f"wrote {output}")
