"""Spectral scans on a Ray cluster: ``analyze(..., spectral=True, executor="ray")``,
``analyze_many(..., executor="ray")`` and ``compare(..., executor="ray")`` (the norms and the
spectra of the updates) run here.

- **Connecting**: an initialized Ray is used as it is; otherwise ``ray.init(address=...)``
  with the ``ray_address`` given, else ``RAY_ADDRESS``, else a local Ray started in this
  process. Ray is the optional extra ``lora-rank[ray]``, imported only here, inside functions.
- **Tasks**: the scan's jobs (:mod:`lora_rank.spectral.jobs`) are split by
  :func:`~lora_rank.executors.scan.groups` into runs of consecutive matrices of one shard, of
  at most :func:`task_bytes` stored bytes (about :data:`TASKS_PER_SLOT` tasks per task slot of
  the cluster, between :data:`MIN_TASK_BYTES` and :data:`MAX_TASK_BYTES`), submitted largest
  first. One Ray task (``num_cpus`` = its solver threads) runs ``_core.spectra`` (or
  ``_core.frobenius_norms``) on its group.
  A task receives paths, URLs and byte ranges, never weight bytes: the worker reads a local
  path itself (a filesystem every node sees) or, for a hub checkpoint, the shards by HTTP range
  requests (:func:`lora_rank.sources.hub.remote_spectra`; these tasks run with
  ``HF_HUB_OFFLINE=0``, as the driver read the headers online; a gated repo needs ``HF_TOKEN``
  on the workers too, e.g. through ``ray.init(runtime_env={"env_vars": ...})``).
- **Same results**: each matrix's start block is seeded from its name (not from its place in a
  batch) and a task's solver uses ``threads`` threads (``settings.threads``, default 1), so
  every :class:`~lora_rank.report.Spectrum` is bit for bit the local engine's with the same
  settings (``threads`` included) on a CPU of the same kind: the workers run the pass kernel
  the driver's engine chose (``LORA_RANK_KERNEL``, :mod:`lora_rank.spectral.compute`).
- **Faults**: a task whose worker or node dies, or that fails with an ``OSError`` (a shared
  filesystem or the network), is retried by Ray (``max_retries``); the retries are counted
  (:class:`RunStats`, from Ray's attempt number, returned by each task). A task that fails (a
  worker exception, or a worker lost more than ``max_retries`` times) ends the scan with one
  :class:`~lora_rank.LoraRankError` naming its matrices, the shard and the worker's exception
  (a lora_rank error keeps its class).
  Local shards are stamped (size, mtime, ctime, inode) by the driver before the tasks are
  submitted; each task checks them before and after reading, and the driver once more at the
  end: a change is :class:`~lora_rank.FileChangedError`, never a mix of two versions (remote
  shards: ETag).
- **Progress**: one bar over the cluster (matrices and bytes done, from task completions,
  :mod:`lora_rank.spectral.progress`); Ctrl-C cancels the outstanding tasks.

Example (the local engine gives the same numbers; :func:`run` needs a Ray cluster, see
``tests/test_ray.py``):
    >>> import lora_rank
    >>> from lora_rank.executors.scan import Scan
    >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
    >>> task_bytes(scan.total_bytes(), slots=2) == MIN_TASK_BYTES
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .. import _core
from ..errors import ConfigError, FileChangedError, LoraRankError
from ..spectral.jobs import ELEMENT_SIZE
from ..spectral.progress import ProgressCallback, progress_reporter
from ..spectral.settings import SpectralSettings
from .scan import Scan, groups

#: Tasks aimed at per task slot (cluster CPUs / threads per task): enough to balance the load
#: and to lose little to a dead node, few enough that Ray's per-task cost stays small.
TASKS_PER_SLOT = 4
#: Bounds of a task's stored bytes (a larger matrix is a task of its own).
MIN_TASK_BYTES = 32 * 2**20
MAX_TASK_BYTES = 2 * 2**30
#: Retries of a task whose worker or node died.
MAX_RETRIES = 3

_INSTALL = 'executor="ray" needs Ray, an optional extra: pip install "lora-rank[ray]"'

#: ``(size, mtime_ns, ctime_ns, inode)`` of a shard file (as the engine's own check, without
#: the device number, which differs between the mounts of one shared filesystem).
Stamp = tuple[int, int, int, int]


@dataclass
class RunStats:
    """What the last :func:`run` did: tasks submitted, task runs (Ray's attempt numbers: a
    retry is one more run), and the wall time.

    Example:
        >>> RunStats(tasks=4, starts=5).retried
        1
    """

    tasks: int = 0
    starts: int = 0
    seconds: float = 0.0
    #: Ray's attempt number of the run that returned, per task (in order of submission; 1: no
    #: retry; 0: this Ray does not say).
    attempts: list[int] = field(default_factory=list)
    #: The Ray node id each task's result came from (in order of submission).
    nodes: list[str] = field(default_factory=list)

    @property
    def retried(self) -> int:
        """Task runs beyond the first of each task (workers or nodes lost mid-task)."""
        return self.starts - self.tasks


#: Statistics of the last :func:`run` in this process (for benchmarks and tests).
last_run = RunStats()


def import_ray() -> Any:
    """The ``ray`` module, or one :class:`~lora_rank.LoraRankError` saying how to install it.

    Example:
        >>> import sys, lora_rank
        >>> saved, sys.modules["ray"] = sys.modules.get("ray"), None  # Ray not installed
        >>> try:
        ...     import_ray()
        ... except lora_rank.LoraRankError as e:
        ...     print(e)
        ... finally:
        ...     _ = sys.modules.pop("ray") if saved is None else sys.modules.update(ray=saved)
        executor="ray" needs Ray, an optional extra: pip install "lora-rank[ray]"
    """
    try:
        import ray
    except ImportError:
        raise LoraRankError(_INSTALL) from None
    return ray


def task_bytes(total: int, slots: int) -> int:
    """Stored bytes per task for a scan of ``total`` bytes on ``slots`` task slots.

    Example:
        >>> task_bytes(16 * 2**30, slots=2) // 2**20
        2048
        >>> task_bytes(2 * 2**30, slots=8) // 2**20
        64
    """
    per = total // max(1, slots * TASKS_PER_SLOT)
    return max(MIN_TASK_BYTES, min(MAX_TASK_BYTES, per))


def _stamp(path: str) -> Stamp:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _check_stamps(shards: Sequence[tuple[str, int]], stamps: Sequence[Optional[Stamp]]) -> None:
    for (path, _), stamp in zip(shards, stamps):
        if stamp is None:
            continue
        try:
            now = _stamp(path)
        except FileNotFoundError:
            raise FileChangedError(f"{path}: removed during the scan") from None
        if now != stamp:
            raise FileChangedError(
                f"{path}: changed during the scan (size, mtime, ctime, inode {stamp} became "
                f"{now}): its spectra would mix two versions of the file"
            )


def _attempt(ray: Any) -> int:
    """Ray's attempt number of the running task, from 1 (its first run), 0 when this Ray does
    not say (a private API: ``CoreWorker.get_current_task_attempt_number``)."""
    try:
        return (
            int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()) + 1
        )
    except (AttributeError, TypeError):
        return 0


def _task_stamps(task: dict[str, Any], stamps: Sequence[Optional[Stamp]]) -> list[Optional[Stamp]]:
    """The stamps of the shards ``task`` reads (its jobs and the jobs they subtract), None for
    the others."""
    used = {s for job in task["jobs"] for s, _, _ in job[1]}
    for m in task["minus"] or ():
        if m is not None:
            used |= {s for s, _, _ in m[0][1]}
    return [stamp if i in used else None for i, stamp in enumerate(stamps)]


def _run_task(
    task: dict[str, Any],
    settings: SpectralSettings,
    stamps: Sequence[Optional[Stamp]],
    what: str = "spectra",
) -> tuple[int, str, list[Any]]:
    """One Ray task (runs on a worker): the spectra (``what="spectra"``: result dicts) or the
    Frobenius norms (``"norms"``: floats) of a group of jobs, read by the worker; with Ray's
    attempt number of this run and the node it ran on."""
    import ray

    out: Sequence[Any]
    if what == "norms":
        mine = _task_stamps(task, stamps)
        _check_stamps(task["shards"], mine)
        out = _core.frobenius_norms(
            task["shards"],
            task["jobs"],
            quant=task["quant"],
            minus=task["minus"],
            threads=settings.threads,
        )
        _check_stamps(task["shards"], mine)
        return _attempt(ray), ray.get_runtime_context().get_node_id(), list(out)
    if task["remote"] is not None:
        # Lazy: the hub source is needed by the workers of remote checkpoints only.
        from ..sources.hub import remote_spectra

        out = remote_spectra(
            task["remote"], task["jobs"], ELEMENT_SIZE, settings=settings, progress=None
        )
    else:
        mine = _task_stamps(task, stamps)
        _check_stamps(task["shards"], mine)
        out = _core.spectra(
            task["shards"],
            task["jobs"],
            settings,
            quant=task["quant"],
            minus=task["minus"],
        )
        _check_stamps(task["shards"], mine)
    node = ray.get_runtime_context().get_node_id()
    return _attempt(ray), node, [dict(d) for d in out]


def _error(e: BaseException, task: dict[str, Any]) -> BaseException:
    """One error for a failed task: a lora_rank error keeps its class; anything else (a
    worker's exception, a worker or node lost more than ``max_retries`` times) is a
    LoraRankError naming the task's matrices, its shard and the exception."""
    names = [job[0] for job in task["jobs"]]
    where = names[0] + (f" (and {len(names) - 1} more matrices of its task)" if names[1:] else "")
    shard = task["jobs"][0][1][0][0] if task["jobs"] and task["jobs"][0][1] else None
    source = task["remote"] if task["remote"] is not None else task["shards"]
    if shard is not None:
        entry = source[shard]
        where += f" in {getattr(entry, 'url', None) or entry[0]}"
    return _failure(e, where)


def _failure(e: BaseException, where: str) -> BaseException:
    """The error of a failed Ray task about ``where``: the worker's lora_rank error with its
    class and message, else a LoraRankError naming ``where`` and the worker's exception."""
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, LoraRankError):
        return type(cause)(str(cause))
    text = " ".join(str(cause).split()) or type(cause).__name__
    return LoraRankError(f"{where}: the Ray task failed: {type(cause).__name__}: {text}")


