"""``recommend()`` and ``rank_targets()``: LoRA target modules and per-module ranks for a
:class:`~lora_rank.report.Report`, emitted as an exact PEFT config
(:class:`~lora_rank.peft.recommendation.Recommendation`).

- Presets (:mod:`lora_rank.recommend.presets`) pick modules by kind, mapped to each family's own names,
  at a uniform rank ``r`` (or the largest uniform rank within ``budget``).
- ``strategy="auto"`` scores every candidate from its weight spectrum
  (:mod:`lora_rank.recommend.scoring`: task weight × effective rank) and allocates per-module ranks
  proportional to the score under the trainable-parameter budget by water-filling
  (:mod:`lora_rank.recommend.allocation`): trainable ≤ budget and ≥ 97% of it, ranks multiples of
  ``rank_multiple`` in ``[min_rank, min(max_rank, in, out)]``.

None of PEFT's own options derives per-module ranks from the weights alone (EVA needs data,
AdaLoRA a training loop); this does, before the model is loaded.

Example:
    >>> import lora_rank
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
    >>> rec = report.recommend("attention-mlp", r=16)
    >>> rec.target_modules, rec.trainable_params
    (['query', 'key', 'value', 'output.dense', 'intermediate.dense'], 663552)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Optional

from ..errors import ConfigError
from ..peft.config import build
from ..peft.recommendation import Recommendation, Target
from ..peft.rules import moe_conversion
from ..report import Report
from ..spectral.settings import SpectralSettings
from . import allocation, scoring
from .budget import Budget, parse_budget
from .presets import PRESETS, Candidate, check_task, preset_candidates, select, task_weight

__all__ = ["STRATEGIES", "rank_targets", "recommend"]

#: Strategies :func:`recommend` accepts.
STRATEGIES: tuple[str, ...] = ("auto", *PRESETS)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    return value


def _ensure_spectra(report: Report, settings: Optional[SpectralSettings]) -> None:
    """Compute spectra into ``report`` with ``settings`` (default: :class:`SpectralSettings`())
    when it has none (reads every weight matrix)."""
    if report.has_spectra:
        return
    try:
        # Lazy: a build without the spectral engine still recommends presets.
        from ..spectral.compute import compute_spectra
    except ImportError as e:
        if e.name != compute_module:
            raise
        raise ConfigError(
            "strategy='auto' and rank_targets() need weight spectra, and this lora_rank build "
            "cannot compute them: use a preset (strategy='attention-mlp', ...)"
        ) from None
    compute_spectra(report, settings=settings)


#: The module :func:`_ensure_spectra` imports compute_spectra from.
compute_module = f"{__package__.rpartition('.')[0]}.spectral.compute"


def _target(c: Candidate, rank: int, ratio: float, score: float = math.nan) -> Target:
    m = c.module
    return Target(
        module=m.name,
        key=c.reach.key,
        kind=m.kind,
        layer=m.layer,
        rank=rank,
        alpha=ratio * rank,
        params=rank * c.reach.cost,
        is_parameter=c.reach.is_parameter,
        score=score,
    )


def _score_or_nan(c: Candidate, task: Optional[str]) -> float:
    s = scoring.score(c.module, task)
    return math.nan if s is None else s


def _preset_targets(
    report: Report,
    cands: list[Candidate],
    strategy: str,
    task: Optional[str],
    r: int,
    budget: Optional[int],
    steps: range,
    ratio: float,
) -> tuple[list[Target], list[str], int]:
    """Targets of a preset at rank ``r``, or at the largest uniform rank within ``budget``."""
    preset = PRESETS[strategy]
    conv = moe_conversion(report.model_type) if strategy == "all-linear" else None

    def mult(c: Candidate) -> int:
        # PEFT's all-linear doubles r (and alpha) on expert tensors fusing two projections.
        if conv is None or not c.reach.is_parameter:
            return 1
        return len(conv.fused.get(c.reach.key.rsplit(".", 1)[-1], ())) or 1

    def targets(base: int) -> list[Target]:
        return [
            _target(
                c,
                max(1, round(preset.factor(c.module.kind) * base)) * mult(c),
                ratio,
                _score_or_nan(c, task),
            )
            for c in cands
        ]

    if budget is None:
        return targets(r), [], r
    fitting = [b for b in steps if sum(t.params for t in targets(b)) <= budget]
    if not fitting:
        cheapest = sum(t.params for t in targets(steps[0]))
        raise ConfigError(
            f"budget {budget:,} is below the {cheapest:,} trainable parameters of {strategy!r} "
            f"at rank {steps[0]}"
        )
    best = targets(fitting[-1])
    used = sum(t.params for t in best)
    notes = []
    if used < allocation.BUDGET_FLOOR * budget:
        notes.append(
            f"{strategy!r} at uniform rank {fitting[-1]} uses {used:,} of the {budget:,} budget "
            f"({used / budget:.1%}); strategy='auto' allocates ranks per module to fill it"
        )
    return best, notes, fitting[-1]


_AUTO_RULE = (
    "score = task weight x effective rank (singular directions holding 90% of |W|_F^2)\n"
    "rank ~ score: water-filling of sum c*s*log(1 + r/{q}) under the budget (c = params per "
    "rank)\n"
    "ranks are multiples of {q} in [{lo}, min({hi}, in, out)]; modules given no step are "
    "not targeted"
)


def _auto_targets(
    report: Report,
    cands: list[Candidate],
    task: Optional[str],
    r: int,
    budget: Optional[int],
    step: int,
    min_rank: int,
    max_rank: int,
    ratio: float,
) -> tuple[list[Target], list[str], int]:
    """Targets allocated from the spectra of ``report`` (see
    :mod:`lora_rank.recommend.allocation`); also the budget."""
    notes: list[str] = []
    items: list[allocation.Item] = []
    by_key: dict[str, Candidate] = {}
    skipped: dict[str, list[str]] = {}
    for c in cands:
        w = task_weight(task, c.module.kind)
        if w <= 0:
            continue
        d = scoring.effective_rank(c.module)
        m = c.module
        cap = min(max_rank, min(m.in_features or 0, m.out_features or 0) // step * step)
        why = (
            "no spectrum"
            if d is None
            else "zero or non-finite weights"
            if d <= 0
            else f"smaller than min_rank {min_rank}"
            if cap < min_rank
            else None
        )
        if why:
            skipped.setdefault(why, []).append(m.name)
            continue
        items.append(allocation.Item(c.reach.key, c.reach.cost, cap, w * (d or 0.0)))
        by_key[c.reach.key] = c
    for why, names in skipped.items():
        notes.append(
            f"{len(names)} module(s) not scored ({why}): {', '.join(names[:4])}"
            + (" ..." if len(names) > 4 else "")
        )
    if not items:
        raise ConfigError(f"no module of {report.path} can be scored for task {task!r}")
    if budget is None:
        budget = sum(it.cost * r for it in items)
    cheapest = min(it.cost * min_rank for it in items)
    if budget < cheapest:
        raise ConfigError(
            f"budget {budget:,} is below the cheapest target ({cheapest:,} trainable parameters "
            f"at rank {min_rank})"
        )
    ranks = allocation.allocate(items, budget, step=step, min_rank=min_rank)
    used = allocation.used(items, ranks)
    if used < allocation.BUDGET_FLOOR * budget:
        full = sum(it.cost * it.cap for it in items)
        why = "max_rank and the matrix sizes cap it" if full < budget else "rank steps are coarse"
        notes.append(f"uses {used:,} of the {budget:,} budget ({used / budget:.1%}): {why}")
    targets = [
        _target(by_key[it.key], ranks[it.key], ratio, it.score) for it in items if it.key in ranks
    ]
    return targets, notes, budget


def recommend(
    report: Report,
    strategy: str = "auto",
    *,
    r: int = 8,
    lora_alpha: Optional[float] = None,
    budget: Budget = None,
    task: Optional[str] = None,
    exclude: Optional[Iterable[str]] = None,
    layers: Optional[Iterable[int]] = None,
    rank_multiple: int = 4,
    min_rank: Optional[int] = None,
    max_rank: int = 128,
    spectral_settings: Optional[SpectralSettings] = None,
) -> Recommendation:
    """Recommend LoRA targets and ranks for ``report``'s model.

    Args:
        strategy: ``"auto"`` (ranks from the weight spectra; computes them when the report
            has none) or a preset: ``"all-linear"``, ``"attention-qv"``, ``"attention"``,
            ``"attention-mlp"``, ``"attention8-mlp4"`` (see :mod:`lora_rank.recommend.presets`).
        r: rank of the presets; for ``"auto"`` without ``budget``, the budget is what rank
            ``r`` on every scored candidate would cost.
        lora_alpha: alpha for rank ``r`` (default ``2 · r``); every module gets
            ``alpha = rank · lora_alpha / r`` so the LoRA scale alpha/rank is the same everywhere.
        budget: trainable parameters: a count (``2_000_000``, ``"2M"``), a fraction of the
            checkpoint's parameters (``0.005``) or a percentage (``"0.5%"``). With a preset,
            the largest uniform rank (a multiple of ``rank_multiple``) that fits.
        task: ``None`` (general: attention and MLP weighted equally), ``"classification"``
            (attention only), ``"knowledge"`` (MLP favoured) or ``"style"`` (attention
            favoured, MLP included): the weights of ``"auto"`` (and of the scores presets show).
        exclude: kinds (``"attn_k"``), runtime names or their dot-suffixes to leave out.
        layers: layer indices to adapt (modules outside numbered layers are then left out).
        rank_multiple, min_rank, max_rank: ``"auto"`` ranks are multiples of ``rank_multiple``
            in ``[min_rank, min(max_rank, in, out)]`` (``min_rank`` defaults to
            ``rank_multiple``).
        spectral_settings: solver settings for the spectra ``"auto"`` computes when the
            report has none (default :class:`~lora_rank.spectral.settings.SpectralSettings`()).

    Returns:
        A :class:`~lora_rank.peft.recommendation.Recommendation`, verified against PEFT's matching
        rules; ``trainable_params`` is PEFT's count.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> report.recommend("attention-qv").target_modules
        ['query', 'value']
        >>> rec = report.recommend("auto", budget="0.5%")
        >>> rec.budget, 0.97 * rec.budget <= rec.trainable_params <= rec.budget
        (113568, True)
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    check_task(task)
    r = _positive("r", r)
    step = _positive("rank_multiple", rank_multiple)
    lo = _positive("min_rank", step if min_rank is None else min_rank)
    hi = _positive("max_rank", max_rank)
    if lo % step or hi % step or hi < lo:
        raise ConfigError(
            f"min_rank ({lo}) and max_rank ({hi}) must be multiples of rank_multiple ({step}) "
            "with min_rank <= max_rank"
        )
    if lora_alpha is not None and (
        isinstance(lora_alpha, bool)
        or not isinstance(lora_alpha, (int, float))
        or not lora_alpha > 0
        or not math.isfinite(lora_alpha)
    ):
        raise ConfigError(f"lora_alpha must be a positive number, not {lora_alpha!r}")
    ratio = (lora_alpha / r) if lora_alpha is not None else 2.0
    n_budget = parse_budget(budget, report.total_params)
    sel = select(report, exclude=exclude, layers=layers)
    notes = list(sel.warnings)
    if strategy == "auto":
        _ensure_spectra(report, spectral_settings)
        cands = sel.candidates
        targets, more, n_budget = _auto_targets(
            report, cands, task, r, n_budget, step, lo, hi, ratio
        )
        rule = _AUTO_RULE.format(q=step, lo=lo, hi=hi)
    else:
        cands, fused = preset_candidates(sel, PRESETS[strategy], report)
        notes += fused
        if not cands:
            raise ConfigError(
                f"preset {strategy!r} finds no module to target in {report.path} "
                f"(kinds present: {', '.join(report.kind_counts())})"
            )
        targets, more, base = _preset_targets(
            report, cands, strategy, task, r, n_budget, range(lo, hi + 1, step), ratio
        )
        rule = f"preset {strategy}: {PRESETS[strategy].description}, rank {base}"
    notes += more
    return build(
        report,
        targets,
        strategy=strategy,
        allow_all_linear=strategy == "all-linear",
        task=task,
        budget=n_budget,
        warnings=notes,
        rule=rule,
    )


def rank_targets(
    report: Report,
    task: Optional[str] = None,
    *,
    spectral_settings: Optional[SpectralSettings] = None,
) -> list[dict[str, Any]]:
    """Every candidate module kind, then every candidate module, each sorted by score (best
    first), with the score's components: task ``weight``, ``effective_rank`` (energy rank
    90%), ``stable_rank``, ``alpha``, ``spectral_norm``, ``params_per_rank`` (cost of one
    unit of rank), ``layer`` and ``depth`` (layer position), and how PEFT reaches it. Rows
    have ``level`` ``"kind"`` or ``"module"``. Computes spectra when the report has none.

    ``score = weight · effective_rank``: ``"auto"`` gives ranks proportional to it (see
    :mod:`lora_rank.recommend.scoring`). Kinds of weight 0 for ``task`` are listed last.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True)
        >>> [row["name"] for row in report.rank_targets() if row["level"] == "kind"][:2]
        ['mlp_up', 'mlp_down']
    """
    check_task(task)
    _ensure_spectra(report, spectral_settings)
    last = scoring.last_layer(report)
    rows = [scoring.module_row(c, task, last) for c in select(report).candidates]
    return scoring.sort_rows(scoring.kind_rows(rows)) + scoring.sort_rows(rows)
