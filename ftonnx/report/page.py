"""The report page: headline figures, training curves, the confusion matrix (a picture with counts on
hover, and a table of counts or of the most confused pairs), per-class metrics, the misclassified
images (most confident first), the export and the run's facts.

Stable hooks for tests and scripts: img#curves, img#confusion, a.cm-cell (data-count), table#counts
(up to 20 classes), table#confused-pairs (more), table#per-class, figure.mistake with img.thumb,
table#export, table#epochs, and #top1, #top5, #macro-f1.
"""

from __future__ import annotations

import datetime
import io
import os
import xml.etree.ElementTree as ET
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ftonnx.data.images import DECODE_ERRORS
from ftonnx.errors import first_line
from ftonnx.report.contents import Contents, History
from ftonnx.report.figures import NUMBERED_CLASSES, Box
from ftonnx.report.markup import DASH, data_uri, document, el, facts, number, shorten, size, table, visible
from ftonnx.report.style import CSS

MAX_MISTAKES = 60
THUMBNAIL = 96  # pixels, the longer side
PAIRS = 15  # rows of the most-confused-pairs table
STAR = " \u2605"


def render(contents: Contents, curves_png: bytes | None, confusion_png: bytes, box: Box) -> str:
    """The whole page for `contents`, with both pictures embedded."""
    labels, result = contents.labels, contents.result
    matrix = np.array(result["confusion"])
    body = [_header(contents)]
    if contents.history is not None and curves_png is not None:
        body.append(_curves(contents.history, curves_png))
    body += [_confusion(matrix, labels, confusion_png, box), _per_class(result, labels, matrix, contents.train_counts),
             _mistakes(contents)]
    if contents.export is not None:
        body.append(_export(*contents.export))
    body.append(_facts(contents))
    body.append(el("footer", "written by ftonnx"))
    return document(contents.title, CSS, body)


def _header(contents: Contents) -> ET.Element:
    result, history = contents.result, contents.history
    top5 = number(result["top5"]) if "top5" in result else DASH
    kpis = [("top1", number(result["top1"]), f"top-1 on {result['count']} images"),
            ("top5", top5, "top-5" if "top5" in result else "top-5 (needs 5 classes or more)"),
            ("macro-f1", number(result["macro"]["f1"]), "macro F1"),
            ("loss", number(result["loss"]), "loss (cross entropy)"),
            ("classes", str(len(contents.labels)), "classes")]
    if history is not None:
        kpis.append(("best-epoch", f"{history.best['epoch']} of {len(history.metrics)}", "best epoch (exported)"))
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    line = " \u00b7 ".join(f"{name}: {visible(value)}" for name, value in [*contents.subtitle, ("written", now)])
    cards = [el("div", el("b", value, id=key), el("span", note), class_="kpi") for key, value, note in kpis]
    return el("header", el("h1", visible(contents.title)), el("p", line), el("div", *cards, class_="kpis"))


def _curves(history: History, png: bytes) -> ET.Element:
    notes = [el("span", f"\u2605 best epoch {history.best['epoch']}", class_="best"),
             " (its weights are the exported model)"]
    if history.warmup_epochs:
        notes.append(f"; shaded: linear warmup over {history.warmup_epochs} epoch"
                     f"{'s' if history.warmup_epochs > 1 else ''}")
    notes.append("; the learning rate is drawn per step from the run's schedule, the dots are the rate at the end "
                 "of each epoch")
    return el("section", el("h2", "Training curves"),
              el("img", id="curves", class_="plot", src=data_uri(png, "image/png"),
                 alt="loss, validation top-1 and learning rate per epoch"),
              el("p", *notes, class_="note"), id="curves-section")


def _confusion(matrix: np.ndarray, labels: list[str], png: bytes, box: Box) -> ET.Element:
    """The picture with a hover cell over each non-empty cell, beside a table of counts or of pairs."""
    n, support = len(labels), matrix.sum(axis=1)
    cells = []
    for i, j in zip(*np.nonzero(matrix)):
        share = matrix[i, j] / support[i]
        tip = (f"true: {visible(labels[i])}\npredicted: {visible(labels[j])}\n"
               f"count: {matrix[i, j]} ({share:.1%} of the true class)")
        place = (f"left:{100 * (box.left + j * box.width / n):.4f}%;top:{100 * (box.top + i * box.height / n):.4f}%;"
                 f"width:{100 * box.width / n:.4f}%;height:{100 * box.height / n:.4f}%")
        cells.append(el("a", class_="cm-cell", title=tip, style=place, data_true=i, data_predicted=j,
                        data_count=matrix[i, j]))
    picture = el("div", el("img", id="confusion", src=data_uri(png, "image/png"), alt="confusion matrix"), *cells,
                 class_="cm-picture")
    side = _counts(matrix, labels) if n <= NUMBERED_CLASSES else _pairs(matrix, labels)
    return el("section", el("h2", "Confusion matrix"), el("div", picture, side, class_="cm"),
              el("p", "Colours: the share of each true class (a row sums to 1), on a square-root scale so that single "
                      "mistakes show. Hover over a cell of the picture for its count.", class_="note"),
              id="confusion-section")


