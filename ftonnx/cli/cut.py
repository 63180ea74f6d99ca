"""`ftonnx cut`: keep the part of a model that computes one tensor, e.g. the backbone's features."""

from __future__ import annotations

from typing import Any

import click

from ftonnx.cli._options import preprocess_flags, preprocess_options
from ftonnx.cli._output import echo


@click.command("cut")
@click.argument("model")
@click.option("--node", "spec", required=True,
              help="Node name, tensor name, op type or loose name (case and _-/.: ignored, substrings match); "
                   "'auto' = the recommended cut (see `ftonnx inspect`).")
@click.option("-o", "--output", required=True, help="ONNX file to write.")
@click.option("--last", is_flag=True, help="When SPEC matches several nodes, take the last one.")
@click.option("--index", type=int, default=None, metavar="K",
              help="When SPEC matches several nodes, take number K (from 0).")
@preprocess_options
def command(model: str, spec: str, output: str, last: bool, index: int | None, **opts: Any) -> None:
    """Truncate MODEL so that the output of node SPEC becomes its output; preprocessing flags are recorded
    in the written model's metadata."""
    from ftonnx.graph import load
    from ftonnx.graph.cut import cut
    from ftonnx.graph.index import GraphIndex
    from ftonnx.graph.inspect import format_shape
    from ftonnx.graph.io import check_output_path, save_model
    from ftonnx.preprocess.use import recorded

    flags = preprocess_flags(opts)
    check_output_path(output)
    original = recorded(load(model), flags)
    result = cut(original, spec, last=last, index=index)
    save_model(result, output)
    tensor = result.graph.output[0].name
    echo(f"wrote {output}: output {tensor} {format_shape(GraphIndex(result).shapes.get(tensor))}, "
               f"{len(result.graph.node)} of {len(original.graph.node)} nodes kept")
