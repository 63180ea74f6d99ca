"""HTML built as an element tree and serialised by the standard library, so that every label, path and
option value is escaped by construction: no markup is ever made by joining strings.

Text from outside (class names, file paths) also goes through `visible`, which shows control and
invisible formatting characters as escapes (a bell as \\x07, a right-to-left override as \\u202e):
nothing can hide or reorder what the page says.
"""

from __future__ import annotations

import base64
import json
import math
import unicodedata
import xml.etree.ElementTree as ET
from typing import Any, Iterable

DASH = "\u2014"
# The page loads nothing and runs nothing: images are data: URIs, styles inline, no script at all.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def visible(value: Any) -> str:
    """str(value) with control, format and separator characters written as \\xNN or \\uNNNN."""
    out = []
    for ch in str(value):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(value: Any, limit: int) -> str:
    """`visible(value)` cut to `limit` characters with an ellipsis."""
    text = visible(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def el(tag: str, *children: Any, **attrs: Any) -> ET.Element:
    """An element with `children` (elements, or text: anything else, None skipped) and `attrs` (None
    skipped; a trailing underscore is dropped and other underscores become dashes: class_, data_count)."""
    element = ET.Element(tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items() if v is not None})
    for child in children:
        if child is None:
            continue
        if isinstance(child, ET.Element):
            element.append(child)
        elif len(element):
            element[-1].tail = (element[-1].tail or "") + str(child)
        else:
            element.text = (element.text or "") + str(child)
    return element


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _cell(tag: str, value: Any) -> ET.Element:
    return value if isinstance(value, ET.Element) and value.tag in ("td", "th") else el(tag, value)


def table(head: list[Any], rows: Iterable[list[Any] | ET.Element], **attrs: Any) -> ET.Element:
    """A table: `head` in <th> cells, each row in <td> cells; a <td>, <th> or <tr> given stays as it is."""
    body = [row if isinstance(row, ET.Element) else el("tr", *[_cell("td", c) for c in row]) for row in rows]
    return el("table", el("thead", el("tr", *[_cell("th", c) for c in head])), el("tbody", *body), **attrs)


def facts(rows: Iterable[tuple[str, Any]], **attrs: Any) -> ET.Element:
    """A two-column table of names and values."""
    return el("table", el("tbody", *[el("tr", el("td", name), el("td", value_text(v))) for name, v in rows]),
              class_="facts", **attrs)


def value_text(value: Any) -> str:
    """A value for people: a dash for None, yes/no, JSON for lists and dicts, control characters shown."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return visible(json.dumps(value, ensure_ascii=False))
    return visible(value)


def number(value: float | None, spec: str = ".4f") -> str:
    """`value` formatted by `spec`; a dash for None or a value that is not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return format(value, spec)


def size(nbytes: float | None) -> str:
    """A byte count for people: 950 B, 3.7 MB (decimal units, as the export table shows sizes)."""
    if nbytes is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes:.0f} B"


def duration(seconds: float | None) -> str:
    """4.2 s, 3 min 05 s, 1 h 02 min."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def document(title: str, style: str, body: list[ET.Element]) -> str:
    """The whole page: doctype, the content security policy, the inline style sheet and `body`."""
    head = el("head", el("meta", charset="utf-8"), el("meta", http_equiv="Content-Security-Policy", content=POLICY),
              el("meta", name="viewport", content="width=device-width,initial-scale=1"),
              el("link", rel="icon", href="data:,"), el("title", visible(title)), el("style", style))
    page = el("html", head, el("body", el("main", *body)), lang="en")
    return "<!DOCTYPE html>\n" + ET.tostring(page, encoding="unicode", method="html") + "\n"
