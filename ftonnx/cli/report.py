"""`ftonnx report`: (re)write a run's report page and pictures."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("run", type=click.Path())
@click.option("--export", "export_dir", type=click.Path(),
              help="Show this `ftonnx export` folder's report [default: RUN/export when it holds one].")
def command(run: str, export_dir: str | None) -> None:
    """Write RUN/report.html, RUN/curves.png and RUN/confusion.png for a finished run: curves per epoch,
    the confusion matrix, per-class precision, recall and F1, the misclassified validation images, the
    run's options, data, timing and cache, and the export. Needs the `report` extra."""
    from ftonnx.report import write_run_report

    click.echo(f"wrote {write_run_report(run, export_dir=export_dir)}")
