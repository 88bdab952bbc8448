r"""Spectrum's selection of layers to unfreeze (Hartford et al. 2024,
``cognitivecomputations/spectrum``, ``spectrum.py`` at its commit 0ed1756), from the weights
without loading the model, and its output files.

What Spectrum does, and what is done here the same way:

- **Module types**: for every module with a weight, the name after its first all-digit part
  (``self_attn.q_proj``, ``input_layernorm``), or the whole name when it has none
  (``model.embed_tokens``, ``lm_head``). Types are processed sorted by their first dotted
  part, then by name; each type takes every module whose name *contains* it, so a later type
  re-labels modules an earlier one took (on BERT ``output.dense`` takes the attention's
  ``attention.output.dense`` too, and the type ``attention.output.dense`` ends up empty).
- **SNR** of a weight W with all singular values S (descending): σ = (q75(S) − q25(S)) / 1.349
  (torch's linear quantiles), τ = σ(1 + √β) with β = min/max of the shape,
  snr = ΣS[S > τ] / ΣS[S ≤ τ] (1 as the denominator when no value is at or below τ), divided
  by S[0]. Here it is :attr:`~lora_rank.report.Spectrum.spectrum_snr` of the exact route
  (``method="exact"``: f64 Gram matrix and symmetric eigensolver, the whole spectrum); the
  randomized estimate is not used (it is 10–30% off on LLM-sized matrices and reorders
  layers). A 1-D weight (a norm) is a 1×n matrix to Spectrum: S = [‖w‖], SNR 1.0 when w ≠ 0
  (inf when w = 0, NaN with NaNs); its values are read to tell which.
- **Selection**: per type, layers sorted by SNR, highest first (a stable sort: ties keep the
  order of Spectrum's results), the first ``int(n · top_percent / 100)`` kept.
- **Files** (:meth:`Unfrozen.save`): ``model_snr_results/snr_results_<slug>.json``
  (``{name: {"snr", "type"}}``, indent 4; where axolotl's ``SpectrumPlugin`` looks for it),
  ``snr_results_<slug>_sorted.json`` (``{type: {name: snr}}``, best first) and
  ``snr_results_<slug>_unfrozenparameters_<p>percent.yaml``: ``unfrozen_parameters:``, the two
  lines Spectrum always writes (``^lm_head.weight$``, ``^model.embed_tokens.weight$``), then
  ``# <type> layers`` and the chosen names. ``<slug>`` is the model name with ``/`` and ``_``
  replaced by ``-``.

Differences: fused 3-D MoE expert tensors are left out (Spectrum's ``named_modules`` scan does
not see them either); a tied ``lm_head`` that is not stored has no entry (Spectrum, loading
the model, lists it with the embedding's SNR; a single-layer type is never selected below 100%).

The trainable count is what axolotl 0.19.0 unfreezes for ``unfrozen_parameters``
(``axolotl.utils.freeze``: each pattern with its dots made literal, ``re.match`` against every
parameter name).

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> sel = select_unfrozen(report, top_percent=25, progress=False)
    >>> sel.selected["attention.self.query"]
    ['encoder.layer.3.attention.self.query']
    >>> sel.trainable_params
    2807808
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError
from ..report import Module, Report
from ..spectral.settings import SpectralSettings

#: Spectrum's commit this follows, and the axolotl release whose freezing rule counts.
RELEASE = "Spectrum 0ed1756 (spectrum.py)"
AXOLOTL = "axolotl 0.19.0"
#: The two patterns Spectrum writes first, for every model.
ALWAYS = ("^lm_head.weight$", "^model.embed_tokens.weight$")
FORMATS = ("spectrum", "axolotl")


def _has_weight(m: Module) -> bool:
    """A runtime module with a ``weight`` (not a buffer, not a fused 3-D expert tensor)."""
    if len(m.shape) > 2 or (m.parameter is not None and not m.parameter.endswith(".weight")):
        return False
    return any(k.endswith("weight") for k in m.checkpoint_keys)


def weight_type(name: str) -> str:
    """Spectrum's module type of ``name``: what follows the first all-digit part, or the
    whole name.

    Example:
        >>> weight_type("model.layers.3.self_attn.q_proj"), weight_type("lm_head")
        ('self_attn.q_proj', 'lm_head')
    """
    parts = name.split(".")
    i = next((i for i, p in enumerate(parts) if p.isdigit()), -1)
    return ".".join(parts[i + 1 :]) if i != -1 else name


def sort_types(types: list[str]) -> list[str]:
    """Spectrum's order of types (``sort_weight_types``): by first dotted part, then by name.

    Example:
        >>> sort_types(["self_attn.q_proj", "input_layernorm", "mlp.up_proj", "mlp.down_proj"])
        ['input_layernorm', 'mlp.down_proj', 'mlp.up_proj', 'self_attn.q_proj']
    """
    categories: dict[str, list[str]] = {}
    for t in types:
        categories.setdefault(t.split(".")[0], []).append(t)
    return [t for c in sorted(categories) for t in sorted(categories[c])]


_DECODE = {"F32": "<f", "F64": "<d", "F16": "<e"}


def _vector_norm_state(report: Report, m: Module) -> float:
    """Spectrum's SNR of a 1-D weight: 1.0 when nonzero, inf when zero, NaN with NaNs (reads
    the vector: a few KB)."""
    if report.remote_shards is not None:
        raise ConfigError(
            f"{report.path}: the unfreeze selection reads the 1-D weights (norms) of local "
            "checkpoints only; analyze a local copy"
        )
    key = next(k for k in m.checkpoint_keys if k.endswith("weight"))
    t = next(t for t in report.tensors if t.name == key)
    with open(report.shards[t.shard], "rb") as f:
        f.seek(t.begin)
        data = f.read(t.end - t.begin)
    if t.dtype == "BF16":
        values = [
            struct.unpack("<f", b"\x00\x00" + data[i : i + 2])[0] for i in range(0, len(data), 2)
        ]
    elif t.dtype in _DECODE:
        fmt = _DECODE[t.dtype]
        values = [v for (v,) in struct.iter_unpack(fmt, data)]
    else:
        raise ConfigError(f"{key}: a {t.dtype} norm weight is not read for Spectrum's SNR")
    if any(math.isnan(v) for v in values):
        return math.nan
    return 1.0 if any(v != 0.0 for v in values) else math.inf


@dataclass
class Unfrozen:
    """Spectrum's selection for one checkpoint (see the module docs): ``snr`` is Spectrum's
    ``snr_results`` (name → ``{"snr", "type"}``, in its order), ``selected`` the chosen names
    per type (best first; every type, empty ones too), ``unfrozen_parameters`` the YAML's
    list, ``trainable_params`` what axolotl unfreezes for it.

    Example:
        >>> import lora_rank
        >>> sel = lora_rank.analyze(lora_rank.demo_checkpoint()).select_unfrozen(25, progress=False)
        >>> sel.unfrozen_parameters[:3]
        ['^lm_head.weight$', '^model.embed_tokens.weight$', 'encoder.layer.0.attention.output.LayerNorm']
    """

    top_percent: float
    model_name: str
    #: What axolotl's ``base_model`` is set to: the model name when given, else the hub id
    #: or the local path.
    base_model: str
    path: str
    snr: dict[str, dict[str, Any]]
    selected: dict[str, list[str]]
    unfrozen_parameters: list[str]
    trainable_params: int
    total_params: int

    @property
    def slug(self) -> str:
        """Spectrum's file-name form of the model name."""
        return self.model_name.replace("/", "-").replace("_", "-")

    @property
    def percent_text(self) -> str:
        """``top_percent`` as Spectrum's file name writes it (``25``, ``12.5``)."""
        p = self.top_percent
        return str(int(p)) if float(p).is_integer() else str(p)

    def snr_results_json(self) -> str:
        """Spectrum's ``snr_results_<slug>.json`` text (``json.dump(..., indent=4)``)."""
        return json.dumps(self.snr, indent=4)

    def sorted_json(self) -> str:
        """Spectrum's ``snr_results_<slug>_sorted.json`` text: type → {name: snr}, best first."""
        by_type: dict[str, list[tuple[str, float]]] = {}
        for name, info in self.snr.items():
            by_type.setdefault(info["type"], []).append((name, info["snr"]))
        out = {
            t: dict(sorted(layers, key=lambda x: x[1], reverse=True))
            for t, layers in by_type.items()
        }
        return json.dumps(out, indent=4)

    def yaml(self) -> str:
        """Spectrum's ``..._unfrozenparameters_<p>percent.yaml`` text, line for line."""
        lines = ["unfrozen_parameters:", *(f"- {p}" for p in ALWAYS)]
        for t, names in self.selected.items():
            lines.append(f"# {t} layers")
            lines += [f"- {n}" for n in names]
        return "\n".join(lines) + "\n"

    def axolotl_yaml(self) -> str:
        """An axolotl config fragment: ``base_model`` and the same ``unfrozen_parameters``,
        with the trainable count in a comment."""
        share = self.trainable_params / self.total_params if self.total_params else math.nan
        head = [
            f"# {AXOLOTL}: Spectrum's selection (top {self.percent_text}% of each module type "
            f"by its SNR) for {self.path}",
            f"# trainable parameters: {self.trainable_params:,} of {self.total_params:,} "
            f"({share:.2%}; what axolotl unfreezes for these patterns)",
            f"base_model: {json.dumps(self.base_model)}",
        ]
        return "\n".join(head) + "\n" + self.yaml()

    def filenames(self, format: str = "spectrum") -> list[str]:
        """The files :meth:`save` writes for ``format``, relative to its directory."""
        if format == "axolotl":
            return ["axolotl_unfrozen.yaml"]
        if format != "spectrum":
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        base = f"snr_results_{self.slug}"
        return [
            f"model_snr_results/{base}.json",
            f"{base}_sorted.json",
            f"{base}_unfrozenparameters_{self.percent_text}percent.yaml",
        ]

    def save(self, directory: Union[str, os.PathLike[str]], format: str = "spectrum") -> list[Path]:
        """Write Spectrum's three files (``format="spectrum"``) or the axolotl fragment into
        ``directory`` (created if missing), atomically; returns their paths.

        Example:
            >>> import lora_rank, tempfile
            >>> sel = lora_rank.analyze(lora_rank.demo_checkpoint()).select_unfrozen(25, progress=False)
            >>> [p.name for p in sel.save(tempfile.mkdtemp())]  # doctest: +ELLIPSIS
            ['snr_results_model.json', 'snr_results_model_sorted.json', 'snr_results_model_unfrozenparameters_25percent.yaml']
        """
        from ..atomic import write_atomic

        names = self.filenames(format)
        texts = (
            [self.axolotl_yaml()]
            if format == "axolotl"
            else [self.snr_results_json(), self.sorted_json(), self.yaml()]
        )
        out = Path(directory)
        paths = []
        for name, text in zip(names, texts):
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
            paths.append(path)
        return paths


