"""`ftonnx inspect`: what a model contains, how it takes images, and where to cut off its classifier."""

from __future__ import annotations

import json
from typing import Any

import click

from ftonnx.cli._options import preprocess_flags, preprocess_options


@click.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (every node included).")
@click.option("--nodes", is_flag=True, help="Also list every node with its output shapes.")
@preprocess_options
def command(model: str, as_json: bool, nodes: bool, **opts: Any) -> None:
    """Show MODEL's producer, inputs and outputs, the recommended cut point, and its preprocessing with where
    each value comes from (metadata, flags, input shape, or missing); --nodes adds the node table."""
    from ftonnx.graph import load_reporting
    from ftonnx.graph.inspect import format_summary, summarize
    from ftonnx.preprocess import describe, resolve

    flags = preprocess_flags(opts)
    loaded, changes = load_reporting(model)
    summary = summarize(loaded, changes=changes, preprocess=describe(resolve(loaded, flags)))
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary, nodes=nodes))
