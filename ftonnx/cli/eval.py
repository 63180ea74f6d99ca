"""`ftonnx eval`: loss, top-1/top-5, per-class precision, recall and F1, and the confusion matrix of a
classifier; with --report DIR, the same report page as a training run's."""

from __future__ import annotations

import json
from typing import Any

import click

from ftonnx.cli._options import preprocess_flags, preprocess_options
from ftonnx.cli._output import echo
from ftonnx.errors import printable


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="One folder of images per class; or a folder with train/ and val/ (val is evaluated); "
                   "or the image root of --list.")
@click.option("--list", "list_file", type=click.Path(dir_okay=False),
              help="List file of 'relative/path label' lines (MNN's layout), paths relative to --data.")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Images per inference batch.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--report", "report_dir", type=click.Path(),
              help="Also write DIR/report.html and DIR/confusion.png: confusion matrix, per-class metrics and the "
                   "misclassified images (needs the `report` extra).")
@preprocess_options
def command(model: str, data: str, list_file: str | None, batch_size: int, strict: bool, as_json: bool,
            report_dir: str | None, **opts: Any) -> None:
    """Evaluate MODEL (.onnx or .ort) on labelled images; the classes must be the model's labels."""
    from ftonnx.data import discover
    from ftonnx.evaluate import evaluate, preprocessing
    from ftonnx.report import require, write_eval_report

    if report_dir is not None:
        require()
    train, val = discover(data, list_file=list_file, strict=strict)
    dataset = val if val is not None else train
    for path, reason in train.skipped + (val.skipped if val is not None else []):
        echo(f"ftonnx: skipped {path}: {reason}", err=True)
    preprocess = preprocessing(model, preprocess_flags(opts), dataset)
    if report_dir is None:
        result = evaluate(model, dataset, batch_size=batch_size, preprocess=preprocess)
    else:
        page, result = write_eval_report(report_dir, model, dataset, data=data, list_file=list_file,
                                         batch_size=batch_size, preprocess=preprocess)
        echo(f"report: {page}", err=True)
    click.echo(json.dumps(result) if as_json else _table(result))


def _table(result: dict) -> str:
    """The metrics as a compact table, each line escaped; the confusion matrix only when it fits on a screen."""
    top5 = f"  top5 {result['top5']:.4f}" if "top5" in result else ""
    macro = result["macro"]
    lines = [f"images {result['count']}  loss {result['loss']:.4f}  top1 {result['top1']:.4f}{top5}  "
             f"macro precision {_value(macro['precision'])}  recall {_value(macro['recall'])}  "
             f"F1 {_value(macro['f1'])}"]
    names = list(result["per_class"])
    width = max(len(n) for n in names + ["class"])
    show_confusion = len(names) <= 12
    header = f"{'class':<{width}}  {'prec.':>6}  {'recall':>6}  {'F1':>6}  {'n':>5}"
    if show_confusion:
        header += "  confusion (columns: predicted, in class order)"
    lines.append(header)
    for name, row in zip(names, result["confusion"]):
        line = (f"{name:<{width}}  {_value(result['precision'][name])}  {_value(result['recall'][name])}  "
                f"{_value(result['f1'][name])}  {result['support'][name]:>5}")
        if show_confusion:
            line += "  " + " ".join(f"{v:>5}" for v in row)
        lines.append(line)
    return "\n".join(map(printable, lines))


def _value(value: float | None) -> str:
    """A metric in six characters; a dash when it is undefined."""
    return f"{'-' if value is None else f'{value:.4f}':>6}"
