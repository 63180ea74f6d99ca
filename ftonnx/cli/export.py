"""`ftonnx export`: a finetuned RUN folder, or any classifier's ONNX file, to int8, fp16, ORT-format and
on-device training files, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ftonnx.cli._options import preprocess_flags, preprocess_options
from ftonnx.cli._output import echo, progress_line


@click.command("export")
@click.argument("source", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the models, report.json and on_device/ (created; same-named entries are replaced).")
@click.option("--int8", is_flag=True, help="Static int8 quantisation (QDQ, per-channel weights), calibrated on "
                                           "typical images.")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute; inputs and outputs stay float32.")
@click.option("--ort", is_flag=True, help="Also write each variant in ORT format (.ort) for ONNX Runtime Mobile.")
@click.option("--on-device", is_flag=True, help="Training artifacts (head trainable, backbone frozen) for ONNX "
                                                "Runtime's on-device training API, in OUTPUT/on_device/.")
@click.option("--calib", type=click.Path(file_okay=False),
              help="Folder of images to calibrate int8 on [default for a RUN: its training images].")
@click.option("--calib-count", default=100, type=click.IntRange(min=1), help="Images to calibrate int8 on.")
@click.option("--data", type=click.Path(file_okay=False),
              help="For a model file: labelled images (one folder per class, or train/ and val/) for the report's "
                   "accuracy [default for a RUN: its validation images].")
@click.option("--threads", default=1, type=click.IntRange(min=1), help="Intra-op threads for the latency runs.")
@preprocess_options
def command(source: str, output: str, int8: bool, fp16: bool, ort: bool, on_device: bool, calib: str | None,
            calib_count: int, data: str | None, threads: int, **opts: Any) -> None:
    """Export SOURCE, a folder `ftonnx finetune` wrote or a classifier's .onnx file, for phones and edge boxes,
    and print each variant's size, CPU latency, val top-1 and largest probability difference from the float
    model."""
    from ftonnx.export.edge import export_run, model_source, run_source
    from ftonnx.export.report import format_table

    flags = preprocess_flags(opts)
    if Path(source).is_dir():
        if data or flags.given:
            raise click.UsageError("--data and preprocessing options are for a model file; a RUN folder has them")
        origin = run_source(source, calib)
    else:
        origin = model_source(source, calib=calib, data=data, preprocess=flags)
    report = export_run(origin, output, int8=int8, fp16=fp16, ort=ort, on_device=on_device, calib_count=calib_count,
                        threads=threads, progress=progress_line)
    click.echo(format_table(report))
    echo(f"wrote {output}")
