"""``recommend()`` and ``rank_targets()``: LoRA target modules and per-module ranks for a
:class:`~lora_rank.report.Report`, emitted as an exact PEFT config
(:class:`~lora_rank.peft.recommendation.Recommendation`).

- Presets (:mod:`lora_rank.recommend.presets`) pick modules by kind, mapped to each family's own names,
  at a uniform rank ``r`` (or the largest uniform rank within ``budget``).
- Weighted strategies (:mod:`lora_rank.recommend.weights`: ``"spectral"``, ``"kind-prior"``,
  ``"depth"``, ``"alpha"``, ``"pooler"``) weigh every candidate by one rule and allocate
  per-module ranks ∝ weight under the trainable-parameter budget by water-filling
  (:mod:`lora_rank.recommend.allocation`): trainable ≤ budget and ≥ 97% of it, ranks multiples of
  ``rank_multiple`` in ``[min_rank, min(max_rank, in, out)]``.
- ``strategy="auto"`` is the strategy :data:`AUTO` names: the one the recommendation-quality
  benchmark (``benches/quality``) supports; README "What auto does and why".

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
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ConfigError
from ..peft.config import build
from ..peft.recommendation import Recommendation, Target
from ..peft.rules import moe_conversion
from ..report import Report
from ..spectral.settings import SpectralSettings
from . import allocation, scoring, weights
from .budget import Budget, parse_budget
from .delta import RULE as DELTA_RULE
from .delta import delta_targets
from .presets import PRESETS, Candidate, check_task, preset_candidates, select

if TYPE_CHECKING:
    from ..deltas.compare import Comparison

__all__ = ["AUTO", "AUTO_WITH_DELTA", "STRATEGIES", "needs_spectra", "rank_targets", "recommend"]

#: What ``strategy="auto"`` does: the strategy ``benches/quality`` supports (README "What auto
#: does and why"). Nothing beat all-linear at equal budget there (BBC headlines, budget of
#: all-linear r=2, 5 seeds: the old spectral rule +0.4 points [-1.5, +2.2], Spectrum's SNR
#: selection -0.1 [-2.0, +1.9]), so ``auto`` is the uniform allocation: all-linear's modules at
#: the largest uniform rank within the budget (rank ``r`` without one).
AUTO = "all-linear"

#: What ``strategy="auto"`` does when ``delta=`` (a related fine-tune's comparison) is given:
#: ``"delta"`` only if the quality benchmark's delta arms beat the presets (README "What auto
#: does and why"); until then :data:`AUTO`, and the recommendation says the delta was not used.
AUTO_WITH_DELTA = AUTO

#: Strategies :func:`recommend` accepts.
STRATEGIES: tuple[str, ...] = ("auto", "delta", *weights.RULES, *PRESETS)

#: Default ``rank_multiple`` of the weighted strategies (presets: 1, any uniform rank).
WEIGHTED_RANK_MULTIPLE = 4


def needs_spectra(strategy: str) -> bool:
    """Whether ``strategy`` reads weight spectra (so :func:`recommend` computes them).

    Example:
        >>> needs_spectra("all-linear"), needs_spectra("spectral"), needs_spectra("depth")
        (False, True, False)
    """
    impl = AUTO if strategy == "auto" else strategy
    return impl in weights.RULES and weights.RULES[impl].needs_spectra


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
        reachable = ", ".join(
            f"{sum(t.params for t in targets(b)):,} (rank {b})" for b in list(steps)[:3]
        )
        raise ConfigError(
            f"budget {budget:,} is below what {strategy!r} needs at its smallest rank: budgets "
            f"it reaches start at {reachable}, ..."
        )
    best = targets(fitting[-1])
    used = sum(t.params for t in best)
    notes = []
    if used < allocation.BUDGET_FLOOR * budget:
        nxt = [b for b in steps if b > fitting[-1]]
        more = (
            f"; rank {nxt[0]} would need {sum(t.params for t in targets(nxt[0])):,}" if nxt else ""
        )
        notes.append(
            f"{strategy!r} at uniform rank {fitting[-1]} uses {used:,} of the {budget:,} budget "
            f"({used / budget:.1%}){more}"
        )
    return best, notes, fitting[-1]


_WEIGHTED_RULE = (
    "{rule}\n"
    "rank ~ weight: water-filling of sum c*w*log(1 + r/{q}) under the budget (c = params per "
    "rank)\n"
    "ranks are multiples of {q} in [{lo}, min({hi}, in, out)]; modules given no step are "
    "not targeted"
)


def _weighted_targets(
    report: Report,
    cands: list[Candidate],
    rule: weights.Rule,
    task: Optional[str],
    r: int,
    budget: Optional[int],
    step: int,
    min_rank: int,
    max_rank: int,
    ratio: float,
    spectral_settings: Optional[SpectralSettings],
) -> tuple[list[Target], list[str], int]:
    """Targets allocated ∝ ``rule``'s weights (see :mod:`lora_rank.recommend.allocation`);
    also the budget."""
    if rule.needs_spectra:
        _ensure_spectra(report, spectral_settings)
    if rule.all_linear:
        cands = [c for c in cands if c.module.is_lora_target]
    notes: list[str] = []
    items: list[allocation.Item] = []
    by_key: dict[str, Candidate] = {}
    skipped: dict[str, list[str]] = {}
    for c in cands:
        w = rule.weight(c, task, cands)
        m = c.module
        if w == 0:
            # Not a candidate of this rule (a kind the task weighs 0): said when all-linear
            # wraps it, since the strategies start from all-linear's modules.
            if m.is_lora_target:
                skipped.setdefault(f"{rule.name!r} weighs {m.kind} 0 for task {task!r}", []).append(
                    m.name
                )
            continue
        cap = min(max_rank, min(m.in_features or 0, m.out_features or 0) // step * step)
        why = (
            "no spectrum"
            if w is None
            else "zero or non-finite weights"
            if not (w > 0 and math.isfinite(w))
            else f"smaller than min_rank {min_rank}"
            if cap < min_rank
            else None
        )
        if why:
            skipped.setdefault(why, []).append(m.name)
            continue
        items.append(allocation.Item(c.reach.key, c.reach.cost, cap, float(w or 0.0)))
        by_key[c.reach.key] = c
    for why, names in skipped.items():
        notes.append(
            f"{len(names)} module(s) get no rank ({why}): {', '.join(names[:4])}"
            + (" ..." if len(names) > 4 else "")
        )
    if not items:
        why = "; ".join(notes) if notes else "it has no module PEFT can adapt"
        raise ConfigError(
            f"no module of {report.path} can be weighed by strategy {rule.name!r} for task "
            f"{task!r}: {why}"
        )
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
    unranked = [by_key[it.key].module.name for it in items if it.key not in ranks]
    if unranked:
        notes.append(
            f"{len(unranked)} of {len(items)} weighted module(s) get no rank within the budget "
            f"{budget:,}: {', '.join(unranked[:4])}" + (" ..." if len(unranked) > 4 else "")
        )
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
    rank_multiple: Optional[int] = None,
    min_rank: Optional[int] = None,
    max_rank: int = 128,
    spectral_settings: Optional[SpectralSettings] = None,
    delta: Optional[Comparison] = None,
) -> Recommendation:
    """Recommend LoRA targets and ranks for ``report``'s model.

    Args:
        strategy: ``"auto"`` (the strategy :data:`AUTO` names: what the recommendation-quality
            benchmark supports, README "What auto does and why"), a weighted strategy
            (``"spectral"``, ``"kind-prior"``, ``"depth"``, ``"alpha"``, ``"pooler"``: ranks ∝ a
            per-module weight, see :mod:`lora_rank.recommend.weights`; those reading spectra compute
            them when the report has none) or a preset: ``"all-linear"``, ``"attention-qv"``,
            ``"attention"``, ``"attention-mlp"``, ``"attention8-mlp4"`` (see
            :mod:`lora_rank.recommend.presets`), or ``"delta"``: ranks that keep the most of a
            related full fine-tune's update per trainable parameter (``delta=``; see
            :mod:`lora_rank.recommend.delta`).
        r: rank of the presets; for a weighted strategy without ``budget``, the budget is what
            rank ``r`` on every candidate it weighs would cost.
        lora_alpha: alpha for rank ``r`` (default ``2 · r``); every module gets
            ``alpha = rank · lora_alpha / r`` so the LoRA scale alpha/rank is the same everywhere.
        budget: trainable parameters: a count (``2_000_000``, ``"2M"``), a fraction of the
            checkpoint's parameters (``0.005``) or a percentage (``"0.5%"``). With a preset,
            the largest uniform rank that fits (any rank, or a multiple of ``rank_multiple``
            when given); a budget below the smallest rank's cost raises
            :class:`~lora_rank.ConfigError` naming the budgets the preset reaches.
        task: ``None`` (general: attention and MLP weighted equally), ``"classification"``
            (attention only), ``"knowledge"`` (MLP favoured) or ``"style"`` (attention
            favoured, MLP included): the weights of ``"spectral"`` (and of the scores presets show).
        exclude: kinds (``"attn_k"``), runtime names or their dot-suffixes to leave out.
        layers: layer indices to adapt (modules outside numbered layers are then left out).
        rank_multiple, min_rank, max_rank: ranks are multiples of ``rank_multiple`` (default
            4 for weighted strategies, 1 for presets) in ``[min_rank, min(max_rank, in, out)]``
            (``min_rank`` defaults to ``rank_multiple``).
        spectral_settings: solver settings for the spectra a weighted strategy computes when
            the report has none (default :class:`~lora_rank.spectral.settings.SpectralSettings`()).
        delta: :func:`lora_rank.compare` of this model and a related full fine-tune of it, for
            ``strategy="delta"`` (``"auto"`` with a delta is :data:`AUTO_WITH_DELTA`).

    Returns:
        A :class:`~lora_rank.peft.recommendation.Recommendation`, verified against PEFT's matching
        rules; ``trainable_params`` is PEFT's count.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> report.recommend("attention-qv").target_modules
        ['query', 'value']
        >>> rec = report.recommend("auto", budget="0.5%")
        >>> rec.budget, rec.trainable_params <= rec.budget
        (113568, True)
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    check_task(task)
    r = _positive("r", r)
    impl = (AUTO if delta is None else AUTO_WITH_DELTA) if strategy == "auto" else strategy
    if impl == "delta" and delta is None:
        raise ConfigError(
            "strategy='delta' needs delta=lora_rank.compare(base, finetuned): the update of a "
            "related full fine-tune of this model"
        )
    if delta is not None and impl != "delta" and strategy != "auto":
        raise ConfigError(f"delta= is read by strategy='delta' only, not {strategy!r}")
    if rank_multiple is None:
        rank_multiple = WEIGHTED_RANK_MULTIPLE if impl in weights.RULES else 1
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
    if delta is not None and impl != "delta":
        notes.append(
            f"delta= given, and strategy='auto' is {impl!r}, which does not read it: the "
            "benchmark did not show the delta rule beating it (README 'What auto does and "
            "why'); strategy='delta' uses it"
        )
    if impl == "delta":
        assert delta is not None
        if min_rank is not None and lo != step:
            raise ConfigError("strategy='delta' takes rank_multiple and max_rank, not min_rank")
        chosen, more, n_budget = delta_targets(
            report,
            sel.candidates,
            delta,
            r=r,
            budget=n_budget,
            step=step,
            max_rank=hi,
            ratio=ratio,
        )
        targets = [_target(c, rank, ratio, share) for c, rank, share in chosen]
        rule = DELTA_RULE.format(q=step, hi=hi)
    elif impl in weights.RULES:
        weighted = weights.RULES[impl]
        targets, more, n_budget = _weighted_targets(
            report,
            sel.candidates,
            weighted,
            task,
            r,
            n_budget,
            step,
            lo,
            hi,
            ratio,
            spectral_settings,
        )
        rule = _WEIGHTED_RULE.format(rule=weighted.description, q=step, lo=lo, hi=hi)
    else:
        cands, fused = preset_candidates(sel, PRESETS[impl], report)
        notes += fused
        if not cands:
            raise ConfigError(
                f"preset {impl!r} finds no module to target in {report.path} "
                f"(kinds present: {', '.join(report.kind_counts())})"
            )
        targets, more, base = _preset_targets(
            report, cands, impl, task, r, n_budget, range(lo, hi + 1, step), ratio
        )
        rule = f"preset {impl}: {PRESETS[impl].description}, rank {base}"
    if impl != strategy:
        rule = f"auto = {impl} (benchmark evidence: README 'What auto does and why')\n{rule}"
    notes += more
    return build(
        report,
        targets,
        strategy=strategy,
        allow_all_linear=impl == "all-linear",
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

    ``score = weight · effective_rank``: ``"spectral"`` gives ranks proportional to it (see
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
