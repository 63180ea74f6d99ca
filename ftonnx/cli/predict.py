"""`ftonnx predict`: the most probable classes of images, with their probabilities."""

from __future__ import annotations

import json

import click


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--top", default=5, type=click.IntRange(min=1), help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list: image, then labels with probabilities.")
def command(model: str, images: tuple[str, ...], top: int, as_json: bool) -> None:
    """Classify IMAGES with MODEL (.onnx or .ort), using its labels and preprocessing."""
    from ftonnx.evaluate import predict

    results = predict(model, list(images), top=top)
    if as_json:
        click.echo(json.dumps([{"image": image, "top": [{"label": label, "probability": p} for label, p in best]}
                               for image, best in zip(images, results)]))
        return
    for image, best in zip(images, results):
        click.echo(image)
        for label, p in best:
            click.echo(f"  {p:.4f}  {label}")