def _counts(matrix: np.ndarray, labels: list[str]) -> ET.Element:
    """Every count, rows true and columns predicted (columns numbered when there are more than 6 classes)."""
    n, support = len(labels), matrix.sum(axis=1)
    head = ["true \u2193 predicted \u2192", *[el("th", shorten(c, 12) if n <= 6 else str(k), title=visible(c))
                                              for k, c in enumerate(labels)], "images"]
    rows = []
    for i in range(n):
        share = matrix[i] / support[i] if support[i] else np.zeros(n)
        counts = [el("td", str(matrix[i, j]), class_="diagonal" if i == j else "zero" if not matrix[i, j] else None,
                     style=f"background:rgba(47,111,222,{0.08 + 0.72 * share[j]:.2f})" if matrix[i, j] else None)
                  for j in range(n)]
        name = shorten(labels[i], 24) if n <= 6 else f"{i}  {shorten(labels[i], 22)}"
        rows.append([el("th", name, class_="name", title=visible(labels[i])), *counts, str(support[i])])
    return el("div", table(head, rows, id="counts", class_="counts"), class_="hscroll")


def _pairs(matrix: np.ndarray, labels: list[str]) -> ET.Element:
    """The most frequent (true, predicted) mistakes, for matrices too large to read number by number."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))), key=lambda p: (-p[0], p[1], p[2]))
    support = matrix.sum(axis=1)
    rows = [[el("td", visible(labels[i]), class_="name"), el("td", visible(labels[j]), class_="name"), str(count),
             f"{count / support[i]:.0%}"] for count, i, j in pairs[:PAIRS]]
    return el("div", el("h3", "Most confused pairs"),
              table([el("th", "true", class_="name"), el("th", "predicted as", class_="name"), "images",
                     "of the true class"], rows, id="confused-pairs"))


def _per_class(result: dict[str, Any], labels: list[str], matrix: np.ndarray,
               train_counts: list[int] | None) -> ET.Element:
    """Precision, recall, F1 (with a bar) and support per class, the class each is most often taken for,
    and the macro and weighted averages."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    trained = train_counts is not None
    rows: list[Any] = []
    for i, label in enumerate(labels):
        f1 = result["f1"][label]
        taken = f"{visible(labels[int(off[i].argmax())])} ({off[i].max()})" if off[i].any() else DASH
        rows.append([str(i), el("td", visible(label), class_="name"), number(result["precision"][label], ".3f"),
                     number(result["recall"][label], ".3f"), _f1_cell(f1), str(result["support"][label]),
                     *([str(train_counts[i])] if trained else []), el("td", taken, class_="name")])
    for average in ("macro", "weighted"):
        scores = result[average]
        cells = ["", el("td", f"{average} average", class_="name"), number(scores["precision"], ".3f"),
                 number(scores["recall"], ".3f"), number(scores["f1"], ".3f"), str(result["count"]),
                 *([str(sum(train_counts))] if trained else []), ""]
        rows.append(el("tr", *[c if isinstance(c, ET.Element) else el("td", c) for c in cells], class_="average"))
    head = ["#", el("th", "class", class_="name"), "precision", "recall", "F1", "support",
            *(["training images"] if trained else []), el("th", "most often taken for", class_="name")]
    return el("section", el("h2", "Per-class metrics"),
              el("div", table(head, rows, id="per-class"), class_="scroll" if len(labels) > 25 else None),
              el("p", "Support: the images of the class that were evaluated. A dash: undefined (a class never "
                      "predicted has no precision); the averages leave it out.", class_="note"),
              id="per-class-section")


def _f1_cell(f1: float | None) -> ET.Element:
    """F1 with a bar as long as its value: green from 0.9, yellow from 0.7, red below."""
    value = f1 or 0.0
    colour = "#c8e6c9" if value >= 0.9 else "#fff3c4" if value >= 0.7 else "#ffcdd2"
    return el("td", number(f1, ".3f"), class_="bar", style=f"--share:{100 * value:.1f}%;--colour:{colour}")


