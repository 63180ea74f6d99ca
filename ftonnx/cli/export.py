"""`ftonnx export`: a finetuned RUN folder, or any classifier's ONNX file, to int8, fp16, pixel-input,
fixed-shape, ORT-format and on-device training files, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ftonnx.cli._options import KeepFloat, preprocess_flags, preprocess_options
from ftonnx.cli._output import echo, progress_line

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)


@click.command("export")
@click.argument("source", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the models, report.json, on_device/ and on_device_head/ (created; same-named "
                   "entries are replaced).")
@click.option("--int8", is_flag=True, help="Static int8 quantisation (QDQ, per-channel weights, bias corrected), "
                                           "calibrated on typical images.")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute; inputs and outputs stay float32.")
@click.option("--ort", is_flag=True, help="Also write each variant in ORT format (.ort) for ONNX Runtime Mobile.")
@click.option("--on-device", is_flag=True,
              help="Training artifacts for ONNX Runtime's on-device training API: on_device/ (the whole graph, "
                   "head trainable) and on_device_head/ (a feature extractor, and the head trained on stored "
                   "features).")
@click.option("--static", is_flag=True,
              help="Also write each variant with fixed input shapes (batch --batch, the model's input size): "
                   "NNAPI and CoreML take no node with a dynamic shape.")
@click.option("--batch", type=click.IntRange(min=1), help="Batch size of the fixed-shape variants [default: 1]; "
                                                          "implies --static.")
@click.option("--pixels", is_flag=True,
              help="Also write each variant fed uint8 pixels (N,H,W,3 RGB at the model's input size, as an image "
                   "decoder or camera gives them), with the scaling, mean/std and layout done in the graph.")
@click.option("--pixels-bgr", is_flag=True, help="The pixel variants take BGR order (OpenCV); implies --pixels.")
@click.option("--calib", type=click.Path(file_okay=False),
              help="Folder of images to calibrate int8 on [default for a RUN: its training images].")
@click.option("--calib-count", type=click.IntRange(min=1),
              help="Images to calibrate int8 on [default: every calibration image, up to 300].")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS),
              help="How int8 activation ranges are chosen: minmax (the observed range), percentile (99.999 % of "
                   "values, outliers clipped) or entropy (least information lost) [default: minmax].")
@click.option("--int8-keep-float", "keep_float", type=KeepFloat(),
              help="Nodes left in float: auto (the few whose int8 error is largest, if leaving them in float "
                   "cuts the drift from the float model), none, or node names [default: auto].")
@click.option("--data", type=click.Path(file_okay=False),
              help="For a model file: labelled images (one folder per class, or train/ and val/) for the report's "
                   "accuracy [default for a RUN: its validation images].")
@click.option("--threads", default=1, type=click.IntRange(min=1), help="Intra-op threads for the latency runs.")
@preprocess_options
@click.pass_context
def command(ctx: click.Context, source: str, output: str, int8: bool, calib: str | None, data: str | None,
            **opts: Any) -> None:
    """Export SOURCE, a folder `ftonnx finetune` wrote or a classifier's .onnx file, for phones and edge boxes,
    and print each variant's size, CPU latency, val top-1, largest probability difference from the float
    model and the share of its nodes NNAPI and CoreML can take."""
    from ftonnx.export.edge import export_run, model_source, run_source
    from ftonnx.export.report import format_table

    for name, flag in (("calib_method", "--calib-method"), ("keep_float", "--int8-keep-float")):
        if _given(ctx, name) and not int8:
            raise click.UsageError(f"{flag} is for int8; add --int8")
    flags = preprocess_flags(opts)
    if Path(source).is_dir():
        if data or flags.given:
            raise click.UsageError("--data and preprocessing options are for a model file; a RUN folder has them")
        origin = run_source(source, calib)
        if origin.qat is not None and _given(ctx, "calib_method"):
            raise click.UsageError("--calib-method: RUN trained with --qat, and its int8 export uses the scales "
                                   "it trained with; drop --calib-method")
    else:
        origin = model_source(source, calib=calib, data=data, preprocess=flags)
    report = export_run(origin, output, int8=int8, fp16=opts["fp16"], ort=opts["ort"], on_device=opts["on_device"],
                        static=opts["static"] or opts["batch"] is not None, batch=opts["batch"] or 1,
                        pixels=opts["pixels"] or opts["pixels_bgr"], pixel_order="BGR" if opts["pixels_bgr"] else "RGB",
                        calib_count=opts["calib_count"], calib_method=opts["calib_method"] or "minmax",
                        keep_float="auto" if opts["keep_float"] is None else opts["keep_float"],
                        threads=opts["threads"], progress=progress_line)
    click.echo(format_table(report))
    echo(f"wrote {output}")
