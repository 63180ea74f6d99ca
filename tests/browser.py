"""Open a local page in headless Chromium and report what a person would see, with the standard library only.

Chromium is driven over the DevTools protocol with `--remote-debugging-pipe`: it reads NUL-terminated
JSON commands on file descriptor 3 and writes replies and events on descriptor 4. No port, no
websocket, no chromedriver, no pip package (Playwright drives Chromium the same way).

    with Chromium() as browser:
        page = browser.open("report.html", js="document.title", screenshot="shot.png")
    page.errors    # console errors, uncaught exceptions, and what the browser logs as errors (CSP, loads)
    page.images    # every <img>: id, class, naturalWidth (0: did not load), the start of its src
    page.value     # what `js` evaluated to
    page.requests  # every URL the page asked for

Debian's launcher script (/usr/bin/chromium) adds extension flags and runs a shell check that
misreads a twice-mounted /dev/shm, so the binary behind it is preferred; CHROMIUM overrides both.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
         "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe"]

# Put the pipe ends on descriptors 3 and 4, where the browser expects them, then become the browser
# (a trampoline rather than preexec_fn, which is unsafe with threads, or a shell, which may take only
# one-digit descriptors).
ON_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
              "os.execv(sys.argv[3], sys.argv[3:])")

# Wait until every image has decoded (or failed to), then describe each.
IMAGES_JS = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return images.map(i => ({id: i.id, cls: i.className, naturalWidth: i.naturalWidth, src: i.src.slice(0, 20)}));
})()"""


def find_chromium() -> str | None:
    """$CHROMIUM, Debian's chromium binary, or a Chromium or Chrome on PATH; None when there is none."""
    candidates = [os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium",
                  *map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


class BrowserError(RuntimeError):
    pass


@dataclass
class Page:
    url: str
    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    value: Any = None
    requests: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # every console and log line, for debugging


class Chromium:
    """One headless Chromium with a fresh profile (deleted on exit), driven over the DevTools pipe."""

    def __init__(self, binary: str | None = None, *, timeout: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found: apt-get install chromium, or set CHROMIUM")
        self.timeout = timeout
        self._next_id = 0
        self._events: queue.Queue = queue.Queue()
        self._replies: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self._gone = False

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.mkdtemp(prefix="ftonnx-chromium-")
        command_read, self._commands = os.pipe()
        self._replies_fd, reply_write = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-c", ON_3_AND_4, str(command_read), str(reply_write), self.binary, *FLAGS,
             f"--user-data-dir={self._profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(command_read, reply_write))
        os.close(command_read)
        os.close(reply_write)
        threading.Thread(target=self._read, daemon=True).start()
        self.call("Browser.getVersion")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._process.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                    self._process.wait(timeout=10)
                except (BrowserError, subprocess.TimeoutExpired):
                    self._process.kill()
                    self._process.wait()
        finally:
            os.close(self._commands)
            self._stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def _read(self) -> None:
        """Split the browser's output into replies (by id) and events, until it closes the pipe."""
        buffer = b""
        with os.fdopen(self._replies_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 20):
                *messages, buffer = (buffer + chunk).split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._arrived:
                            self._replies[message["id"]] = message
                            self._arrived.notify_all()
                    else:
                        self._events.put(message)
        with self._arrived:
            self._gone = True
            self._arrived.notify_all()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:]

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one DevTools command and wait for its reply."""
        self._next_id += 1
        ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._commands, data):]
        except OSError as exc:
            raise BrowserError(f"{method}: the browser's pipe closed ({exc}); stderr:\n{self._stderr_tail()}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._arrived:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._gone:
                    why = "no reply in time" if left <= 0 else "the browser went away"
                    raise BrowserError(f"{method}: {why}; stderr:\n{self._stderr_tail()}")
                self._arrived.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def _events_until(self, method: str | None, session: str) -> list[dict]:
        """The events queued so far; with `method`, waiting until that event of `session` has come."""
        events, deadline = [], time.monotonic() + self.timeout
        while True:
            try:
                event = self._events.get(timeout=0.05 if method is None else max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                if method is None:
                    return events
                raise BrowserError(f"no {method} within {self.timeout:.0f} s") from None
            events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return events

    def open(self, page: str | os.PathLike, *, js: str | None = None, screenshot: str | os.PathLike | None = None,
             width: int = 1280, height: int = 900, settle: float = 0.3) -> Page:
        """Load `page` (a file or a URL) in a new tab of `width` CSS pixels; wait for its load event and its
        images; evaluate `js`; wait `settle` seconds for late errors; take a full-page screenshot."""
        url = str(page) if "://" in str(page) else Path(page).resolve().as_uri()
        result = Page(url)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            self._events_until(None, session)  # about:blank's
            navigation = self.call("Page.navigate", {"url": url}, session=session)
            if navigation.get("errorText"):
                raise BrowserError(f"{url}: {navigation['errorText']}")
            events = self._events_until("Page.loadEventFired", session)
            result.images = self.evaluate(IMAGES_JS, session)
            result.value = self.evaluate(js, session) if js else None
            time.sleep(settle)
            if screenshot:
                self._screenshot(session, Path(screenshot), width)
            events += self._events_until(None, session)
        finally:
            with contextlib.suppress(BrowserError):  # a browser that went away has said why already
                self.call("Target.closeTarget", {"targetId": target})
        for event in events:
            if event.get("sessionId") == session:
                _collect(event.get("method"), event.get("params", {}), result)
        return result

    def evaluate(self, expression: str, session: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                          session=session)
        if "exceptionDetails" in reply:
            raise BrowserError(f"the check's script failed: {_exception_text(reply['exceptionDetails'])}")
        return reply["result"].get("value")

    def _screenshot(self, session: str, path: Path, width: int) -> None:
        height = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": width, "height": height,
                                                             "scale": 1}}, session=session)
        path.write_bytes(base64.b64decode(shot["data"]))


def _collect(method: str | None, params: dict, page: Page) -> None:
    """Sort one event into the page's errors, requests and messages."""
    if method == "Runtime.consoleAPICalled":
        text = " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in params.get("args", []))
        page.messages.append(f"console.{params.get('type')}: {text}")
        if params.get("type") in ("error", "assert"):
            page.errors.append(f"console.{params.get('type')}: {text}")
    elif method == "Runtime.exceptionThrown":
        page.errors.append(f"uncaught: {_exception_text(params['exceptionDetails'])}")
    elif method == "Log.entryAdded":
        entry = params["entry"]
        line = f"{entry.get('source')} {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".strip()
        page.messages.append(line)
        if entry.get("level") == "error":
            page.errors.append(line)
    elif method == "Network.requestWillBeSent":
        page.requests.append(params["request"]["url"][:60])
    elif method == "Inspector.targetCrashed":
        page.errors.append("the page crashed")


def _exception_text(details: dict) -> str:
    exception = details.get("exception") or {}
    where = f" ({details['url']}:{details.get('lineNumber', 0) + 1})" if details.get("url") else ""
    return (exception.get("description") or details.get("text") or "?").splitlines()[0] + where
