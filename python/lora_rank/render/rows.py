"""Summaries of a :class:`~lora_rank.report.Report` and a
:class:`~lora_rank.peft.recommendation.Recommendation` as plain rows (dicts and label/value
pairs): the one source of the terminal tables (:mod:`lora_rank.render.tables`), the CSV output
and the notebook HTML (:mod:`lora_rank.render.html`), so all three agree.

Example:
    >>> import lora_rank
    >>> rows = kind_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
    >>> rows[0]["kind"], rows[0]["modules"], rows[0]["shapes"]
    ('attn_q', 6, '384×384')
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from ..inventory.kinds import KINDS
from ..report import Module, Report, Spectrum
from .format import (
    finite,
    first_distinct,
    fmt_number,
    home_relative,
    human,
    human_bytes,
    percent,
    ranges,
    shape_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation, Target


#: Spectral statistics summarised per kind: (Spectrum field, column title).
SPECTRAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stable_rank", "stable rank"),
    ("energy_rank_90", "energy rank 90%"),
    ("alpha", "alpha"),
)


#: Spectral statistics listed per module with ``--per-module``.
MODULE_SPECTRAL_FIELDS: tuple[str, ...] = (
    "spectral_norm",
    "stable_rank",
    "energy_rank_90",
    "energy_rank_95",
    "energy_rank_99",
    "alpha",
)


_CONFIG_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


_CONFIG_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")


_Kinded = TypeVar("_Kinded", "Module", "Target")


def by_kind(items: Iterable[_Kinded]) -> list[tuple[str, list[_Kinded]]]:
    """``items`` (modules or targets) grouped by ``kind``, in :data:`KINDS` order (unknown kinds
    last, sorted), each group in the order given.

    Example:
        >>> mods = [Module(n, k, 0, 4, 4, (4, 4), "F32", 16, True)
        ...         for n, k in [("a.v", "attn_v"), ("a.q", "attn_q"), ("a.x", "zz")]]
        >>> [(kind, [m.name for m in ms]) for kind, ms in by_kind(mods)]
        [('attn_q', ['a.q']), ('attn_v', ['a.v']), ('zz', ['a.x'])]
    """
    groups: dict[str, list[_Kinded]] = defaultdict(list)
    for item in items:
        groups[item.kind].append(item)
    order = [k for k in KINDS if k in groups] + sorted(set(groups) - set(KINDS))
    return [(kind, groups[kind]) for kind in order]


def module_spectra(m: Module) -> list[Spectrum]:
    """The spectra of ``m``: its own, or one per expert for fused MoE expert tensors.

    Example:
        >>> module_spectra(Module("x", "attn_q", 0, 4, 4, (4, 4), "F32", 16, True))
        []
    """
    if m.spectrum is not None:
        return [m.spectrum]
    return list(m.expert_spectra or ())


def config_value(report: Report, keys: Sequence[str]) -> Optional[Any]:
    """First of ``keys`` present in the report's config (or its ``text_config``).

    Example:
        >>> import lora_rank
        >>> config_value(lora_rank.analyze(lora_rank.demo_checkpoint()), ["hidden_size"])
        384
    """
    config = report.config or {}
    for scope in (config, config.get("text_config") or {}):
        if not isinstance(scope, dict):
            continue
        for k in keys:
            if scope.get(k) is not None:
                return scope[k]
    return None


def summary(report: Report) -> list[tuple[str, str]]:
    """The summary header as (label, value) pairs.

    Example:
        >>> import lora_rank
        >>> dict(summary(lora_rank.analyze(lora_rank.demo_checkpoint())))["hidden size"]
        '384'
    """
    layers = config_value(report, _CONFIG_LAYERS)
    if layers is None and report.num_layers:
        layers = report.num_layers
    hidden = config_value(report, _CONFIG_HIDDEN)
    arch = ", ".join(report.architectures)
    model = (report.model_type or "unknown") + (f" ({arch})" if arch else "")
    total_elems = sum(report.dtype_counts().values()) or 1
    dtypes = ", ".join(f"{d} {percent(n / total_elems)}" for d, n in report.dtype_counts().items())
    targets = report.lora_targets
    rows = [
        ("model", model),
        ("layers", str(layers) if layers is not None else "unknown"),
        ("hidden size", str(hidden) if hidden is not None else "unknown"),
        ("parameters", f"{human(report.total_params)} ({report.total_params:,} stored elements)"),
        ("dtypes", dtypes or "none"),
        (
            "shards",
            f"{len(report.shards)} file(s), {human_bytes(report.total_bytes)} of tensor data",
        ),
        ("path", home_relative(report.path)),
        (
            "LoRA targets",
            f"{len(targets)} modules ({human(sum(m.params for m in targets))} params) "
            'wrapped by target_modules="all-linear"',
        ),
    ]
    if report.spectral_settings is not None:
        shown = ("top_k", "method", "seed")
        settings = ", ".join(f"{k}={v}" for k, v in report.spectral_settings.items() if k in shown)
        rows.append(("spectra", settings or "computed"))
    return rows


def _stat(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def kind_rows(report: Report) -> list[dict[str, Any]]:
    """One row per module kind (in :data:`~lora_rank.report.KINDS` order): module count, LoRA
    targets, distinct shapes, parameters and, when spectra were computed, the median / min /
    max of each statistic in :data:`SPECTRAL_COLUMNS` (keys ``stable_rank_median`` etc.).

    Example:
        >>> import lora_rank
        >>> rows = kind_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> [(r["kind"], r["lora_targets"]) for r in rows][:3]
        [('attn_q', 6), ('attn_k', 6), ('attn_v', 6)]
    """
    rows = []
    for kind, mods in by_kind(report.modules):
        row: dict[str, Any] = {
            "kind": kind,
            "names": first_distinct([m.short_name for m in mods]),
            "modules": len(mods),
            "lora_targets": sum(m.is_lora_target for m in mods),
            "shapes": first_distinct(
                [shape_text(m.shape) for m in sorted(mods, key=lambda m: -m.params)]
            ),
            "params": sum(m.params for m in mods),
        }
        if report.has_spectra:
            spectra = [s for m in mods for s in module_spectra(m)]
            for fld, _ in SPECTRAL_COLUMNS:
                stats = _stat(finite(getattr(s, fld) for s in spectra))
                for stat, v in stats.items():
                    row[f"{fld}_{stat}"] = v
        rows.append(row)
    return rows


def module_rows(report: Report) -> list[dict[str, Any]]:
    """One row per module: name, kind, layer, shape, dtype, params, LoRA target and, when
    spectra were computed, the statistics of :data:`MODULE_SPECTRAL_FIELDS` (the median over
    experts for fused MoE tensors).

    Example:
        >>> import lora_rank
        >>> rows = module_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> rows[6]["name"], rows[6]["shape"], rows[6]["lora_target"]
        ('encoder.layer.0.attention.output.dense', '384×384', True)
    """
    rows = []
    for m in report.modules:
        row: dict[str, Any] = {
            "name": m.name,
            "kind": m.kind,
            "layer": m.layer,
            "shape": shape_text(m.shape),
            "dtype": m.dtype,
            "params": m.params,
            "lora_target": m.is_lora_target,
        }
        if report.has_spectra:
            spectra = module_spectra(m)
            for fld in MODULE_SPECTRAL_FIELDS:
                vals = finite(getattr(s, fld) for s in spectra)
                row[fld] = statistics.median(vals) if vals else None
        rows.append(row)
    return rows


def layer_prefix(m: Module) -> Optional[str]:
    """The name of the numbered layer ``m`` sits in (``encoder.layer.0``), or None.

    Example:
        >>> layer_prefix(Module("model.layers.3.mlp.up_proj", "mlp_up", 3, 4, 4, (4, 4), "F32",
        ...                     16, True))
        'model.layers.3'
    """
    if m.layer is None:
        return None
    head, sep, _ = f".{m.name}".partition(f".{m.layer}.")
    return f"{head}.{m.layer}".lstrip(".") if sep else None


# -- recommendations -----------------------------------------------------------------------


def _rank_text(ranks: list[int]) -> str:
    lo, hi = min(ranks), max(ranks)
    if lo == hi:
        return str(lo)
    return f"{lo}–{hi} (median {fmt_number(float(statistics.median(ranks)))})"


def recommendation_kind_rows(rec: Recommendation) -> list[dict[str, Any]]:
    """The adapted modules of ``rec`` per kind: count, layers, rank range, alpha range and
    trainable parameters.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> [(r["kind"], r["modules"], r["rank"], r["params"]) for r in
        ...  recommendation_kind_rows(rec)]
        [('attn_q', 6, '8', 36864), ('attn_v', 6, '8', 36864)]
    """
    rows = []
    for kind, ts in by_kind(rec.targets):
        alphas = sorted({fmt_number(float(t.alpha)) for t in ts}, key=float)
        rows.append(
            {
                "kind": kind,
                "names": first_distinct([t.key.rsplit(".", 1)[-1] for t in ts]),
                "modules": len(ts),
                "layers": ranges(sorted({t.layer for t in ts if t.layer is not None})),
                "rank": _rank_text([t.rank for t in ts]),
                "alpha": alphas[0] if len(alphas) == 1 else f"{alphas[0]}–{alphas[-1]}",
                "params": sum(t.params for t in ts),
            }
        )
    return rows


def recommendation_summary(rec: Recommendation) -> list[tuple[str, str]]:
    """The head of ``lora-rank recommend``: strategy, the PEFT fields and the exact
    trainable-parameter count, as (label, value) pairs.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> dict(recommendation_summary(rec))["target_modules"]
        "['query', 'value']"
    """
    rows = [("strategy", rec.strategy + (f" (task: {rec.task})" if rec.task else ""))]
    kwargs = rec.peft_kwargs()
    for key in ("target_modules", "exclude_modules", "layers_to_transform", "target_parameters"):
        if kwargs.get(key):
            rows.append(
                (key, json.dumps(kwargs[key]) if key != "target_modules" else str(kwargs[key]))
            )
    rows.append(("r / lora_alpha", f"{rec.r} / {fmt_number(float(rec.lora_alpha))}"))
    for key in ("rank_pattern", "alpha_pattern"):
        if kwargs.get(key):
            rows.append((key, json.dumps(kwargs[key])))
    share = rec.trainable_params / rec.total_params if rec.total_params else math.nan
    trainable = f"{rec.trainable_params:,} ({percent(share)} of {rec.total_params:,})"
    if rec.budget:
        trainable += f"; budget {rec.budget:,}, {percent(rec.trainable_params / rec.budget)} used"
    rows.append(("trainable params", trainable))
    return rows
