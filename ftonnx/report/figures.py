"""The report's two pictures, drawn by matplotlib: training curves and the confusion matrix, as PNG bytes.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, never through pyplot,
so nothing opens a window or touches global state. Labels are plain text (`text.parse_math` off: a
`$` in a class name is not mathtext) and are shortened to fit.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ftonnx.report.markup import shorten

STYLE = {"text.parse_math": False, "font.family": "DejaVu Sans", "font.size": 9, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "axes.titleweight": "bold",
         "axes.titlesize": 10}
TRAIN, VAL, TOP1, LR, BEST, WARMUP = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f4fbf", "#d62728", "#fde9c9"
NUMBERED_CLASSES = 20  # up to this many classes the confusion picture writes the count in each cell
MAX_TICKS = 25  # at most this many class names along each axis of the confusion picture


@dataclass
class Box:
    """Where the matrix lies in the confusion picture, as fractions of its width and height."""

    left: float
    top: float
    width: float
    height: float


def _png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Glyph ... missing from font": such a label shows a box
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _series(metrics: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if m.get(key) is None else float(m[key]) for m in metrics])


def curves(metrics: list[dict[str, Any]], schedule: tuple[np.ndarray, np.ndarray], *, best: dict[str, Any],
           warmup_epochs: int, epochs: int) -> bytes:
    """Loss (training, validation), validation top-1 and learning rate per epoch: the best epoch marked
    with a star and a dashed line, warmup shaded, the per-step `schedule` (epoch position, rate) drawn
    under the rate logged at the end of each epoch."""
    x = np.array([m["epoch"] for m in metrics], float)
    marker = {"marker": "o", "ms": 3.5 if len(x) <= 40 else 0, "lw": 1.6}
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12.5, 3.6), layout="constrained")
        loss, top1, rate = fig.subplots(1, 3)
        warmup = f"warmup ({warmup_epochs} epoch{'s' if warmup_epochs > 1 else ''})"
        for ax in (loss, top1, rate):
            if warmup_epochs:
                ax.axvspan(0, warmup_epochs, color=WARMUP, lw=0, label=warmup)
            ax.axvline(best["epoch"], color=BEST, lw=1, ls="--", alpha=0.8)
            ax.set_xlabel("epoch")
            ax.set_xlim(0, max(epochs, x.max()) + 0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        loss.plot(x, _series(metrics, "train_loss"), color=TRAIN, label="training loss", **marker)
        loss.plot(x, _series(metrics, "val_loss"), color=VAL, label="validation loss", **marker)
        loss.plot([best["epoch"]], [best["val_loss"]], marker="*", ms=13, color=BEST, ls="none", zorder=5,
                  label=f"best (epoch {best['epoch']})")
        loss.set_title("Loss")
        accuracy = _series(metrics, "val_top1")
        top1.plot(x, accuracy, color=TOP1, label="validation top-1", **marker)
        top1.plot([best["epoch"]], [best["val_top1"]], marker="*", ms=13, color=BEST, ls="none", zorder=5,
                  label=f"best {best['val_top1']:.4f} (epoch {best['epoch']})")
        low = float(np.nanmin(accuracy))
        top1.set_ylim(max(0.0, low - 0.1 * (1.02 - low) - 0.02), 1.01)
        top1.set_title("Validation top-1")
        rate.plot(*schedule, color=LR, lw=1.4, alpha=0.55, label="schedule per step")
        rate.plot(x, _series(metrics, "lr"), color=LR, marker="o", ms=3.5, ls="none", label="at the end of the epoch")
        rate.set_title("Learning rate")
        rate.set_ylim(bottom=0)
        rate.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        for ax in (loss, top1, rate):
            ax.legend(fontsize=7.5, frameon=False, loc="best")
        return _png(fig, dpi=110)


def confusion(matrix: np.ndarray, labels: Sequence[str]) -> tuple[bytes, Box]:
    """The confusion matrix [true][predicted] with colours normalised per true class on a square-root
    scale (a single stray image still shows); counts in the cells up to NUMBERED_CLASSES classes, at most
    MAX_TICKS names per axis. Returns the PNG and where the matrix lies in it, for hover cells."""
    n = len(labels)
    support = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    names = [shorten(label, 22 if n <= NUMBERED_CLASSES else 18) for label in labels]
    margin = 0.07 * max(map(len, names))  # inches for the longest name
    side = min(8.0, 2.4 + 0.36 * n) if n <= NUMBERED_CLASSES else 8.0
    width, height = side + margin + 1.8, side + (1.2 if n <= 4 else margin + 0.9)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(width, height), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(share, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        _class_ticks(ax, names)
        ax.set_title(f"Confusion matrix ({n} classes, {int(matrix.sum())} images)")
        if n <= NUMBERED_CLASSES:
            size = min(13.0, max(7.0, 180.0 / n))
            for i, j in np.ndindex(n, n):
                if matrix[i, j] or i == j:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=size,
                            color="white" if share[i, j] > 0.35 else "#222")
        fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02).set_label("share of the true class")
        png = _png(fig, dpi=100)
        where = ax.get_position()  # final once drawn: figure fractions, origin at the bottom left
    return png, Box(where.x0, 1 - where.y1, where.width, where.height)


def _class_ticks(ax: Any, names: list[str]) -> None:
    """Class names along both axes: every one up to MAX_TICKS classes, else evenly spaced, minor ticks
    marking the rest."""
    n = len(names)
    step = max(1, math.ceil(n / MAX_TICKS))
    ticks = np.arange(0, n, step)
    if n <= 4:
        ax.set_xticks(ticks, [textwrap.fill(names[i], 14) for i in ticks])
    else:
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90)
    ax.set_yticks(ticks, [names[i] for i in ticks])
    if step > 1:
        ax.set_xticks(np.arange(n), minor=True)
        ax.set_yticks(np.arange(n), minor=True)
        ax.tick_params(which="minor", length=1.5)
        ax.set_xlabel(f"predicted class (every {step}th name shown)")
