"""Where spectral work runs: in this process (``"local"``, the default: the Rust engine's thread
pool) or on a Ray cluster (``"ray"``, :mod:`lora_rank.executors.ray`: one Ray task per group of
matrices of one shard; the workers read the bytes themselves). Both give the same
:class:`~lora_rank.report.Spectrum` objects, bit for bit, for the same settings (seed and
threads per matrix: ``threads`` is the solver's thread count of each Ray task).

:func:`compute_spectra` is what ``analyze(..., spectral=True, executor=...)`` runs,
:func:`compute_many` what ``analyze_many`` runs and :func:`spectra` what ``compare`` runs for
its updates. May import: ``_core``, ``errors``, ``report``, ``spectral``, itself;
``sources.hub`` lazily (the workers of a remote checkpoint); ``ray`` only inside the functions
that use it.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> compute_spectra(report, SpectralSettings(top_k=8), progress=False, executor="local")
    >>> report.module("encoder.layer.0.attention.self.query").spectrum.method
    'exact'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

from .. import _core
from ..errors import ConfigError
from ..report import Report
from ..spectral import compute as _compute
from ..spectral.progress import ProgressCallback, progress_reporter
from ..spectral.settings import SpectralSettings
from .scan import Scan

#: The executors ``executor=`` accepts.
EXECUTORS = ("local", "ray")

__all__ = [
    "EXECUTORS",
    "Scan",
    "check_executor",
    "compute_many",
    "compute_spectra",
    "each",
    "norms",
    "spectra",
]


def check_executor(executor: str) -> str:
    """``executor`` if it is one of :data:`EXECUTORS`, else :class:`~lora_rank.ConfigError`.

    Example:
        >>> check_executor("ray")
        'ray'
        >>> check_executor("dask")
        Traceback (most recent call last):
        ...
        lora_rank.errors.ConfigError: executor must be one of local, ray, not 'dask'
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    return executor


def compute_spectra(
    report: Report,
    settings: SpectralSettings,
    *,
    progress: Union[bool, ProgressCallback, None] = None,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> None:
    """Spectra of every weight matrix of ``report``, in place, on ``executor``
    (:func:`lora_rank.spectral.compute.compute_spectra` for ``"local"``).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> compute_spectra(report, SpectralSettings(top_k=4), progress=False)
        >>> len(report.module("encoder.layer.0.attention.self.query").spectrum.singular_values)
        4
    """
    compute_many([report], settings, progress=progress, executor=executor, ray_address=ray_address)


def compute_many(
    reports: Sequence[Report],
    settings: SpectralSettings,
    *,
    progress: Union[bool, ProgressCallback, None] = None,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> None:
    """Spectra of every report of ``reports``, in place. On Ray, the matrices of all of them
    are one set of tasks under one progress bar; locally, one report after the other.

    Example:
        >>> import lora_rank
        >>> reports = [lora_rank.analyze(lora_rank.demo_checkpoint()) for _ in range(2)]
        >>> compute_many(reports, SpectralSettings(top_k=4), progress=False)
        >>> a, b = (r.module("pooler.dense").spectrum for r in reports)
        >>> a == b
        True
    """
    check_executor(executor)
    if executor == "local":
        for report in reports:
            _compute.compute_spectra(report, settings, progress=progress)
        return
    from . import ray as _ray

    scans = [Scan.of_report(r) for r in reports]
    results = _ray.run(scans, settings, progress=progress, address=ray_address)
    for report, scan, out in zip(reports, scans, results):
        assert scan.plan is not None
        _compute.attach_spectra(report, scan.plan, out, settings)


def spectra(
    scan: Scan,
    settings: SpectralSettings,
    *,
    progress: Union[bool, ProgressCallback, None] = None,
    description: str = "spectra",
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> Sequence[Mapping[str, Any]]:
    """The engine's result dicts of ``scan``'s jobs, in order (``_core.spectra`` locally).

    Example:
        >>> import lora_rank
        >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> out = spectra(scan, SpectralSettings(top_k=4), progress=False)
        >>> len(out) == len(scan.jobs), out[0]["method"]
        (True, 'exact')
    """
    check_executor(executor)
    if executor == "ray":
        from . import ray as _ray

        return _ray.run(
            [scan], settings, progress=progress, address=ray_address, description=description
        )[0]
    if scan.remote is not None:
        raise ConfigError("a remote scan runs on Ray only (analyze() reads remote spectra itself)")
    with progress_reporter(progress, len(scan.jobs), description) as callback:
        return list(
            _core.spectra(
                scan.shards,
                scan.jobs,
                settings,
                progress=callback,
                quant=scan.quant,
                minus=scan.minus,
            )
        )


def norms(
    scan: Scan,
    settings: SpectralSettings,
    *,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> list[float]:
    """Frobenius norm of each of ``scan``'s jobs (of the difference for a job with a
    ``minus``; NaN for a matrix holding NaN/Inf), in order: ``_core.frobenius_norms`` with
    ``settings.threads`` locally, Ray tasks over the same groups as the spectra with
    ``executor="ray"`` (the same values: each norm is one sequential sum).

    Example:
        >>> import lora_rank
        >>> scan = Scan.of_report(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> round(norms(scan, SpectralSettings())[0], 3)
        10.931
    """
    check_executor(executor)
    if executor == "ray":
        from . import ray as _ray

        out = _ray.run(
            [scan], settings, progress=False, address=ray_address, description="norms", what="norms"
        )[0]
        return [float(x) for x in out]
    return list(
        _core.frobenius_norms(
            scan.shards, scan.jobs, quant=scan.quant, minus=scan.minus, threads=settings.threads
        )
    )


def each(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    shards: Sequence[tuple[str, int]],
    names: Sequence[str],
    progress: Union[bool, ProgressCallback, None] = None,
    description: str = "tasks",
    executor: str = "local",
    ray_address: Optional[str] = None,
    num_cpus: int = 1,
) -> list[Any]:
    """``[fn(item) for item in items]`` here, or one Ray task per item
    (:func:`lora_rank.executors.ray.each`: ``fn`` a module-level function, items holding paths
    and byte ranges of ``shards``, ``names`` naming them in errors and progress).

    Example:
        >>> each(abs, [-1, 2], shards=[], names=["a", "b"], progress=False)
        [1, 2]
    """
    check_executor(executor)
    if executor == "ray":
        from . import ray as _ray

        return _ray.each(
            fn,
            items,
            shards=shards,
            names=names,
            progress=progress,
            address=ray_address,
            description=description,
            num_cpus=num_cpus,
        )
    out = []
    with progress_reporter(progress, len(items), description) as callback:
        for i, x in enumerate(items):
            out.append(fn(x))
            if callback is not None:
                callback(i + 1, len(items), names[i])
    return out
