"""The Ray cluster of `--ray`: connect to one at an address, or start a local one in this process and stop it
afterwards; its settings; the one line that says how to install Ray.

Ray is optional (`pip install 'ftonnx[ray]'`): only `connected` and the code that runs on the cluster
import it, so that no other command pays for it at start-up.

A local cluster is quiet and stays on this machine: no usage statistics (nor the report that says they are
off), no cloud-metadata probes (a dead loopback proxy refuses them at once; Ray's own gRPC ignores it), no
dashboard, no token written to ~/.ray, and nodes that stop at once rather than draining for 30 s. On Linux it
binds to 127.0.0.2: Ray replaces 127.0.0.1 and localhost by the host's outward address, but not the rest of
the loopback range (which other systems do not configure). Its files live in a short temporary folder (Ray's
unix sockets must fit in 107 bytes).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterator

from ftonnx.errors import FtonnxError, first_line

INSTALL = "pip install 'ftonnx[ray]'"
LOCAL = "local"  # `--ray` without an address
HOST = "127.0.0.2"

# Environment of every process of a local cluster (and of its driver while it runs).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "", "no_proxy": "",
    "RAY_AUTH_MODE": "disabled",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_DATA_LOG_LEVEL": "WARNING",
}
# Connecting to someone's cluster changes only what this driver says about itself.
REMOTE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0", "RAY_DATA_LOG_LEVEL": "WARNING"}

_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}")


def available() -> bool:
    """Whether the `ray` extra is installed (found, not imported: importing Ray takes seconds)."""
    return all(importlib.util.find_spec(name) is not None for name in ("ray", "pyarrow"))


def require() -> None:
    """FtonnxError with the install line when the `ray` extra is missing."""
    if not available():
        raise FtonnxError(f"--ray needs Ray: {INSTALL}")


def check_address(address: str) -> str:
    """`address` when it can name a cluster: `local`, `auto`, HOST:PORT or ray://HOST:PORT."""
    if address in (LOCAL, "auto") or _ADDRESS.fullmatch(address):
        return address
    hint = "; put PRETRAINED before --ray, or write --ray=ADDRESS" if address.endswith(".onnx") else ""
    raise FtonnxError(f"--ray {address!r}: not a cluster address; give HOST:PORT, ray://HOST:PORT or auto, or "
                      f"nothing for a local cluster{hint}")


@contextlib.contextmanager
def connected(address: str = LOCAL) -> Iterator[str]:
    """Ray initialised for the block, and where it runs (for the log). A Ray this process initialised itself
    (`ray.init` before calling ftonnx) is used as it is and left running. Ray prints its workers' news
    ("task failed, will be retried") on stdout, which belongs to results: it goes to stderr meanwhile."""
    require()
    import ray

    with contextlib.redirect_stdout(sys.stderr):
        if ray.is_initialized():
            yield "the Ray this process initialised"
        else:
            with _connection(ray, address) as where:
                yield where


@contextlib.contextmanager
def _connection(ray: Any, address: str) -> Iterator[str]:
    """ray.init for the block, with the environment its processes need; ray.shutdown afterwards."""
    check_address(address)
    with _environment(QUIET_ENV if address == LOCAL else REMOTE_ENV):
        if address == LOCAL:
            with _local(ray) as cpus:
                yield f"a local cluster of {cpus} CPUs"
        else:
            _init(ray, address)
            try:
                yield f"the cluster at {address}"
            finally:
                ray.shutdown()


@contextlib.contextmanager
def _local(ray: Any) -> Iterator[int]:
    """A cluster of this machine's CPUs, started in this process; stopped, and its files removed, afterwards."""
    temp = tempfile.mkdtemp(prefix="ftonnx-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    cpus = os.cpu_count() or 1
    try:
        where = {"_node_ip_address": HOST} if sys.platform.startswith("linux") else {}
        _init(ray, None, num_cpus=cpus, include_dashboard=False, _temp_dir=temp, **where)
        try:
            yield cpus
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _init(ray: Any, address: str | None, **kwargs: Any) -> None:
    """ray.init: at `address`, or (None) a new local cluster."""
    try:
        ray.init(address, logging_level="WARNING", log_to_driver=False, **kwargs)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError and its own types
        where = "start a local cluster" if address is None else f"connect to {address}"
        raise FtonnxError(f"--ray: cannot {where} ({first_line(exc)})") from None


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` for the block (Ray's processes inherit it), as it was afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
