"""``executor="ray"`` on a real two-node Ray cluster on loopback, against the local engine.

The cluster tests run only with ``LORA_RANK_RAY_TESTS=1``, which ``scripts/test.sh`` sets in its
own step inside a network namespace that has only loopback::

    unshare -n bash -c 'ip link set lo up && LORA_RANK_RAY_TESTS=1 exec python -m pytest tests/test_ray.py'

(Ray otherwise binds the machine's outward address; these machines allow loopback traffic
only.) The cluster (``ray.cluster_utils.Cluster``: a head and one more node, one CPU each) is
started once for the module and must run on 127.0.0.1: the fixture fails otherwise. The
oracle of every result is the local engine with the same settings (``threads`` included).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import lora_rank
import numpy as np
import pytest
from hub_server import HubServer, Repo, point_hub_client_at
from lora_rank import _core
from lora_rank.executors import ray as ray_executor
from lora_rank.executors.scan import Scan
from lora_rank.report import Report, Spectrum
from lora_rank.spectral.settings import SpectralSettings

CLUSTER = os.environ.get("LORA_RANK_RAY_TESTS") == "1"
needs_cluster = pytest.mark.skipif(
    not CLUSTER,
    reason="Ray cluster tests run in scripts/test.sh's loopback-only network namespace "
    "(LORA_RANK_RAY_TESTS=1)",
)
SHA = "0123456789abcdef0123456789abcdef01234567"


def _bits(value: Any) -> Any:
    """A value with every float replaced by its IEEE bytes (NaN == NaN, -0.0 != 0.0)."""
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, (list, tuple)):
        return tuple(_bits(v) for v in value)
    return value


def _spectrum_bits(s: Optional[Spectrum]) -> Any:
    if s is None:
        return None
    return tuple((f.name, _bits(getattr(s, f.name))) for f in dataclasses.fields(s))


def _all_spectra(report: Report) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in report.modules:
        if m.spectrum is not None:
            out[m.name] = _spectrum_bits(m.spectrum)
        for e, s in enumerate(m.expert_spectra or ()):
            out[f"{m.name}[{e}]"] = _spectrum_bits(s)
    return out


def _assert_same(local: Report, remote: Report) -> None:
    want, got = _all_spectra(local), _all_spectra(remote)
    assert len(want) > 0
    assert list(got) == list(want)
    for name in want:
        assert got[name] == want[name], name


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head node and one more (1 CPU each) on 127.0.0.1; ray connected to it."""
    if not CLUSTER:
        pytest.skip("Ray cluster tests need LORA_RANK_RAY_TESTS=1 (scripts/test.sh)")
    # Only loopback: no route to any other address (else Ray would bind the outward one).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.connect(("192.0.2.1", 9))
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2
        assert {n["NodeManagerAddress"] for n in alive} == {"127.0.0.1"}
        assert c.address.startswith("127.0.0.1:")
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _two_nodes(c: Any) -> None:
    """Back to the head and one more node (after a test removed it)."""
    if not c.worker_nodes:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
    assert len(c.worker_nodes) == 1


def _local(path: Any, threads: int = 1, **kw: Any) -> Report:
    return lora_rank.analyze(path, spectral=True, threads=threads, progress=False, **kw)


@needs_cluster
@pytest.mark.parametrize("name", ["minilm", "llama", "mixtral"])
def test_ray_equals_local(
    cluster: Any, name: str, minilm: Path, checkpoint: Callable[[str], Path]
) -> None:
    """Every Spectrum field bit for bit, on the real MiniLM and on sharded fixtures (mixtral:
    expert slices); the tasks ran on both nodes."""
    _two_nodes(cluster)
    path = minilm if name == "minilm" else checkpoint(name)
    want = _local(path)
    calls: list[tuple[int, int, str]] = []
    got = lora_rank.analyze(
        path,
        spectral=True,
        threads=1,
        executor="ray",
        progress=lambda d, t, n: calls.append((d, t, n)),
    )
    _assert_same(want, got)
    run = ray_executor.last_run
    assert run.tasks > 1 and run.retried == 0 and run.attempts == [1] * run.tasks
    # One progress callback per finished task, up to every matrix.
    total = len(_all_spectra(want))
    assert len(calls) == run.tasks and calls[-1][:2] == (total, total)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)


