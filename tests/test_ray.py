"""--ray: the activation cache computed on a real Ray cluster on loopback (a head of 2 CPUs and a second node
of 1 CPU and a declared GPU, each `ray start`) equals the local cache, also when a worker is killed mid-way
(and the finetune trains the same weights); tables of image bytes are read by the workers; `ftonnx finetune
--ray` on a local cluster started for the run reaches the local run's top-1 and leaves no process behind; the
CUDA path in the actors, with the provider list faked; and the one-line errors without Ray installed.

The tests that need Ray skip without it (`pip install 'ftonnx[ray]'`; .ci/run installs it); the cluster is
stopped by pid, and each test has a time limit (pytest-timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from ftonnx import cluster, pipeline
from ftonnx.data import discover
from ftonnx.errors import FtonnxError
from ftonnx.graph import load
from ftonnx.graph.cut import cut
from ftonnx.graph.head import add_head
from ftonnx.graph.split import split
from ftonnx.progress import Progress
from ftonnx.train.cache import ActivationCache

from helpers import TINY_NODE, build_tiny_model, cli, fails_cleanly, write_tables

pytestmark = pytest.mark.timeout(300)
COLOUR_IMAGES = (8, 4)  # the `colours` fixture's training and validation images per class: 36 in all
RAY = "needs Ray: pip install 'ftonnx[ray]' (.ci/run installs it)"


def needs_ray() -> None:
    pytest.importorskip("ray", reason=RAY)
    pytest.importorskip("pyarrow", reason=RAY)


def weights(run: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(run / "model.onnx"))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("head")}


def same_weights(a: Path, b: Path) -> bool:
    got, want = weights(a), weights(b)
    return bool(want) and got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def assert_same_caches(got: list[ActivationCache], want: list[ActivationCache]) -> None:
    for cache, reference in zip(got, want, strict=True):
        assert cache.names == reference.names and cache.views == reference.views
        assert np.array_equal(cache.labels, reference.labels)
        for name in reference.names:
            np.testing.assert_allclose(cache.arrays[name], reference.arrays[name], rtol=0, atol=1e-6)


# --- without a cluster: options, errors, the CUDA path with a faked provider list ---

def test_without_the_ray_extra_ray_is_one_line(tiny_path, colours, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "available", lambda: False)
    line = fails_cleanly(["finetune", tiny_path, "--data", colours, "--out", tmp_path / "run", "--ray"], tmp_path)
    assert line == "ftonnx: error: --ray needs Ray: pip install 'ftonnx[ray]'"


@pytest.mark.parametrize("args, message", [
    (("--ray", "lite0.onnx"), "--ray 'lite0.onnx': not a cluster address; give HOST:PORT, ray://HOST:PORT or auto, "
                              "or nothing for a local cluster; put PRETRAINED before --ray"),
    (("--ray", "--no-cache"), "--ray computes the activation cache, which --no-cache turns off"),
])
def test_bad_ray_options_fail_at_once(tiny_path, colours, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(cluster, "available", lambda: True)
    assert message in fails_cleanly(["finetune", tiny_path, "--data", colours, "--out", tmp_path / "run", *args],
                                    tmp_path)


def test_ray_addresses():
    for good in ("local", "auto", "10.0.0.5:6379", "ray://head.example:10001", "[::1]:6379"):
        assert cluster.check_address(good) == good
    for bad in ("", "head", "http://x:1", "a b:1"):
        with pytest.raises(FtonnxError, match="not a cluster address"):
            cluster.check_address(bad)


def test_commands_that_need_no_ray_never_import_it(tiny_path, colours):
    """inspect and predict start fast: Ray (seconds to import) is imported only by --ray's code."""
    image = next((colours / "val" / "red").iterdir())
    driver = ("import atexit, sys; atexit.register(lambda: print('ray imported:', 'ray' in sys.modules, "
              "file=sys.stderr)); from ftonnx.cli import main; main()")
    for args in (("inspect", tiny_path), ("predict", tiny_path, image)):
        out = subprocess.run([sys.executable, "-c", driver, *map(str, args)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stderr.strip().splitlines()[-1] == "ray imported: False"


class FakeCudaSession:
    """What a CUDA build's InferenceSession records: the providers asked for; it runs on the CPU and says it
    runs on `first`."""

    asked: list[list[str]] = []

    def __init__(self, real: type, first: str) -> None:
        self.real, self.first = real, first

    def __call__(self, source, options, providers):
        FakeCudaSession.asked.append(list(providers))
        session = self.real(source, options, providers=["CPUExecutionProvider"])
        first = self.first
        session.get_providers = lambda: [first, "CPUExecutionProvider"]
        return session


@pytest.mark.parametrize("first", ["CUDAExecutionProvider", "CPUExecutionProvider"])
def test_actors_ask_for_cuda_where_the_build_has_it_and_refuse_a_silent_fallback(monkeypatch, first):
    import onnxruntime as ort

    from ftonnx.train.raycache import actor_session

    prefix = split(add_head(cut(build_tiny_model(), TINY_NODE), 3), ["head.flat"])[0]
    with pytest.raises(FtonnxError, match="--device cuda needs ONNX Runtime's CUDA training build"):
        actor_session(prefix, "cuda", 1)  # this CPU build has no CUDA provider
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession(ort.InferenceSession, first))
    FakeCudaSession.asked = []
    if first == "CUDAExecutionProvider":
        assert actor_session(prefix, "cuda", 1).get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(FtonnxError, match="--device cuda: onnxruntime on .* runs on CPUExecutionProvider; its "
                                              "CUDA libraries did not load"):
            actor_session(prefix, "cuda", 1)
    assert FakeCudaSession.asked[-1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    actor_session(prefix, "cpu", 1)
    assert FakeCudaSession.asked[-1] == ["CPUExecutionProvider"]


class FakeRay:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_each_actor_reserves_a_gpu_with_cuda_and_table_reads_keep_a_cpu():
    from ftonnx.train.raycache import _pool

    assert _pool(FakeRay({"CPU": 16, "GPU": 2}), "cuda", reads=False, actors=None) == (2, {"num_cpus": 1,
                                                                                         "num_gpus": 1})
    assert _pool(FakeRay({"CPU": 4}), "cpu", reads=False, actors=None) == (4, {"num_cpus": 1, "num_gpus": 0})
    assert _pool(FakeRay({"CPU": 4}), "cpu", reads=True, actors=None)[0] == 3
    with pytest.raises(FtonnxError, match="--device cuda with --ray: the cluster has no GPUs"):
        _pool(FakeRay({"CPU": 4}), "cuda", reads=False, actors=None)
    with pytest.raises(FtonnxError, match="has 2 CPU.* too few for 2 actor.* and one CPU for reading the table"):
        _pool(FakeRay({"CPU": 2}), "cpu", reads=True, actors=2)


# --- `ftonnx finetune --ray` on a local cluster started for the run ---

@pytest.fixture(scope="module")
def hymenoptera_run(zoo_model_path, hymenoptera, tmp_path_factory) -> tuple[Path, str]:
    """The local finetune (no Ray) the Ray runs must equal: (run folder, its result lines)."""
    run = tmp_path_factory.mktemp("local") / "run"
    code, stdout, stderr = cli("finetune", zoo_model_path, "--node", "AvgPool", "--data", hymenoptera, "--out", run,
                               "--no-report")
    assert code == 0, stderr
    return run, stdout


def local_cluster_pids() -> set[int]:
    """Processes of local clusters started by `--ray` (their command lines name ftonnx's temporary folder)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"ftonnx-ray-" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.add(int(entry))
        except OSError:
            pass
    return found


def test_finetune_ray_on_a_local_cluster_reaches_the_local_top1_and_leaves_nothing(zoo_model_path, hymenoptera,
                                                                                   hymenoptera_run, tmp_path):
    needs_ray()
    reference, result = hymenoptera_run
    run, before = tmp_path / "run", local_cluster_pids()
    folders = set(Path("/tmp").glob("ftonnx-ray-*"))
    command = [sys.executable, "-c", "from ftonnx.cli import main; main()", "finetune", str(zoo_model_path),
               "--node", "AvgPool", "--data", str(hymenoptera), "--out", str(run), "--ray", "--no-report"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "activation cache: computed on Ray, a local cluster of" in stderr
    assert stdout.splitlines()[0] == result.splitlines()[0]  # val top-1 ... (epoch ..., val loss ...)
    assert same_weights(run, reference)
    deadline = time.monotonic() + 15
    while local_cluster_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not local_cluster_pids() - before
    assert set(Path("/tmp").glob("ftonnx-ray-*")) <= folders


# --- on a cluster of two nodes ---

@pytest.fixture(scope="module")
def ray_cluster():
    needs_ray()
    from raycluster import LocalRayCluster

    started = LocalRayCluster(head_cpus=2)
    try:
        started.start()
        started.add_node(cpus=1, gpus=1)
        yield started
    finally:
        started.stop()
        assert not started.leftover_pids(), "Ray processes left behind"


@pytest.fixture(scope="module")
def hymenoptera_prefix(zoo_model_path) -> onnx.ModelProto:
    """The frozen prefix of the default finetune: Lite0 up to its pooling (head.flat: 1280 floats an image)."""
    return split(add_head(cut(load(zoo_model_path), "AvgPool"), 2), ["head.flat"])[0]


def kill_a_worker(ray_cluster, killed: list[int]) -> None:
    """SIGKILL one of the cluster's Ray Data actors (once)."""
    if not killed:
        workers = ray_cluster.worker_pids("MapWorker")
        assert workers, "no Ray Data actor found"
        os.kill(workers[0], signal.SIGKILL)
        killed.append(workers[0])


def test_the_cache_on_the_cluster_equals_the_local_cache_though_a_worker_is_killed(ray_cluster, hymenoptera,
                                                                                    hymenoptera_prefix):
    from ftonnx.train.raycache import build_caches

    sets = discover(str(hymenoptera))
    local = [ActivationCache.build(hymenoptera_prefix, dataset) for dataset in sets]
    killed: list[int] = []
    with cluster.connected(ray_cluster.address) as where:
        assert where == f"the cluster at {ray_cluster.address}"
        caches = build_caches(hymenoptera_prefix, [(sets[0], 1), (sets[1], 1)],
                              progress=lambda n: kill_a_worker(ray_cluster, killed))
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    assert [len(c) for c in caches] == [245, 153] and caches[0].arrays["head.flat"].shape == (245, 1280)
    assert_same_caches(caches, local)


def test_finetune_on_the_cluster_with_a_worker_killed_trains_the_local_weights(ray_cluster, zoo_model_path,
                                                                               hymenoptera, hymenoptera_run, tmp_path,
                                                                               monkeypatch):
    killed: list[int] = []

    class Killing(Progress):
        def update(self, n: int, **postfix: float) -> None:
            if "Ray" in self.desc:
                kill_a_worker(ray_cluster, killed)
            super().update(n, **postfix)

    monkeypatch.setattr(pipeline, "Progress", Killing)
    reference, result = hymenoptera_run
    code, stdout, stderr = cli("finetune", zoo_model_path, "--node", "AvgPool", "--data", hymenoptera, "--out",
                               tmp_path / "run", "--ray", ray_cluster.address, "--no-report")
    assert code == 0, stderr
    assert killed and f"computed on Ray, the cluster at {ray_cluster.address}" in stderr
    assert stdout.splitlines()[0] == result.splitlines()[0]
    assert same_weights(tmp_path / "run", reference)


@pytest.fixture(scope="module")
def colour_tables(colours, tmp_path_factory) -> dict[str, Path]:
    """The colour images, as a folder, a CSV of paths and Parquet tables of bytes with one undecodable image."""
    root = tmp_path_factory.mktemp("tables")
    tables = write_tables(root / "tables", colours)
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = pq.read_table(tables["parts"] / "part-1.parquet")
    images = part.column("image").to_pylist()
    images[3] = b"not an image"
    pq.write_table(part.set_column(0, "image", pa.array(images, pa.binary())), tables["parts"] / "part-1.parquet")
    onnx.save(build_tiny_model(num_classes=3), str(root / "tiny.onnx"))
    return {"folder": colours, "model": root / "tiny.onnx", **tables}


@pytest.mark.parametrize("source", ["parts", "csv", "views"])
def test_tables_and_views_on_the_cluster_equal_the_local_caches(ray_cluster, colour_tables, source):
    from ftonnx.train.raycache import build_caches

    if source == "csv":
        sets = discover(table=str(colour_tables["csv"]), image_column="file", label_column="class",
                        split_column="split")
    elif source == "parts":  # three files of bytes; one image does not decode (skipped, as locally)
        sets = discover(table=str(colour_tables["parts"]), split_column="split")
    else:
        sets = discover(str(colour_tables["folder"]))
    views = 3 if source == "views" else 1
    prefix = split(add_head(cut(build_tiny_model(num_classes=3), TINY_NODE), 3), ["head.flat"])[0]
    local = [ActivationCache.build(prefix, sets[0], views=views, augment="strong" if views > 1 else "none", seed=5),
             ActivationCache.build(prefix, sets[1])]
    with cluster.connected(ray_cluster.address):
        caches = build_caches(prefix, [(sets[0], views), (sets[1], 1)], augment="strong", seed=5)
    assert_same_caches(caches, local)
    assert len(caches[0].labels) + len(caches[1].labels) == 36 - (source == "parts")


def test_finetune_from_a_table_of_bytes_on_the_cluster_trains_the_folders_weights(ray_cluster, colour_tables, tmp_path):
    tables = colour_tables
    common = ("--node", TINY_NODE, "--batch-size", 8, "--lr", 0.1, "--epochs", 3, "--no-report")
    code, _, stderr = cli("finetune", tables["model"], "--data", tables["folder"], "--out", tmp_path / "folder",
                          *common)
    assert code == 0, stderr
    code, _, stderr = cli("finetune", tables["model"], "--table", tables["parquet"], "--split-column", "split",
                          "--out", tmp_path / "table", "--ray", ray_cluster.address, *common)
    assert code == 0, stderr
    assert same_weights(tmp_path / "table", tmp_path / "folder")


def test_views_of_a_table_of_bytes_are_refused_and_a_cuda_cluster_needs_gpus(ray_cluster, colour_tables):
    from ftonnx.train.raycache import build_caches

    sets = discover(table=str(colour_tables["parquet"]), split_column="split")
    prefix = split(add_head(cut(build_tiny_model(num_classes=3), TINY_NODE), 3), ["head.flat"])[0]
    with cluster.connected(ray_cluster.address):
        with pytest.raises(FtonnxError, match="--cache-views with --ray needs the images as files"):
            build_caches(prefix, [(sets[0], 2), (sets[1], 1)])
        with pytest.raises(FtonnxError, match="too few for 3 actor"):
            build_caches(prefix, [(sets[0], 1), (sets[1], 1)], actors=3)  # 3 CPUs, one kept for reading


def test_device_cuda_puts_one_actor_on_each_gpu_and_asks_its_node_for_cuda(ray_cluster, colour_tables, tmp_path):
    """The second node declares a GPU; the workers' onnxruntime is faked into a CUDA build (raycluster's
    setup hook). The actor lands on that node with CUDA_VISIBLE_DEVICES=0 and asks for CUDA first."""
    import ray

    from ftonnx.train.raycache import build_caches

    from raycluster import fake_cuda_build

    sets = discover(str(colour_tables["folder"]))
    prefix = split(add_head(cut(build_tiny_model(num_classes=3), TINY_NODE), 3), ["head.flat"])[0]
    local = [ActivationCache.build(prefix, dataset) for dataset in sets]
    ray.init(ray_cluster.address, logging_level="WARNING", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": fake_cuda_build,  # workers import it from tests/
                          "env_vars": {"FAKE_CUDA_REPORT": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent)}})
    try:
        with cluster.connected(ray_cluster.address) as where:
            assert where == "the Ray this process initialised"
            caches = build_caches(prefix, [(sets[0], 1), (sets[1], 1)], device="cuda")
    finally:
        ray.shutdown()
    reports = {p.read_text() for p in tmp_path.iterdir()}
    assert reports == {"CUDAExecutionProvider,CPUExecutionProvider 0"}
    assert_same_caches(caches, local)


def test_device_cuda_on_a_node_without_the_cuda_build_fails_as_one_line(ray_cluster, colour_tables):
    from ftonnx.train.raycache import build_caches

    sets = discover(str(colour_tables["folder"]))
    prefix = split(add_head(cut(build_tiny_model(num_classes=3), TINY_NODE), 3), ["head.flat"])[0]
    with cluster.connected(ray_cluster.address):
        with pytest.raises(FtonnxError) as error:
            build_caches(prefix, [(sets[0], 1), (sets[1], 1)], device="cuda")
    assert str(error.value) == ("--device cuda needs ONNX Runtime's CUDA training build: pip install 'ftonnx[cuda]' "
                                "(onnxruntime-training==1.19.2 in place of onnxruntime-training-cpu)")
