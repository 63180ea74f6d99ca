"""`ftonnx meta`: write preprocessing and labels into a model once, for a model you will reuse."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli._options import CommaList, preprocess_flags, preprocess_options
from ftonnx.cli._output import echo, progress_line


@click.command("meta")
@click.argument("model")
@click.option("-o", "--output", required=True, help="ONNX file to write (a copy of MODEL with the metadata).")
@click.option("--labels", type=CommaList(), help="Class names of the model's output, comma-separated, in order.")
@click.option("--labels-file", type=click.Path(dir_okay=False),
              help="A text file of class names, one per line, in order (e.g. ImageNet's 1000).")
@click.option("--data", type=click.Path(file_okay=False),
              help="Images for --preprocess auto to judge on (an image folder; labels are not read from it).")
@preprocess_options
def command(model: str, output: str, labels: list[str] | None, labels_file: str | None, data: str | None,
            **opts: Any) -> None:
    """Record how MODEL takes images (--preprocess and overrides) and its class names (--labels) in its
    metadata, so that later commands need no flags; shows the result as `ftonnx inspect` does."""
    from ftonnx.data import discover
    from ftonnx.graph import load
    from ftonnx.graph.inspect import format_summary, summarize
    from ftonnx.graph.io import check_output_path, save_model
    from ftonnx.graph.labels import with_labels
    from ftonnx.preprocess import describe, resolve
    from ftonnx.preprocess.use import recorded

    flags = preprocess_flags(opts)
    check_output_path(output)
    images = discover(data)[0] if data else None
    result = with_labels(recorded(load(model), flags, images, say=progress_line),
                         labels, labels_file)
    save_model(result, output)
    summary = summarize(result, preprocess=describe(resolve(result)))
    click.echo(format_summary(summary))
    echo(f"wrote {output}")
