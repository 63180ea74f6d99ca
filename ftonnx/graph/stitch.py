"""Join a frozen prefix and a (trained) suffix back into one inference model."""

from __future__ import annotations

import onnx
from onnx import compose

from ftonnx import metadata
from ftonnx.errors import FtonnxError, first_line
from ftonnx.graph.index import assign, clone

_SUFFIX_PREFIX = "suffix/"


def stitch(prefix: onnx.ModelProto, suffix: onnx.ModelProto) -> onnx.ModelProto:
    """One model from the prefix's inputs to the suffix's outputs, with the suffix's metadata.

    Every suffix input that is not an initializer must be a prefix output of the same name. Names the
    two graphs share otherwise (e.g. a constant both halves read) are prefixed with ``suffix/`` in
    the suffix only, so the inputs and outputs keep their names.
    """
    p, s = clone(prefix), clone(suffix)
    inits = {t.name for t in s.graph.initializer}
    cut = [i.name for i in s.graph.input if i.name not in inits]
    missing = sorted(set(cut) - {o.name for o in p.graph.output})
    if missing:
        raise FtonnxError(f"the suffix reads {missing[0]!r}, which the prefix does not output; "
                          "were they split from the same model?")
    io_map = [(name, name) for name in cut]
    metadata.clear(p)
    metadata.clear(s)
    p.ir_version = s.ir_version = max(p.ir_version, s.ir_version)
    assign(s.graph.value_info, [v for v in s.graph.value_info if v.name not in cut])
    outputs = {o.name for o in s.graph.output}
    clashes = {n for _, names in compose.check_overlapping_names(p.graph, s.graph, io_map) for n in names}
    rename = {n: _SUFFIX_PREFIX + n for n in clashes - set(cut) - outputs}
    if rename:
        compose.add_prefix_graph(s.graph, _SUFFIX_PREFIX, rename_nodes=False, rename_edges=False,
                                 rename_inputs=False, rename_outputs=False, rename_initializers=False,
                                 rename_value_infos=False, inplace=True, name_map=rename)
    try:
        model = compose.merge_models(p, s, io_map, name=suffix.graph.name or prefix.graph.name,
                                     doc_string=suffix.graph.doc_string,
                                     producer_name=suffix.producer_name or prefix.producer_name,
                                     producer_version=suffix.producer_version or prefix.producer_version)
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise FtonnxError(f"cannot stitch prefix and suffix: {first_line(exc)}") from None
    _dedupe_opsets(model)
    model.doc_string = suffix.doc_string or prefix.doc_string
    metadata.copy(suffix, model)
    meta = metadata.read(model)
    meta.extra.pop("boundary", None)
    return metadata.write(model, meta)


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """One opset import per domain: merge_models lists the shared default domain twice, which the
    checker accepts but ONNX Runtime's quantiser refuses."""
    versions: dict[str, int] = {}
    for op in model.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        versions[domain] = max(versions.get(domain, 0), op.version)
    assign(model.opset_import, [onnx.helper.make_opsetid(d, v) for d, v in versions.items()])
