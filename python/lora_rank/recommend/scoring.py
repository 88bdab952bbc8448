"""Scores of candidate LoRA targets from their weight spectra.

The rule of ``strategy="spectral"`` (:mod:`lora_rank.recommend.weights`; ``auto`` before
benches/quality):

- **capacity** ``d`` of a module = its *effective rank*: the number of singular directions
  holding 90% of ‖W‖_F² (``Spectrum.energy_rank_90``; for MoE expert tensors the mean over
  experts, each of which gets its own rank-``r`` adapter). It counts the directions the trained
  weight actually uses; unlike the stable rank ‖W‖_F²/σ₁² it is not collapsed by one outlier
  singular value (common in MLP projections). When it is unknown (0) the stable rank is used.
- **weight** ``w`` of its kind for the task (:func:`lora_rank.recommend.presets.module_weight`:
  the kind's task weight; a linear layer of no known role inside a numbered layer weighs the
  mean of the task's attention and MLP weights).
- **score** = ``w · d``. A rank-``r`` adapter reaches ``r / d`` of the module's used directions;
  the allocation gives every module the same reach per unit of weight (rank ∝ score), which
  is what AdaLoRA's learned budgets look like (more rank to the MLP and output projections,
  less to q and k) without needing data or a training loop.

Layer position (``depth`` = layer / last layer) is reported, not weighted.

Example:
    >>> s = Spectrum((2.0, 1.0), 3.0, 2.0, 2.25, 14, 20, 30, False, 2.1, 0, "exact")
    >>> m = Module("model.layers.0.mlp.up_proj", "mlp_up", 0, 32, 48, (48, 32), "F32", 1536,
    ...            True, spectrum=s)
    >>> effective_rank(m), score(m, None)
    (14.0, 14.0)
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional

from ..report import Module, Report, Spectrum
from .presets import Candidate, module_weight


def spectra_of(m: Module) -> list[Spectrum]:
    """The spectra behind ``m``'s score: one per expert for expert tensors, else its own."""
    if m.expert_spectra:
        return list(m.expert_spectra)
    return [m.spectrum] if m.spectrum is not None else []


def _capacity(s: Spectrum) -> float:
    if s.nonfinite or not math.isfinite(s.frobenius_norm) or s.frobenius_norm <= 0:
        return 0.0
    if s.energy_rank_90 > 0:
        return float(s.energy_rank_90)
    return float(s.stable_rank) if math.isfinite(s.stable_rank) else 0.0


def effective_rank(m: Module) -> Optional[float]:
    """Capacity ``d`` of ``m`` (see the module docstring); None without spectra, 0 for an
    all-zero or non-finite weight."""
    spectra = spectra_of(m)
    if not spectra:
        return None
    return statistics.fmean(_capacity(s) for s in spectra)


def score(m: Module, task: Optional[str]) -> Optional[float]:
    """``module_weight · effective_rank`` of ``m``; None without spectra."""
    d = effective_rank(m)
    return None if d is None else module_weight(task, m) * d


def _mean(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return statistics.fmean(vals) if vals else math.nan


def module_row(c: Candidate, task: Optional[str], last_layer: int) -> dict[str, Any]:
    """One :func:`lora_rank.recommend.strategies.rank_targets` row: score and its components."""
    m = c.module
    spectra = spectra_of(m)
    d = effective_rank(m)
    w = module_weight(task, m)
    layer = m.layer
    return {
        "level": "module",
        "name": m.name,
        "kind": m.kind,
        "layer": layer,
        "depth": (layer / last_layer if last_layer else 0.0) if layer is not None else math.nan,
        "score": w * d if d is not None else math.nan,
        "weight": w,
        "effective_rank": d if d is not None else math.nan,
        "energy_rank_90": _mean([float(s.energy_rank_90) for s in spectra]),
        "stable_rank": _mean([s.stable_rank for s in spectra]),
        "alpha": _mean([s.alpha for s in spectra]),
        "spectral_norm": _mean([s.spectral_norm for s in spectra]),
        "in_features": m.in_features,
        "out_features": m.out_features,
        "experts": m.num_experts or 1,
        "params_per_rank": c.reach.cost,
        "peft_name": c.reach.key,
        "via": "target_parameters" if c.reach.is_parameter else "target_modules",
    }


def kind_rows(module_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-kind summaries of ``module_rows``: mean score and statistics, summed cost."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in module_rows:
        by_kind.setdefault(row["kind"], []).append(row)
    out = []
    for kind, rows in by_kind.items():
        out.append(
            {
                "level": "kind",
                "name": kind,
                "kind": kind,
                "modules": len(rows),
                "score": _mean([r["score"] for r in rows]),
                "weight": _mean([r["weight"] for r in rows]),
                "effective_rank": _mean([r["effective_rank"] for r in rows]),
                "energy_rank_90": _mean([r["energy_rank_90"] for r in rows]),
                "stable_rank": _mean([r["stable_rank"] for r in rows]),
                "alpha": _mean([r["alpha"] for r in rows]),
                "params_per_rank": sum(r["params_per_rank"] for r in rows),
            }
        )
    return out


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best score first (NaN last), then cheapest, then name."""
    return sorted(
        rows,
        key=lambda r: (
            -(r["score"] if math.isfinite(r["score"]) else -math.inf),
            r["params_per_rank"],
            r["name"],
        ),
    )


def last_layer(report: Report) -> int:
    """Highest layer index in ``report`` (0 when none)."""
    return max((m.layer for m in report.modules if m.layer is not None), default=0)
