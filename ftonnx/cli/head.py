"""`ftonnx head`: attach a new, freshly initialised classifier to a backbone."""

from __future__ import annotations

import click

from ftonnx.cli._options import CommaList


@click.command("head")
@click.argument("backbone")
@click.option("--classes", "num_classes", required=True, type=int, help="Number of classes (at least 2).")
@click.option("-o", "--output", required=True, help="ONNX file to write.")
@click.option("--hidden", type=int, default=None, help="Add a hidden layer this wide: linear, ReLU, dropout, linear.")
@click.option("--dropout", type=float, default=0.0, help="Dropout ratio before the last linear layer.")
@click.option("--seed", type=int, default=0, help="Seed of the head's initialisation.")
@click.option("--labels", default=None, type=CommaList(),
              help="Class names, comma-separated, in class-index order (default: class_0, class_1, ...).")
def command(backbone: str, num_classes: int, output: str, hidden: int | None, dropout: float, seed: int,
            labels: list[str] | None) -> None:
    """Add a classifier producing `logits` on BACKBONE's feature output (see `ftonnx cut`)."""
    from ftonnx.graph import load
    from ftonnx.graph.head import add_head
    from ftonnx.graph.io import check_output_path, save_model
    from ftonnx.metadata import read

    check_output_path(output)
    result = add_head(load(backbone), num_classes, hidden=hidden, dropout=dropout, seed=seed, labels=labels)
    save_model(result, output)
    meta = read(result)
    click.echo(f"wrote {output}: head on {meta.feature} -> logits ({num_classes} classes), "
               f"parameters {', '.join(meta.head_params)}")
