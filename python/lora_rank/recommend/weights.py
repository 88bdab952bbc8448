"""Weighted allocation strategies: each gives every candidate a weight from one rule, and
ranks are allocated ∝ weight under the budget by the water-filling of
:mod:`lora_rank.recommend.allocation` (multiples of ``rank_multiple`` in ``[min_rank, max_rank]``).

==================  ==========================================================================
``"spectral"``      task weight × effective rank of W (energy rank 90%; :mod:`lora_rank.recommend.scoring`)
                    over the modules the task weighs (linear layers of no known role inside
                    the layers weigh the mean of attention's and the MLP's task weights;
                    poolers, heads and routers weigh 0 and are named in ``warnings``).
                    This was ``"auto"`` before the recommendation-quality benchmark.
``"kind-prior"``    MLP projections weigh 2, attention and other linear layers 1, over
                    all-linear's modules: "more rank to the MLP" (PEFT's method comparison,
                    where MLP-only r=10 beat q,v r=32 at ≈9.3M parameters on Llama-3.2-3B GSM8K).
``"depth"``         weight ``L − layer`` (layer 0 weighs ``L``, the last 1; modules outside the
                    layers ``L``), over all-linear's modules: the fine-tuning update's
                    effective rank falls with depth (MiniLM, benches/README.md).
``"alpha"``         AlphaLoRA (Qing et al. 2024, "AlphaLoRA: assigning LoRA experts based on
                    layer training quality"): the weight of a layer is the mean power-law
                    ``alpha`` (Hill estimate, :class:`~lora_rank.report.Spectrum`) of its
                    matrices; a higher alpha (less heavy-tailed, less trained) gets more rank.
``"pooler"``        task-aware for classification: the classifier head is trained in full
                    through PEFT's ``modules_to_save`` (``task_type="SEQ_CLS"``); the pooler and
                    other linear layers of no known role weigh 8, every other linear 1.
==================  ==========================================================================

Spectrum's SNR selection (Hartford et al. 2024) needs the whole spectrum (the bulk's IQR and
its Marchenko–Pastur edge), which the top-k spectra here do not give; it is measured in
``benches/quality`` from a full SVD and is not a strategy yet.

Every module all-linear wraps gets a weight, or is named in the recommendation's ``warnings``
with the reason it gets none (a weight of 0 for the task, no spectrum, an all-zero or
non-finite weight matrix, smaller than ``min_rank``).

Which of these ``"auto"`` follows is decided by ``benches/quality`` (README "What auto does
and why").

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> ranks = report.recommend("depth", budget=84_480, rank_multiple=1).module_ranks()
    >>> ranks["encoder.layer.0.output.dense"], ranks.get("encoder.layer.5.output.dense", 0)
    (4, 0)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from . import scoring
from .presets import MLP_KINDS, Candidate, module_weight

#: weight(candidate, task, every candidate) → weight (0: not a candidate of the rule; NaN: an
#: unusable weight matrix; None: no spectrum).
Weight = Callable[[Candidate, Optional[str], Sequence[Candidate]], Optional[float]]


@dataclass(frozen=True)
class Rule:
    """A weighted strategy: its rule in words, whether it reads spectra, the weight function,
    and whether its candidates are all-linear's modules (else every module the task weighs)."""

    name: str
    description: str
    needs_spectra: bool
    weight: Weight
    all_linear: bool = True


def _spectral(c: Candidate, task: Optional[str], _: Sequence[Candidate]) -> Optional[float]:
    w = module_weight(task, c.module)
    if w <= 0:
        return 0.0
    d = scoring.effective_rank(c.module)
    if d is None:
        return None
    return w * d if d > 0 else math.nan  # nan: an all-zero or non-finite weight


def _kind_prior(c: Candidate, _t: Optional[str], _c: Sequence[Candidate]) -> float:
    return 2.0 if c.module.kind in MLP_KINDS else 1.0


def _depth(c: Candidate, _t: Optional[str], cands: Sequence[Candidate]) -> float:
    layers = [x.module.layer for x in cands if x.module.layer is not None]
    n = max(layers) + 1 if layers else 1
    return float(n - c.module.layer) if c.module.layer is not None else float(n)


def _alpha(c: Candidate, _t: Optional[str], cands: Sequence[Candidate]) -> Optional[float]:
    def alpha(x: Candidate) -> float:
        vals = [s.alpha for s in scoring.spectra_of(x.module) if math.isfinite(s.alpha)]
        return statistics.fmean(vals) if vals else math.nan

    same = [alpha(x) for x in cands if x.module.layer == c.module.layer]
    same = [a for a in same if math.isfinite(a)]
    return statistics.fmean(same) if same else None


def _pooler(c: Candidate, _t: Optional[str], _c: Sequence[Candidate]) -> float:
    return 8.0 if c.module.kind == "other_linear" else 1.0


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule(
            "spectral",
            "score = task weight x effective rank (singular directions holding 90% of |W|_F^2)",
            True,
            _spectral,
            all_linear=False,
        ),
        Rule(
            "kind-prior",
            "weight 2 for MLP projections, 1 for attention and others",
            False,
            _kind_prior,
        ),
        Rule("depth", "weight L - layer (layer 0 most, the last layer least)", False, _depth),
        Rule(
            "alpha",
            "weight = mean power-law alpha of the layer's matrices (AlphaLoRA)",
            True,
            _alpha,
        ),
        Rule(
            "pooler",
            "weight 8 for the pooler and other linear layers, 1 for the rest",
            False,
            _pooler,
        ),
    )
}