def _model_name(report: Report) -> str:
    """``org/name`` of a hub or HF-cache checkpoint, else the directory's name."""
    path = report.path
    if path.startswith("hf://"):
        return path[len("hf://") :].split("@")[0]
    m = re.search(r"models--([^/]+?)--([^/]+)", path)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    p = Path(path)
    return (p.parent if p.suffix == ".safetensors" else p).name or "model"


def _base_model(report: Report) -> str:
    """The hub id of a hub checkpoint, else its local path."""
    return _model_name(report) if report.path.startswith("hf://") else report.path


def _parameters(report: Report) -> list[tuple[str, int]]:
    """Runtime parameter names and sizes (weight and bias of every module)."""
    out = []
    for m in report.modules:
        if not _has_weight(m) and not (len(m.shape) == 3 and m.parameter is not None):
            continue
        weight = math.prod(m.shape)
        out.append((m.parameter or f"{m.name}.weight", weight))
        if m.params > weight:
            out.append((f"{m.name}.bias", m.params - weight))
    return out


def axolotl_trainable(report: Report, patterns: list[str]) -> int:
    """Parameters axolotl 0.19.0 unfreezes for ``unfrozen_parameters`` ``patterns``
    (``LayerNamePattern``: dots literal, ``re.match`` on each parameter name).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> axolotl_trainable(report, ["encoder.layer.0.attention.self.query"])
        147840
    """
    rx = [re.compile(re.sub(r"\.(?!\+)", r"\\.", p)) for p in patterns]
    return sum(n for name, n in _parameters(report) if any(r.match(name) for r in rx))


