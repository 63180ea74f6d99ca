"""Run a risky native step in a forked child process, so that a crash of the native code becomes an error.

onnx's shape inference and ONNX Runtime's session creation are C++ that some malformed models crash
outright (SIGSEGV, SIGFPE, SIGABRT), which Python cannot catch in-process. `run` forks, runs the step in
the child and hands its result back as bytes (no pickling): the step's return value, its FtonnxError, or
`Crashed` with the signal that killed it. A fork costs a few milliseconds and shares the parent's
memory copy-on-write, so the child needs no re-import and no copy of the model. Without `os.fork`
(Windows) the step runs in-process.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import time
from typing import Callable

from ftonnx.errors import FtonnxError, first_line

_NONE, _OK, _ERROR = b"n", b"o", b"e"  # first byte of what the child sends


class Crashed(FtonnxError):
    """The step killed its process: `signal` names the signal (SIGSEGV, SIGABRT, ...), or TIMEOUT."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"crashed natively ({signal_name})")
        self.signal = signal_name


def run(step: Callable[[], bytes | None], *, timeout: float = 600.0) -> bytes | None:
    """`step()` run in a forked child: its result, or its FtonnxError (other exceptions become one too);
    `Crashed` when a signal ended the child or it ran past `timeout` seconds (then it is killed)."""
    if not hasattr(os, "fork"):
        return step()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read)
        _child(step, write)
    os.close(write)
    try:
        data, finished = _read_all(read, time.monotonic() + timeout)
    finally:
        os.close(read)
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not finished:
        raise Crashed("TIMEOUT")
    if os.WIFSIGNALED(status):
        raise Crashed(signal.Signals(os.WTERMSIG(status)).name)
    if data[:1] == _NONE:
        return None
    if data[:1] == _OK:
        return data[1:]
    raise FtonnxError(data[1:].decode("utf-8", "replace") or f"exit status {os.WEXITSTATUS(status)}")


def _child(step: Callable[[], bytes | None], fd: int) -> None:
    """Run `step`, write its outcome to `fd`, and leave at once (no atexit handlers, no buffers flushed twice).
    What native code prints on its way down (an assertion, a log line with raw node names) goes nowhere."""
    try:
        faulthandler.disable()  # a crash here is the expected news, reported by the parent
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        result = step()
        payload = _NONE if result is None else _OK + result
    except BaseException as exc:  # every outcome goes back to the parent as bytes
        payload = _ERROR + (str(exc) if isinstance(exc, FtonnxError) else first_line(exc)).encode("utf-8", "replace")
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os._exit(0)


def _read_all(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to `fd` until the writer closes it; False when `deadline` passed first."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"".join(chunks), False
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
