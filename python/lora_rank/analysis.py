"""``analyze()``: the main entry point, from a checkpoint path to a :class:`~lora_rank.report.Report`."""

from __future__ import annotations

import os
import warnings as _warnings
from collections.abc import Sequence
from typing import Optional, Union

from .deltas.adapter import analyze_adapter, is_adapter
from .errors import ConfigError
from .gc_pause import gc_paused
from .inventory import naming, quantization
from .inventory.modules import build_modules
from .inventory.rules import versions as rules_versions
from .report import Report
from .sources.local import PathLike, open_local
from .spectral.progress import ProgressCallback
from .spectral.settings import SpectralSettings


def analyze(
    path: PathLike,
    *,
    revision: Optional[str] = None,
    spectral: bool = False,
    settings: Optional[SpectralSettings] = None,
    top_k: Optional[int] = None,
    method: Optional[str] = None,
    rtol: Optional[float] = None,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = None,
    resolve: str = "rules",
    trust_remote_code: bool = False,
    base: Optional[PathLike] = None,
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> Report:
    """Inventory a safetensors checkpoint without loading it; optionally compute spectra.

    Args:
        path: a directory with ``model.safetensors.index.json`` or ``*.safetensors`` files, a
            single ``.safetensors`` file, a Hugging Face cache entry/snapshot directory, a hub
            repo id ``org/name``, ``hf://org/name[@revision][/subfolder]``, or the URL of a
            ``.safetensors`` file or index. Hub repos are read from the local Hugging Face
            cache when their snapshot is there, else remotely, headers only, by HTTP range
            requests (see :mod:`lora_rank.sources.hub`).
        revision: branch, tag or commit of a hub repo (default ``main``).
        spectral: also compute per-matrix spectral statistics (reads the tensor data).
        settings: spectral solver settings (default
            :class:`~lora_rank.spectral.settings.SpectralSettings`()); its ``threads`` also
            reads the headers.
        top_k, method, rtol, seed, threads: override those fields of ``settings`` (None keeps
            them; ``threads``: worker threads, default all cores).
        progress: a callback ``(done, total, name)``, True for a progress bar, False for none;
            None shows a bar only in a terminal.
        resolve: ``"rules"`` (default: names from shipped transformers rules, header-only, no
            torch) or ``"transformers"`` (build the model on the meta device from config.json and
            take module names and classes from it: exact, slower, needs the ``peft`` extra).
        trust_remote_code: allow custom modelling code with ``resolve="transformers"``.
        base: for a PEFT adapter directory, the base checkpoint to check it against (each
            adapted module must exist there with the adapter's shape) and to report
            ‖ΔW‖_F / ‖W‖_F per module.
        executor: where the spectra are computed: ``"local"`` (default: this process) or
            ``"ray"`` (Ray tasks on a cluster, the same results; ``threads`` is then each
            task's solver threads, default 1; see :mod:`lora_rank.executors.ray`).
        ray_address: the Ray cluster to connect to (default ``RAY_ADDRESS``, else a local Ray).

    A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)
    gives an :class:`~lora_rank.deltas.adapter.AdapterReport`: per adapted module r, alpha,
    scaling, the exact spectrum of its update scaling·B·A and the rank it uses.

    Returns:
        A :class:`~lora_rank.report.Report`.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> report.model_type, report.total_params
        ('bert', 22713728)
        >>> report.module("encoder.layer.0.attention.self.query").kind
        'attn_q'
    """
    if resolve not in ("rules", "transformers"):
        raise ConfigError(f"resolve must be 'rules' or 'transformers', not {resolve!r}")
    from .executors import check_executor

    check_executor(executor)
    chosen = (settings or SpectralSettings()).replace(
        top_k=top_k, method=method, rtol=rtol, seed=seed, threads=threads
    )
    if os.path.isdir(os.fspath(path)) and is_adapter(os.fspath(path)):
        return analyze_adapter(
            os.fspath(path),
            base=analyze(base, threads=chosen.threads, progress=False) if base else None,
            threads=chosen.threads,
        )
    if base is not None:
        raise ConfigError(f"base= is for PEFT adapter directories; {path} is not one")
    # The inventory's objects hold no reference cycles: the cyclic collector is paused while
    # they are made (see gc_pause).
    with gc_paused():
        source = os.fspath(path)
        if revision is None and os.path.exists(source):
            ckpt = open_local(source, chosen.threads)  # an existing path is always local
        else:
            # Lazy: the hub source (and its HTTP stack) is imported for hub ids and URLs only.
            from .sources.hub import open_source

            ckpt = open_source(source, revision, chosen.threads)
        config = ckpt.config
        logical = quantization.logical_tensors(
            ckpt.tensors, config, os.path.join(ckpt.root, "config.json"), ckpt.shards
        )
        if resolve == "transformers":
            from .inventory.transformers import build_modules_from_model

            modules, warns = build_modules_from_model(
                logical.tensors, config, ckpt.root, trust_remote_code=trust_remote_code
            )
            resolution = "transformers"
        else:
            modules, warns, resolution = build_modules(logical.tensors, config)
        quantization.attach(modules, logical)
        warns = logical.warnings + warns
        for w in warns:
            _warnings.warn(w, stacklevel=2)
        report = Report(
            path=ckpt.root,
            model_type=(config or {}).get("model_type"),
            architectures=list((config or {}).get("architectures") or []),
            config=config,
            total_params=quantization.stored_elements(logical.tensors),  # Σ numel, logical
            total_bytes=quantization.stored_bytes(ckpt.tensors),
            tensors=ckpt.tensors,
            modules=modules,
            shards=ckpt.shards,
            resolve=resolve,
            resolution=resolution,
            rules_version=rules_versions(),
            installed_version=naming.installed_versions(),
            warnings=warns,
            remote_shards=ckpt.remote_shards,
            stored_elements=quantization.stored_elements(ckpt.tensors)
            if logical.quantized
            else None,
        )
    if spectral:
        from .executors import compute_spectra

        compute_spectra(
            report, chosen, progress=progress, executor=executor, ray_address=ray_address
        )
    return report


def analyze_many(
    paths: Sequence[PathLike],
    *,
    spectral: bool = False,
    settings: Optional[SpectralSettings] = None,
    top_k: Optional[int] = None,
    method: Optional[str] = None,
    rtol: Optional[float] = None,
    seed: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = None,
    resolve: str = "rules",
    executor: str = "local",
    ray_address: Optional[str] = None,
) -> list[Report]:
    """:func:`analyze` of each checkpoint of ``paths`` (paths or hub ids), one
    :class:`~lora_rank.report.Report` each, in order. The headers are read here; with
    ``spectral=True`` and ``executor="ray"`` the matrices of all of them are one set of Ray
    tasks under one progress bar (PEFT adapter directories are refused: analyze them one by
    one).

    Example:
        >>> import lora_rank
        >>> reports = lora_rank.analyze_many([lora_rank.demo_checkpoint()] * 2)
        >>> [r.model_type for r in reports]
        ['bert', 'bert']
    """
    from .executors import check_executor, compute_many

    check_executor(executor)
    chosen = (settings or SpectralSettings()).replace(
        top_k=top_k, method=method, rtol=rtol, seed=seed, threads=threads
    )
    for p in paths:
        if os.path.isdir(os.fspath(p)) and is_adapter(os.fspath(p)):
            raise ConfigError(f"{p}: a PEFT adapter directory; analyze() it on its own")
    reports = [analyze(p, settings=chosen, resolve=resolve) for p in paths]
    if spectral:
        compute_many(reports, chosen, progress=progress, executor=executor, ray_address=ray_address)
    return reports