@needs_cluster
def test_randomized_solver_and_two_threads_equal_local(cluster: Any, minilm: Path) -> None:
    """The randomized solver (the word embeddings and the MLP matrices are large enough for
    the panel-group path) with 2 threads per task on a cluster whose nodes have 2 CPUs."""
    _two_nodes(cluster)
    big = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        want = _local(minilm, threads=2, method="randomized", top_k=8)
        got = lora_rank.analyze(
            minilm, spectral=True, threads=2, method="randomized", top_k=8, executor="ray"
        )
        _assert_same(want, got)
        assert ray_executor.last_run.tasks > 1
    finally:
        cluster.remove_node(big)


@needs_cluster
def test_too_many_threads_per_task_is_refused(cluster: Any, minilm: Path) -> None:
    _two_nodes(cluster)
    with pytest.raises(lora_rank.ConfigError, match=r"threads=4 per Ray task.*1 CPU"):
        lora_rank.analyze(minilm, spectral=True, threads=4, executor="ray")


@needs_cluster
def test_analyze_many_equals_local(
    cluster: Any, minilm: Path, checkpoint: Callable[[str], Path]
) -> None:
    _two_nodes(cluster)
    paths = [minilm, checkpoint("llama"), checkpoint("mixtral"), minilm]
    got = lora_rank.analyze_many(paths, spectral=True, threads=1, executor="ray")
    assert len(got) == 4
    for path, report in zip(paths, got):
        _assert_same(_local(path), report)
    # One set of tasks for all of them.
    assert ray_executor.last_run.tasks >= 4


def _finetune_of_minilm(out: Path) -> None:
    """MiniLM with a small random update of every 2-D weight but the embeddings."""
    from safetensors.numpy import load_file, save_file

    src = lora_rank.demo_checkpoint()
    tensors = load_file(str(src / "model.safetensors"))
    rng = np.random.default_rng(3)
    for name, t in tensors.items():
        if t.ndim == 2 and "embeddings" not in name:
            tensors[name] = (t + 0.01 * rng.standard_normal(t.shape)).astype(t.dtype)
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"))
    shutil.copy(src / "config.json", out / "config.json")


@needs_cluster
def test_compare_equals_local(cluster: Any, minilm: Path, tmp_path: Path) -> None:
    """compare(): the norms of both checkpoints and of every update, and the updates'
    spectra, computed by Ray tasks, equal the local engine's bit for bit."""
    _two_nodes(cluster)
    ft = tmp_path / "ft"
    _finetune_of_minilm(ft)
    want = lora_rank.compare(minilm, ft, threads=1, top_k=16, progress=False)
    got = lora_rank.compare(minilm, ft, threads=1, top_k=16, executor="ray")
    solved = [m for m in want.modules if m.spectrum is not None]
    assert len(solved) >= 36  # every linear layer changed
    assert [m.name for m in got.modules] == [m.name for m in want.modules]
    for a, b in zip(want.modules, got.modules):
        assert _spectrum_bits(b.spectrum) == _spectrum_bits(a.spectrum), a.name
        assert _bits(b.delta_norm) == _bits(a.delta_norm)
        assert _bits(b.base_norm) == _bits(a.base_norm)
    assert ray_executor.last_run.tasks > 1


