"""`ftonnx inspect`: what a model contains and where to cut off its classifier."""

from __future__ import annotations

import json

import click


@click.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a summary.")
def command(model: str, as_json: bool) -> None:
    """Show MODEL's producer, opsets, inputs/outputs, nodes with shapes and the recommended cut point."""
    from ftonnx.graph import load_reporting
    from ftonnx.graph.inspect import format_summary, summarize

    loaded, changes = load_reporting(model)
    summary = summarize(loaded, changes=changes)
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))