def select_unfrozen(
    report: Report,
    top_percent: float = 25,
    *,
    model_name: Optional[str] = None,
    settings: Optional[SpectralSettings] = None,
    progress: Any = None,
) -> Unfrozen:
    """Spectrum's selection: the top ``top_percent`` % of the layers of every module type by
    Spectrum's SNR (exact spectra, computed into ``report`` unless it has them already).

    Args:
        report: from :func:`lora_rank.analyze`.
        top_percent: share of each type's layers to unfreeze, in (0, 100].
        model_name: the name in Spectrum's file names and axolotl's ``base_model`` (default:
            the hub id, or the checkpoint directory's name).
        settings: solver settings (``method`` is forced to ``"exact"``).
        progress: as for :func:`lora_rank.spectral.compute.compute_spectra`.

    Example: see the module docs.
    """
    if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)):
        raise ConfigError(f"top_percent must be a number in (0, 100], not {top_percent!r}")
    if not 0 < top_percent <= 100:
        raise ConfigError(f"top_percent must be in (0, 100], not {top_percent!r}")
    modules = [m for m in report.modules if _has_weight(m)]
    matrices = [m for m in modules if len(m.shape) == 2]
    if any(m.spectrum is None or m.spectrum.method != "exact" for m in matrices):
        from ..spectral.compute import compute_spectra

        compute_spectra(
            report, (settings or SpectralSettings()).replace(method="exact"), progress=progress
        )
    snr_of: dict[str, float] = {}
    for m in modules:
        if len(m.shape) == 2:
            assert m.spectrum is not None
            snr_of[m.name] = m.spectrum.spectrum_snr
        else:
            snr_of[m.name] = _vector_norm_state(report, m)
    # Spectrum's layer_snr: types in its order, each taking every module containing it.
    snr: dict[str, dict[str, Any]] = {}
    for t in sort_types(sorted({weight_type(m.name) for m in modules})):
        for m in modules:
            if t in m.name:
                snr[m.name] = {"snr": snr_of[m.name], "type": t}
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, info in snr.items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    selected = {}
    for t, layers in by_type.items():
        ranked = sorted(layers, key=lambda x: x[1], reverse=True)
        selected[t] = [n for n, _ in ranked[: int(len(layers) * top_percent / 100)]]
    patterns = [*ALWAYS, *(n for names in selected.values() for n in names)]
    return Unfrozen(
        top_percent=top_percent,
        model_name=model_name or _model_name(report),
        base_model=model_name or _base_model(report),
        path=report.path,
        snr=snr,
        selected=selected,
        unfrozen_parameters=patterns,
        trainable_params=axolotl_trainable(report, patterns),
        total_params=sum(n for _, n in _parameters(report)),
    )