def _mistakes(contents: Contents) -> ET.Element:
    """The misclassified images, most confident mistake first, as thumbnails with both labels."""
    predictions, labels = contents.predictions, contents.labels
    probabilities, targets = predictions.probabilities, predictions.targets
    predicted = probabilities.argmax(axis=1)
    wrong = sorted(np.flatnonzero(predicted != targets), key=lambda k: (-probabilities[k, predicted[k]], k))
    cards = []
    for k in wrong[:MAX_MISTAKES]:
        path, true, guess = predictions.paths[k], int(targets[k]), int(predicted[k])
        uri, error = thumbnail(path if contents.images is None else io.BytesIO(contents.images[path]))
        tip = f"{visible(path)}\np(true class) = {probabilities[k, true]:.3f}" + (f"\n{error}" if error else "")
        cards.append(el("figure", el("div", el("img", class_="thumb", src=uri, alt=visible(os.path.basename(path)))),
                        el("figcaption", el("span", "true ", class_="muted"), visible(labels[true]), el("br"),
                           el("span", "predicted ", class_="muted"), el("span", visible(labels[guess]), class_="wrong"),
                           f" {probabilities[k, guess]:.2f}"), class_="mistake", title=tip, data_index=k))
    shown = f" The {len(cards)} most confident are shown." if len(wrong) > len(cards) else ""
    body = el("div", *cards, class_="mistakes") if cards else el("p", "No image was misclassified.", class_="note")
    return el("section", el("h2", "Misclassified images"),
              el("p", f"{len(wrong)} of {len(targets)} wrong, most confident first (the number is the predicted "
                      f"class's probability).{shown} Hover over an image for its file.", class_="note"),
              body, id="mistakes-section")


def thumbnail(path: str | BinaryIO) -> tuple[str, str | None]:
    """A JPEG data URI of the image (a file, or its bytes) at most THUMBNAIL pixels on a side; a grey square
    and the reason when the file can no longer be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (2 * THUMBNAIL, 2 * THUMBNAIL))
            picture = ImageOps.exif_transpose(image).convert("RGB")
        picture.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
        error = None
    except DECODE_ERRORS as exc:
        picture, error = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200)), f"cannot read it: {first_line(exc)}"
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=82)
    return data_uri(buffer.getvalue(), "image/jpeg"), error


def _export(folder: str, report: dict[str, Any]) -> ET.Element:
    """The export's variants: file, size, CPU latency, top-1 and drift from the float model."""
    rows = [[el("td", visible(v.get("name")), class_="name"), el("td", visible(v.get("file")), class_="name"),
             size(v.get("bytes")), number(v.get("size_vs_float"), ".0%"), number(v.get("latency_ms"), ".2f"),
             number(v.get("top1"), ".2%"), number(v.get("max_prob_diff"), ".4f")] for v in report["variants"]]
    head = [el("th", "variant", class_="name"), el("th", "file", class_="name"), "size", "of float", "latency ms",
            "val top-1", "max |\u0394p|"]
    note = (f"CPU latency: batch 1, median of {report.get('runs')} runs after {report.get('warmup')} warm-up, "
            f"{report.get('threads')} intra-op thread(s); accuracy on {report.get('val_images')} validation images; "
            f"files in {visible(folder)}")
    return el("section", el("h2", "Export"), table(head, rows, id="export"), el("p", note, class_="note"),
              id="export-section")


def _facts(contents: Contents) -> ET.Element:
    """The run's (or evaluation's) options, data, timing, cache and source, and the table of epochs."""
    blocks = [el("div", el("h3", title), facts(rows, id=title.lower().replace(" ", "-")))
              for title, rows in contents.facts]
    parts = [el("h2", "Run" if contents.history else "Evaluation"), el("div", *blocks, class_="facts-grid")]
    if contents.history is not None:
        parts += [el("h3", "Epochs"), _epochs(contents.history)]
    return el("section", *parts, id="facts-section")


def _epochs(history: History) -> ET.Element:
    rows = []
    for m in history.metrics:
        cells = [f"{m['epoch']}{STAR if m is history.best else ''}", number(m["lr"], ".2e"),
                 number(m["train_loss"]), number(m["val_loss"]), number(m["val_top1"]), str(m["images"]),
                 number(m["images_per_s"], ".1f"), number(m["seconds"], ".1f")]
        rows.append(el("tr", *[el("td", c) for c in cells], class_="best" if m is history.best else None))
    head = ["epoch", "learning rate", "training loss", "val loss", "val top-1", "images", "images/s", "seconds"]
    return el("div", table(head, rows, id="epochs"), class_="scroll" if len(rows) > 20 else None)
