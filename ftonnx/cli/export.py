"""`ftonnx export`: a finetuned RUN folder to int8, fp16, ORT-format and on-device training files."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("run", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the models, report.json and on_device/ (created; same-named entries are replaced).")
@click.option("--int8", is_flag=True, help="Static int8 quantisation (QDQ, per-channel weights), calibrated on "
                                           "training images.")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute; inputs and outputs stay float32.")
@click.option("--ort", is_flag=True, help="Also write each variant in ORT format (.ort) for ONNX Runtime Mobile.")
@click.option("--on-device", is_flag=True, help="Training artifacts (head trainable, backbone frozen) for ONNX "
                                                "Runtime's on-device training API, in OUTPUT/on_device/.")
@click.option("--calib", default=100, type=click.IntRange(min=1), help="Training images to calibrate int8 on.")
@click.option("--threads", default=1, type=click.IntRange(min=1), help="Intra-op threads for the latency runs.")
def command(run: str, output: str, int8: bool, fp16: bool, ort: bool, on_device: bool, calib: int,
            threads: int) -> None:
    """Export the model of RUN (a folder `ftonnx finetune` wrote) for phones and edge boxes, and print
    each variant's size, CPU latency, val top-1 and largest probability difference from the float model."""
    from ftonnx.export.edge import export_run
    from ftonnx.export.report import format_table

    report = export_run(run, output, int8=int8, fp16=fp16, ort=ort, on_device=on_device, calib=calib,
                        threads=threads, progress=lambda message: click.echo(message, err=True))
    click.echo(format_table(report))
    click.echo(f"wrote {output}")
