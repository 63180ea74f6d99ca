"""`ftonnx demo`: the whole pipeline on an embedded default, with no data of the user's."""

from __future__ import annotations

from pathlib import Path

import click

from ftonnx.cli._output import echo


@click.command("demo")
@click.option("--out", default="demo-run", type=click.Path(file_okay=False),
              help="Folder for the digits, the zoo model and the run.")
@click.option("--epochs", default=30, type=click.IntRange(min=1),
              help="Training epochs (cheap: the head trains on cached activations).")
@click.option("--seed", default=0, type=int, help="Seed of the split, the head and the data order.")
def command(out: str, epochs: int, seed: int) -> None:
    """Finetune the zoo's EfficientNet-Lite0 on scikit-learn's handwritten digits: export, cut, head,
    train, export and evaluate, ending with the accuracy reached and where the model is."""
    from ftonnx.demo import run_demo

    report = run_demo(Path(out), epochs=epochs, seed=seed)
    click.echo(f"held-out digits: top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f} "
               f"over {report['count']} images")
    echo(f"model: {report['model']}")
    if report["report"]:
        echo(f"report: {report['report']} (open it in a browser)")
    echo(f"try:   ftonnx predict {report['model']} {Path(out) / 'digits' / 'val' / '7'}/*.png --top 3")
