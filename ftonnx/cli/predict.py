"""`ftonnx predict`: the most probable classes of images, with their probabilities."""

from __future__ import annotations

import json
from typing import Any

import click

from ftonnx.cli._options import preprocess_flags, preprocess_options
from ftonnx.cli._output import echo


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", default=5, type=click.IntRange(min=1), help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list: image, then labels with probabilities.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Also write image,label,probability rows (the --top classes of each image) to this new file.")
@preprocess_options
def command(model: str, images: tuple[str, ...], top: int, as_json: bool, csv_path: str | None, **opts: Any) -> None:
    """Classify IMAGES (files, or folders searched for image files) with MODEL (.onnx or .ort), using its labels
    and preprocessing."""
    from ftonnx.data import image_files
    from ftonnx.evaluate import predict, preprocessing, write_predictions_csv
    from ftonnx.files import check_new_file

    flags = preprocess_flags(opts)
    if csv_path:
        check_new_file(csv_path)
    files = image_files(list(images))
    results = predict(model, files, top=top, preprocess=preprocessing(model, flags, _as_dataset(files)))
    if csv_path:
        write_predictions_csv(csv_path, files, results)
    if as_json:
        click.echo(json.dumps([{"image": image, "top": [{"label": label, "probability": p} for label, p in best]}
                               for image, best in zip(files, results)]))
        return
    for image, best in zip(files, results):
        echo(image)
        for label, p in best:
            echo(f"  {p:.4f}  {label}")


def _as_dataset(files: list[str]) -> Any:
    """The images as an unlabelled data set (what `--preprocess auto` judges on)."""
    from ftonnx.data import Dataset

    return Dataset([(f, 0) for f in files], ["?"])
