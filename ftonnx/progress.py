"""Progress of a training or evaluation pass: a tqdm bar (rate, ETA) on a terminal, plain lines otherwise.

Plain lines (for logs and CI) appear at most every 10 % of the pass and every 10 s, each with the
count, the rate and the estimated time left, so that a log shows the run is alive without flooding.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ftonnx.errors import printable

_PLAIN_INTERVAL_S = 10.0


def log(line: str, stream: TextIO | None = None) -> None:
    """One line of training news on stderr (never stdout, which belongs to results), control characters escaped."""
    print(printable(line), file=stream or sys.stderr, flush=True)


class Progress:
    """Count items of a pass of known (or unknown) size; use as a context manager."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "img", stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done, self.start = 0, time.monotonic()
        self._next_line, self._next_time = 0.1, self.start + _PLAIN_INTERVAL_S
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int, **postfix: float) -> None:
        """Add `n` items; `postfix` values (e.g. loss) are shown beside the bar."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif (self.total and self.done / self.total >= self._next_line and self.done < self.total
              and time.monotonic() >= self._next_time):
            self._next_line, self._next_time = self.done / self.total + 0.1, time.monotonic() + _PLAIN_INTERVAL_S
            log(self._line(), self.stream)

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {self.done}/{self.total or '?'} {self.unit}, {rate:.1f} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {max(0.0, (self.total - self.done) / rate):.0f} s"
        return text

    def close(self) -> None:
        """End the bar (it disappears; the caller logs the summary line)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / max(time.monotonic() - self.start, 1e-9)