def _collect(
    ray: Any,
    refs: Sequence[Any],
    failure: Callable[[int, BaseException], BaseException],
    finished: Callable[[int, Any], None],
) -> tuple[list[int], list[str]]:
    """Waits for the Ray tasks ``refs`` (each returns ``(attempt, node, out)``), taking every
    finished one per wake-up, and calls ``finished(i, out)`` in order of completion. A failed
    task i raises ``failure(i, exception)``; on any exception (Ctrl-C too) the outstanding
    tasks are cancelled. Returns each task's attempt number and node (in the order of
    ``refs``). The one collection loop of :func:`run` and :func:`each`."""
    index = {ref: i for i, ref in enumerate(refs)}
    attempts = [0] * len(refs)
    nodes = [""] * len(refs)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if pending:  # every other finished task too: one pass over pending per wake-up
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for ref in ready:
                i = index[ref]
                try:
                    attempts[i], nodes[i], out = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise failure(i, e) from None
                finished(i, out)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return attempts, nodes


def _worker_env(**env_vars: str) -> dict[str, Any]:
    """The ``runtime_env`` of our tasks: ``env_vars`` and this process's pass kernel
    (``LORA_RANK_KERNEL``: the engine picks the fastest kernel per CPU, by measurement where
    two are close, and they agree within the solver's tolerance, not bit for bit), so that a
    worker on a CPU of this kind computes the driver's bits.

    Example:
        >>> _worker_env(HF_HUB_OFFLINE="0")["env_vars"]["LORA_RANK_KERNEL"] in ("bf16", "f32", "faer")
        True
    """
    return {"env_vars": {**env_vars, "LORA_RANK_KERNEL": _core.pass_kernel()}}