@needs_cluster
def test_extract_equals_local(cluster: Any, minilm: Path, tmp_path: Path) -> None:
    """extract(executor="ray"): one Ray task per module reads its update and factorizes it;
    the adapter's tensors are the local extraction's bit for bit (same threads); a shard
    changed before the tasks read it is FileChangedError."""
    from safetensors.numpy import load_file

    _two_nodes(cluster)
    ft = tmp_path / "ft"
    _finetune_of_minilm(ft)
    c = lora_rank.compare(minilm, ft, threads=1, top_k=16, progress=False)
    want = c.extract(tmp_path / "local", budget=200_000, threads=1)
    got = c.extract(tmp_path / "ray", budget=200_000, threads=1, executor="ray")
    assert got.ranks == want.ranks and len(want.ranks) > 10
    assert _bits(got.energy_kept) == _bits(want.energy_kept)
    a = load_file(str(tmp_path / "local" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ray" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert ray_executor.last_run.tasks == len(want.ranks)
    shard = Path(next(p for p, _ in c.shards if str(ft) in p))

    def progress(done: int, total: int, name: str) -> None:
        if done == 1:  # the fine-tune's shard changes after the first module's task
            st = shard.stat()
            os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    with pytest.raises(lora_rank.FileChangedError, match=r"model\.safetensors"):
        c.extract(None, budget=200_000, threads=1, executor="ray", progress=progress)


@pytest.fixture
def hub(
    minilm: Path, checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[HubServer]:
    """The hub-like test server on 127.0.0.1 (tests/hub_server.py), with huggingface_hub in
    this process pointed at it, online, an empty cache (as tests/test_hub.py's fixture)."""
    repos = {"tiny/minilm": Repo(minilm, sha=SHA), "tiny/llama": Repo(checkpoint("llama"), sha=SHA)}
    with HubServer(repos) as server:
        point_hub_client_at(server, monkeypatch, tmp_path)
        yield server


@needs_cluster
@pytest.mark.parametrize("repo", ["tiny/minilm", "tiny/llama"])
def test_hub_source_read_by_the_workers(
    cluster: Any, hub: HubServer, repo: str, minilm: Path, checkpoint: Callable[[str], Path]
) -> None:
    """A hub checkpoint: the workers fetch their matrices by range requests from the server
    (the driver reads headers only); the spectra equal the local engine's on the files."""
    _two_nodes(cluster)
    got = lora_rank.analyze(repo, spectral=True, threads=1, executor="ray")
    assert got.remote_shards is not None
    want = _local(hub.repos[repo].root)
    _assert_same(want, got)
    ranged = [r for r in hub.log if r.range and r.status == 206]
    data = sum(r.body_bytes for r in ranged)
    assert data >= sum(t.end - t.begin for t in got.tensors if len(t.shape) == 2) * 0.9
    assert ray_executor.last_run.tasks > 1


def _running_a_task(raylet: int) -> bool:
    """Whether a worker of the raylet ``raylet`` (a pid) runs one of our tasks: Ray titles a
    busy worker's process ``ray::<task name>``."""
    import psutil

    try:
        workers = psutil.Process(raylet).children(recursive=True)
    except psutil.Error:
        return False
    for w in workers:
        try:
            if "ray::_run_task" in " ".join(w.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


@needs_cluster
def test_node_removed_mid_scan(cluster: Any, minilm: Path) -> None:
    """The second node is removed while one of its workers runs a task: Ray runs the task
    again on the head, the result is bit for bit the local engine's, and the retry is counted
    (Ray's attempt number, returned by each task)."""
    import threading
    import time

    import ray

    _two_nodes(cluster)
    report = lora_rank.analyze(minilm)
    scan = Scan.of_report(report)
    settings = SpectralSettings(threads=1)
    want = [Spectrum.from_core(d) for d in _core.spectra(scan.shards, scan.jobs, settings)]
    (victim,) = cluster.worker_nodes
    head_id = cluster.head_node.node_id
    # The driver is on the head (its node survives).
    assert ray.get_runtime_context().get_node_id() == head_id
    raylet = victim.all_processes["raylet"][0].process.pid
    removed: list[float] = []

    def remove_when_busy() -> None:
        start = time.monotonic()
        while time.monotonic() - start < 60:
            if _running_a_task(raylet):
                cluster.remove_node(victim)
                removed.append(time.monotonic() - start)
                return
            time.sleep(0.002)

    remover = threading.Thread(target=remove_when_busy)
    remover.start()
    try:
        out = ray_executor.run([scan], settings, progress=False, bytes_per_task=1)
    finally:
        remover.join()
    assert removed, "the second node never ran a task"
    got = [Spectrum.from_core(d) for d in out[0]]
    assert [_spectrum_bits(s) for s in got] == [_spectrum_bits(s) for s in want]
    run = ray_executor.last_run
    assert run.tasks == len(scan.jobs)
    assert run.retried >= 1, run.attempts
    assert all(a >= 1 for a in run.attempts)
    again = [node for a, node in zip(run.attempts, run.nodes) if a > 1]
    assert again and set(again) == {head_id}, (run.attempts, run.nodes)
    _two_nodes(cluster)


@needs_cluster
def test_file_changed_between_tasks(cluster: Any, minilm: Path, tmp_path: Path) -> None:
    """The shard changes after the first task: FileChangedError, never a mixed result."""
    _two_nodes(cluster)
    copy = tmp_path / "minilm"
    shutil.copytree(minilm, copy)
    scan = Scan.of_report(lora_rank.analyze(copy))
    shard = copy / "model.safetensors"

    def progress(done: int, total: int, name: str) -> None:
        if done == 1:
            st = shard.stat()
            os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    with pytest.raises(lora_rank.FileChangedError, match=r"model\.safetensors"):
        ray_executor.run([scan], SpectralSettings(threads=1), progress=progress, bytes_per_task=1)


@needs_cluster
def test_failing_task_names_its_matrix_and_the_worker_exception(cluster: Any, minilm: Path) -> None:
    """A task that fails on its worker (here: a job the binding cannot convert) ends the scan
    with one error naming the matrix, its file and the worker's exception."""
    _two_nodes(cluster)
    scan = Scan.of_report(lora_rank.analyze(minilm))
    bad = Scan(scan.shards, [("bogus.weight", [(0, 0, 4)], -1, "F32")], [None])
    with pytest.raises(lora_rank.LoraRankError) as e:
        ray_executor.run([bad], SpectralSettings(threads=1))
    msg = str(e.value)
    assert "bogus.weight" in msg and "model.safetensors" in msg and "OverflowError" in msg, msg
    # An engine error keeps its class and message (here: a dtype the engine cannot decode).
    undecodable = Scan(scan.shards, [("ints.weight", [(0, 8, 2)], 4, "I64")], [None])
    with pytest.raises(lora_rank.LoraRankError, match=r"ints\.weight") as e2:
        ray_executor.run([undecodable], SpectralSettings(threads=1))
    assert isinstance(e2.value, lora_rank.UnsupportedFormatError)
    assert "Ray task" not in str(e2.value)


@needs_cluster
def test_ctrl_c_cancels_the_outstanding_tasks(cluster: Any, minilm: Path) -> None:
    """KeyboardInterrupt in the driver (here: from the progress callback after the first task)
    cancels the tasks still outstanding and propagates; the cluster is free at once."""
    import time

    import ray

    _two_nodes(cluster)
    scan = Scan.of_report(lora_rank.analyze(minilm))
    settings = SpectralSettings(threads=1, method="exact")

    def progress(done: int, total: int, name: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ray_executor.run([scan], settings, progress=progress, bytes_per_task=1)
    # Every CPU is free again soon (40 one-matrix tasks would keep them busy for seconds).
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2
    got = lora_rank.analyze(minilm, spectral=True, threads=1, executor="ray")
    _assert_same(_local(minilm), got)


@needs_cluster
def test_cli_executor_ray(cluster: Any, minilm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lora_rank.cli import main

    _two_nodes(cluster)
    args = ["analyze", str(minilm), "--spectral", "--format", "json", "--threads", "1", "-q"]
    assert main(args) == 0
    want = json.loads(capsys.readouterr().out)
    assert main([*args, "--executor", "ray", "--ray-address", cluster.address]) == 0
    got = json.loads(capsys.readouterr().out)
    spectra = [m["spectrum"] for m in want["modules"] if m.get("spectrum")]
    assert len(spectra) == 40
    assert [m.get("spectrum") for m in got["modules"]] == [
        m.get("spectrum") for m in want["modules"]
    ]


def test_without_ray_installed_one_error_says_how_to_install(
    minilm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray absent (its import fails): one LoraRankError with the pip command, before any
    work; the CLI prints it as one line."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(lora_rank.LoraRankError) as e:
        lora_rank.analyze(minilm, spectral=True, executor="ray")
    assert str(e.value) == (
        'executor="ray" needs Ray, an optional extra: pip install "lora-rank[ray]"'
    )
    assert not isinstance(e.value, ImportError)
    with pytest.raises(lora_rank.LoraRankError, match=r"lora-rank\[ray\]"):
        lora_rank.compare(minilm, minilm, executor="ray")
    with pytest.raises(lora_rank.ConfigError, match="executor must be one of local, ray"):
        lora_rank.analyze(minilm, spectral=True, executor="dask")


def test_analyze_many_local_is_analyze_of_each(
    minilm: Path, checkpoint: Callable[[str], Path]
) -> None:
    """The in-process default: one Report per path, each equal to analyze()'s (spectra bit for
    bit); a PEFT adapter directory is refused before anything is read."""
    paths = [minilm, checkpoint("llama")]
    got = lora_rank.analyze_many(paths, spectral=True, threads=1, top_k=8, progress=False)
    assert [r.path for r in got] == [_local(p).path for p in paths]
    for path, report in zip(paths, got):
        _assert_same(_local(path, top_k=8), report)
    headers_only = lora_rank.analyze_many(paths)
    assert all(m.spectrum is None for r in headers_only for m in r.modules)


def test_analyze_many_refuses_adapter_directories(minilm: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(lora_rank.ConfigError, match="PEFT adapter directory"):
        lora_rank.analyze_many([minilm, tmp_path])
