"""``analyze()``: the main entry point, from a checkpoint path to a :class:`~lora_rank.report.Report`."""

from __future__ import annotations

import json
import os
import warnings as _warnings
from typing import Any, Callable, Optional, Union

from . import naming, quantization
from .errors import ConfigError
from .inventory import build_modules
from .report import Report, Tensor

PathLike = Union[str, "os.PathLike[str]"]

#: Progress callback: ``progress(done, total, tensor_name)``.
ProgressCallback = Callable[[int, int, str], None]


def analyze(
    path: PathLike,
    *,
    revision: Optional[str] = None,
    spectral: bool = False,
    top_k: int = 32,
    method: str = "auto",
    rtol: Optional[float] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = None,
    resolve: str = "rules",
    trust_remote_code: bool = False,
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
        top_k, method, rtol, seed: spectral solver settings (see :mod:`lora_rank.spectral`).
        threads: worker threads (default: all cores).
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
    from .sources.hub import open_source

    raw, remote_shards = open_source(os.fspath(path), revision, threads)
    config: Optional[dict[str, Any]] = None
    if raw["config_json"] is not None:
        config = _parse_config(raw["config_json"], os.path.join(raw["root"], "config.json"))
    shard_names = [s["name"] for s in raw["shards"]]
    tensors = [
        Tensor(name, dtype, tuple(shape), shard_names[shard], begin, end)
        for name, dtype, shape, shard, begin, end in raw["tensors"]
    ]
    logical = quantization.logical_tensors(
        tensors, config, os.path.join(raw["root"], "config.json")
    )
    if resolve == "transformers":
        from .resolve_transformers import build_modules_from_model

        modules, warns = build_modules_from_model(
            logical.tensors, config, raw["root"], trust_remote_code=trust_remote_code
        )
        resolution = "transformers"
    else:
        modules, warns, resolution = build_modules(logical.tensors, config)
    quantization.attach(modules, logical)
    warns = logical.warnings + warns
    for w in warns:
        _warnings.warn(w, stacklevel=2)
    report = Report(
        path=raw["root"],
        model_type=(config or {}).get("model_type"),
        architectures=list((config or {}).get("architectures") or []),
        config=config,
        total_params=sum(t.numel for t in logical.tensors),
        total_bytes=sum(t.nbytes for t in tensors),
        tensors=tensors,
        modules=modules,
        shards=[s["path"] for s in raw["shards"]],
        resolve=resolve,
        resolution=resolution,
        rules_version=naming.rules_versions(),
        installed_version=naming.installed_versions(),
        warnings=warns,
        remote_shards=remote_shards,
        stored_elements=quantization.stored_elements(tensors) if logical.quantized else None,
    )
    if spectral:
        from .spectral import compute_spectra

        compute_spectra(
            report,
            top_k=top_k,
            method=method,
            rtol=rtol,
            seed=seed,
            threads=threads,
            progress=progress,
        )
    return report


#: config.json fields the inventory reads, and the JSON types they must have.
_CONFIG_TYPES: dict[str, type] = {"model_type": str, "architectures": list, "vocab_size": int}


def _parse_config(text: str, path: str) -> dict[str, Any]:
    """``config.json`` as a dict; a file that is not a JSON object, or whose ``model_type``,
    ``architectures`` or ``vocab_size`` has the wrong type, is a :class:`ConfigError`.

    Example:
        >>> _parse_config('{"model_type": "bert"}', "config.json")
        {'model_type': 'bert'}
    """
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path} is not a JSON object")
    for key, expected in _CONFIG_TYPES.items():
        value = parsed.get(key)
        if value is None:
            continue
        bad = not isinstance(value, expected) or isinstance(value, bool)
        if key == "architectures" and not bad:
            bad = not all(isinstance(a, str) for a in value)
        if bad:
            raise ConfigError(f"{path}: {key} has the wrong type: {value!r}"[:300])
    return parsed