def _connect(ray: Any, address: Optional[str]) -> None:
    if not ray.is_initialized():
        import logging

        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)


def run(
    scans: Sequence[Scan],
    settings: SpectralSettings,
    *,
    progress: Union[bool, ProgressCallback, None] = None,
    address: Optional[str] = None,
    description: str = "spectra",
    max_retries: int = MAX_RETRIES,
    bytes_per_task: Optional[int] = None,
    what: str = "spectra",
) -> list[list[Any]]:
    """The engine's result dicts of every job of every scan (per scan, in job order),
    computed by Ray tasks (see the module docs); ``what="norms"``: their Frobenius norms
    instead (``_core.frobenius_norms``, local shards only). ``bytes_per_task`` overrides
    :func:`task_bytes`; :data:`last_run` holds the task counts.

    Example (needs a running cluster: skipped here):
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> out = run([Scan.of_report(report)], SpectralSettings(top_k=4))  # doctest: +SKIP
        >>> len(out[0])  # doctest: +SKIP
        40
    """
    global last_run
    ray = import_ray()
    if what not in ("spectra", "norms"):
        raise ConfigError(f"what must be 'spectra' or 'norms', not {what!r}")
    if what == "norms" and any(s.remote is not None for s in scans):
        raise ConfigError("norms of remote shards are not computed on Ray")
    _connect(ray, address)
    threads = settings.threads or 1
    chosen = settings.replace(threads=threads)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((int(n.get("Resources", {}).get("CPU", 0)) for n in alive), default=0)
    if threads > largest:
        raise ConfigError(
            f"threads={threads} per Ray task, but the largest node of the cluster has "
            f"{largest} CPU(s): no task could be scheduled (pass threads <= {largest})"
        )
    slots = sum(int(n.get("Resources", {}).get("CPU", 0)) // threads for n in alive)
    total_bytes = sum(s.total_bytes() for s in scans)
    size = bytes_per_task or task_bytes(total_bytes, slots)
    tasks: list[tuple[int, list[int]]] = [
        (k, g) for k, s in enumerate(scans) for g in groups(s, size)
    ]
    tasks.sort(key=lambda t: -sum(scans[t[0]].job_bytes(i) for i in t[1]))
    stamps = [
        [_stamp(path) if s.remote is None and n >= 0 else None for path, n in s.shards]
        for s in scans
    ]
    task_options: dict[str, Any] = {
        "num_cpus": threads,
        "max_retries": max_retries,
        "retry_exceptions": [OSError],
    }
    remote_fn = ray.remote(_run_task).options(**task_options, runtime_env=_worker_env())
    started = time.monotonic()
    args = [scans[k].task(g) for k, g in tasks]
    # The driver read a remote checkpoint's headers online: its workers fetch online too,
    # whatever HF_HUB_OFFLINE their nodes were started with.
    online = ray.remote(_run_task).options(
        **task_options, runtime_env=_worker_env(HF_HUB_OFFLINE="0")
    )
    refs = [
        (online if scans[k].remote is not None else remote_fn).remote(a, chosen, stamps[k], what)
        for (k, _), a in zip(tasks, args)
    ]
    results: list[list[Any]] = [[None] * len(s.jobs) for s in scans]
    total = sum(len(s.jobs) for s in scans)
    done = 0
    with progress_reporter(progress, total, description, total_bytes=total_bytes) as callback:
        fetched = getattr(callback, "fetched", None)

        def finished(key: int, out: list[Any]) -> None:
            nonlocal done
            k, group = tasks[key]
            for i, d in zip(group, out):
                results[k][i] = d
            done += len(group)
            if callback is not None:
                callback(done, total, scans[k].jobs[group[-1]][0])
            if fetched is not None:
                fetched(sum(scans[k].job_bytes(i) for i in group))

        attempts, nodes = _collect(ray, refs, lambda key, e: _error(e, args[key]), finished)
    for scan, mine in zip(scans, stamps):
        _check_stamps(scan.shards, mine)
    last_run = RunStats(len(tasks), sum(attempts), time.monotonic() - started, attempts, nodes)
    return results


def _run_one(
    fn: Callable[[Any], Any],
    item: Any,
    shards: Sequence[tuple[str, int]],
    stamps: Sequence[Optional[Stamp]],
) -> tuple[int, str, Any]:
    """One Ray task of :func:`each` (runs on a worker): ``fn(item)`` between two checks that
    the shards are unchanged; with Ray's attempt number and the node it ran on."""
    import ray

    _check_stamps(shards, stamps)
    out = fn(item)
    _check_stamps(shards, stamps)
    return _attempt(ray), ray.get_runtime_context().get_node_id(), out


def each(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    shards: Sequence[tuple[str, int]],
    names: Sequence[str],
    progress: Union[bool, ProgressCallback, None] = None,
    address: Optional[str] = None,
    description: str = "tasks",
    max_retries: int = MAX_RETRIES,
    num_cpus: int = 1,
) -> list[Any]:
    """``[fn(item) for item in items]``, one Ray task per item: ``fn`` is a module-level
    function the workers import, an item holds what it reads (paths, byte ranges of the local
    ``shards``, never weight bytes), and ``names[i]`` names item i in errors. The shards are
    stamped first and checked by every task and once more at the end
    (:class:`~lora_rank.FileChangedError`); retries and the error of a failing task as in
    :func:`run`; :data:`last_run` holds the task counts. What ``extract(executor="ray")`` runs
    (one truncated SVD per module).

    Example (needs a running cluster: skipped here):
        >>> each(abs, [-1, 2], shards=[], names=["a", "b"])  # doctest: +SKIP
        [1, 2]
    """
    global last_run
    ray = import_ray()
    _connect(ray, address)
    stamps = [_stamp(path) if n >= 0 else None for path, n in shards]
    remote_fn = ray.remote(_run_one).options(
        num_cpus=num_cpus,
        max_retries=max_retries,
        retry_exceptions=[OSError],
        runtime_env=_worker_env(),
    )
    started = time.monotonic()
    refs = [remote_fn.remote(fn, x, list(shards), stamps) for x in items]
    results: list[Any] = [None] * len(items)
    done = 0
    with progress_reporter(progress, len(items), description) as callback:

        def finished(i: int, out: Any) -> None:
            nonlocal done
            results[i] = out
            done += 1
            if callback is not None:
                callback(done, len(items), names[i])

        attempts, nodes = _collect(ray, refs, lambda i, e: _failure(e, names[i]), finished)
    _check_stamps(shards, stamps)
    last_run = RunStats(len(items), sum(attempts), time.monotonic() - started, attempts, nodes)
    return results
