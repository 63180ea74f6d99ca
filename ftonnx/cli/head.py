"""`ftonnx head`: attach a new, freshly initialised classifier to a backbone."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli._options import CommaList, preprocess_flags, preprocess_options
from ftonnx.cli._output import echo


@click.command("head")
@click.argument("backbone")
@click.option("--classes", "num_classes", type=int, help="Number of classes (at least 2) [default: from --data].")
@click.option("--data", type=click.Path(file_okay=False),
              help="Take the classes (count and names) from this image folder, as training will: train/ and "
                   "val/, or one folder per class.")
@click.option("-o", "--output", required=True, help="ONNX file to write.")
@click.option("--hidden", type=int, default=None, help="Add a hidden layer this wide: linear, ReLU, dropout, linear.")
@click.option("--dropout", type=float, default=0.0, help="Dropout ratio before the last linear layer.")
@click.option("--seed", type=int, default=0, help="Seed of the head's initialisation.")
@click.option("--labels", default=None, type=CommaList(),
              help="Class names, comma-separated, in class-index order [default: from --data, else class_0, ...].")
@preprocess_options
def command(backbone: str, num_classes: int | None, data: str | None, output: str, hidden: int | None,
            dropout: float, seed: int, labels: list[str] | None, **opts: Any) -> None:
    """Add a classifier producing `logits` on BACKBONE's feature output (see `ftonnx cut`)."""
    from ftonnx.graph import load
    from ftonnx.graph.head import add_head, head_classes
    from ftonnx.graph.io import check_output_path, save_model
    from ftonnx.metadata import read
    from ftonnx.preprocess.use import recorded

    flags = preprocess_flags(opts)
    check_output_path(output)
    labels = head_classes(num_classes, labels, _data_classes(data) if data else None)
    model = recorded(load(backbone), flags)
    result = add_head(model, len(labels), hidden=hidden, dropout=dropout, seed=seed, labels=labels)
    save_model(result, output)
    meta = read(result)
    echo(f"wrote {output}: head on {meta.feature} -> logits ({len(labels)} classes: "
               f"{', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''}), "
               f"parameters {', '.join(meta.head_params)}")


def _data_classes(data: str) -> list[str]:
    from ftonnx.data import discover

    return discover(data)[0].classes
