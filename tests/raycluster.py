"""A real Ray cluster of several nodes on loopback for the tests, stopped by pid, never by name.

Each node is `ray start --block` in a session of its own: every Ray process of that node (GCS, raylet,
agents, workers) keeps that session id, so stopping is SIGTERM to the `ray start` process (it stops its
children), then SIGKILL to anything still in the session. `ray stop` is never used: it kills every Ray
process on the machine by name, another test's or another user's too. Each node also dies with the process
that started it (PR_SET_PDEATHSIG), so a killed test run leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ftonnx.cluster import HOST, QUIET_ENV


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this node when the process that started it dies, even by SIGKILL."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def session_pids(session: int) -> list[int]:
    """The live processes of a session."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class LocalRayCluster:
    """A head node and further nodes, each a `ray start --block` process on its own loopback address."""

    def __init__(self, head_cpus: int = 2) -> None:
        self.head_cpus = head_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's unix sockets must fit in 107 bytes
        self.ray = os.path.join(os.path.dirname(sys.executable), "ray")
        self.env = {**os.environ, **QUIET_ENV}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def start(self, timeout: float = 90) -> "LocalRayCluster":
        self._node(["--head", f"--node-ip-address={HOST}", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                    "--num-gpus=0", "--include-dashboard=false", "--object-store-memory=200000000",
                    f"--temp-dir={self.temp_dir}"], timeout)
        return self

    def add_node(self, cpus: int = 1, gpus: int = 0, timeout: float = 90) -> None:
        """One more node on the next loopback address; `gpus` are declared, not checked (Ray then sets
        CUDA_VISIBLE_DEVICES for the actors that reserve one)."""
        ip = f"127.0.0.{len(self.nodes) + 2}"
        self._node([f"--address={self.address}", f"--node-ip-address={ip}", f"--num-cpus={cpus}",
                    f"--num-gpus={gpus}", "--object-store-memory=100000000"], timeout)

    def _node(self, args: list[str], timeout: float) -> None:
        with open(os.path.join(self.temp_dir, f"node{len(self.nodes)}.log"), "wb") as log:
            self.nodes.append(subprocess.Popen(
                [self.ray, "start", "--block", "--disable-usage-stats", "--log-style=record", *args], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent))
        self._wait(len(self.nodes), timeout)

    def _wait(self, count: int, timeout: float) -> None:
        """Poll the GCS (no driver needed) until `count` nodes are alive."""
        from ray._raylet import GcsClient

        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if any(node.poll() is not None for node in self.nodes):
                raise RuntimeError(f"ray start exited; see {self.temp_dir}/node*.log")
            try:
                nodes = GcsClient(address=self.address).get_all_node_info(timeout=2).values()
                if sum(node.state == 0 for node in nodes) >= count:
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"the Ray cluster did not reach {count} nodes in {timeout} s: {last!r}")

    def worker_pids(self, title: str) -> list[int]:
        """The cluster's processes whose command line (Ray's process title) contains `title`."""
        return [pid for node in self.nodes for pid in session_pids(node.pid) if title in command_line(pid)]

    def leftover_pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in session_pids(node.pid)]

    def stop(self, grace: float = 5) -> None:
        for node in reversed(self.nodes):  # other nodes first, the head last
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        deadline = time.monotonic() + grace
        while self.leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def fake_cuda_build() -> None:
    """A `worker_process_setup_hook`: this worker's onnxruntime says it has CUDA, and its sessions record the
    providers asked for and the GPU Ray gave the worker (in $FAKE_CUDA_REPORT/PID), run on the CPU, and say
    they run on CUDA. It lets a test follow --device cuda through a cluster that has no GPU."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def session(source, options=None, providers=None, **kwargs):
        report = os.path.join(os.environ["FAKE_CUDA_REPORT"], str(os.getpid()))
        with open(report, "w") as f:
            f.write(f"{','.join(providers or [])} {os.environ.get('CUDA_VISIBLE_DEVICES')}")
        made = real(source, options, providers=["CPUExecutionProvider"], **kwargs)
        made.get_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return made

    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ort.InferenceSession = session
