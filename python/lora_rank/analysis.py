"""``analyze()``: the main entry point, from a checkpoint path to a :class:`~lora_rank.report.Report`."""

from __future__ import annotations

import warnings as _warnings
from typing import Optional, Union

from .errors import ConfigError
from .inventory.modules import build_modules
from .report import Report
from .sources.local import PathLike, open_local
from .spectral.progress import ProgressCallback
from .spectral.settings import SpectralSettings


def analyze(
    path: PathLike,
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
    trust_remote_code: bool = False,
) -> Report:
    """Inventory a safetensors checkpoint without loading it; optionally compute spectra.

    Args:
        path: a directory with ``model.safetensors.index.json`` or ``*.safetensors`` files, a
            single ``.safetensors`` file, or a Hugging Face cache entry/snapshot directory.
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
    chosen = (settings or SpectralSettings()).replace(
        top_k=top_k, method=method, rtol=rtol, seed=seed, threads=threads
    )
    ckpt = open_local(path, chosen.threads)
    if resolve == "transformers":
        from .inventory.transformers import build_modules_from_model

        modules, warns = build_modules_from_model(
            ckpt.tensors, ckpt.config, ckpt.root, trust_remote_code=trust_remote_code
        )
    else:
        modules, warns = build_modules(ckpt.tensors, ckpt.config)
    for w in warns:
        _warnings.warn(w, stacklevel=2)
    config = ckpt.config or {}
    report = Report(
        path=ckpt.root,
        model_type=config.get("model_type"),
        architectures=list(config.get("architectures") or []),
        config=ckpt.config,
        total_params=sum(t.numel for t in ckpt.tensors),
        total_bytes=sum(t.nbytes for t in ckpt.tensors),
        tensors=ckpt.tensors,
        modules=modules,
        shards=ckpt.shards,
        resolve=resolve,
        warnings=warns,
    )
    if spectral:
        from .spectral.compute import compute_spectra

        compute_spectra(report, chosen, progress=progress)
    return report
