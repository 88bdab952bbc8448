"""``strategy="delta"``: targets and ranks from a related fine-tune's update ΔW.

Given :func:`lora_rank.compare` of this model's base and a full fine-tune of it (an earlier
version, a sibling task, a community fine-tune), the ranks keep the most of that fine-tune's
‖ΔW‖²_F per trainable parameter: each rank step of a module keeps σ² of its update's spectrum
and costs the module's PEFT parameters per rank, and steps are taken in decreasing order of
kept σ² per parameter while they fit the budget
(:func:`lora_rank.recommend.allocation.most_energy`, the rule
:meth:`~lora_rank.deltas.compare.Comparison.extract` uses). Candidates are the modules
``all-linear`` would adapt except a classification head (trained in full, its update is its
training from a fresh init); those the fine-tune did not change are left out. What the quality
benchmark measured for this rule: README "What auto does and why".

Example:
    >>> import lora_rank, tempfile
    >>> from lora_rank.deltas.extract import example_finetune
    >>> base = lora_rank.demo_checkpoint()
    >>> delta = lora_rank.compare(base, example_finetune(tempfile.mkdtemp()), progress=False)
    >>> rec = lora_rank.analyze(base).recommend("delta", delta=delta, budget=10_000)
    >>> rec.module_ranks(), rec.trainable_params
    ({'encoder.layer.0.attention.self.query': 12}, 9216)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from ..errors import ConfigError
from ..report import Report
from .allocation import most_energy
from .presets import Candidate

if TYPE_CHECKING:
    from ..deltas.compare import Comparison, ModuleDelta

#: The kind of a classification head (``classifier``, ``score``), which the rule leaves out.
HEAD_KIND = "classifier"

RULE = (
    "delta: ranks keep the most of the fine-tune's |dW|_F^2 per trainable parameter "
    "(greedy on sigma^2 / params per rank over its update spectra, steps of {q}, at most "
    "{hi}); modules it left unchanged are not targeted"
)


def _matching(
    report: Report, delta: Comparison, cands: list[Candidate]
) -> tuple[dict[str, ModuleDelta], list[str]]:
    """Each candidate's update in ``delta`` (by the base's module name), and notes on the
    candidates without one."""
    by_name: dict[str, ModuleDelta] = {}
    for u in delta.modules:
        if u.expert is None:
            by_name.setdefault(u.name, u)
    experts = {u.name for u in delta.modules if u.expert is not None}
    found: dict[str, ModuleDelta] = {}
    missing: list[str] = []
    for c in cands:
        m = c.module
        d = by_name.get(m.name)
        if d is None:
            if m.name in experts:
                missing.append(f"{m.name} (expert update: not ranked by 'delta')")
            else:
                missing.append(m.name)
            continue
        if (d.in_features, d.out_features) != (m.in_features, m.out_features):
            raise ConfigError(
                f"the comparison's {d.name} is {d.out_features}x{d.in_features}, "
                f"{report.path}'s is {m.out_features}x{m.in_features}: compare() a fine-tune "
                "of this model"
            )
        found[m.name] = d
    if not found:
        raise ConfigError(
            f"the comparison of {delta.base.path} and {delta.finetuned.path} has no module "
            f"{report.path} can adapt (first candidate: {cands[0].module.name if cands else '-'}"
            "): compare() a fine-tune of this model"
        )
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} module(s) have no update in the comparison and get no rank: "
            + ", ".join(missing[:4])
            + (" ..." if len(missing) > 4 else "")
        )
    return found, notes


def delta_targets(
    report: Report,
    cands: list[Candidate],
    delta: Comparison,
    *,
    r: int,
    budget: Optional[int],
    step: int,
    max_rank: int,
    ratio: float,
) -> tuple[list[tuple[Candidate, int, float]], list[str], int]:
    """The candidates ``strategy="delta"`` adapts with their ranks and their share of the
    fine-tune's ‖ΔW‖²_F, notes on what was left out, and the budget (rank ``r`` on every
    changed candidate when ``budget`` is None)."""
    if delta.settings is None:
        raise ConfigError(
            "strategy='delta' needs the update spectra: compare(base, finetuned, spectral=True)"
        )
    heads = [c.module.name for c in cands if c.module.kind == HEAD_KIND]
    cands = [c for c in cands if c.module.is_lora_target and c.module.kind != HEAD_KIND]
    found, notes = _matching(report, delta, cands)
    if heads:
        notes.append(
            f"classification head(s) {', '.join(heads)} not ranked: a head is trained in full "
            "(PEFT task_type='SEQ_CLS' puts it in modules_to_save), and its update is its "
            "training from a fresh init"
        )
    changed = [c for c in cands if c.module.name in found and found[c.module.name].changed]
    unchanged = [n for n, d in found.items() if not d.changed]
    if unchanged:
        notes.append(
            f"{len(unchanged)} module(s) the fine-tune left unchanged get no rank: "
            + ", ".join(unchanged[:4])
            + (" ..." if len(unchanged) > 4 else "")
        )
    if not changed:
        raise ConfigError(
            f"{delta.finetuned.path} changed no module {report.path} can adapt: "
            "strategy='delta' has nothing to follow"
        )
    values: dict[str, list[float]] = {}
    cost: dict[str, int] = {}
    cap: dict[str, int] = {}
    for c in changed:
        d = found[c.module.name]
        if d.spectrum is None:
            continue
        values[c.reach.key] = list(d.spectrum.singular_values)
        cost[c.reach.key] = c.reach.cost
        cap[c.reach.key] = min(max_rank, d.in_features, d.out_features)
    if not values:
        raise ConfigError(
            f"the comparison has no spectrum of the {len(changed)} changed module(s) "
            f"{report.path} can adapt: compare(base, finetuned, spectral=True)"
        )
    if budget is None:
        budget = sum(cost[k] * min(r, cap[k]) for k in cost)
    ranks = most_energy(values, cost, budget, step=step, cap=cap)
    if not ranks:
        cheapest = min(cost.values()) * step
        raise ConfigError(
            f"budget {budget:,} is below the cheapest target ({cheapest:,} trainable parameters "
            f"at rank {step})"
        )
    total = sum(d.delta_norm**2 for d in (found[c.module.name] for c in changed))
    kept = sum(s * s for k, n in ranks.items() for s in values[k][:n])
    top_k = delta.settings.top_k
    full = [k for k, n in ranks.items() if n >= len(values[k]) and n < cap[k]]
    if full:
        notes.append(
            f"{len(full)} module(s) got all {top_k} singular values compare() computed "
            f"(e.g. {full[0]}); compare(top_k=...) with more lets the budget go further"
        )
    notes.append(
        f"the ranks keep {kept / total:.1%} of the fine-tune's |dW|_F^2 over the "
        f"{len(changed)} changed module(s) ({delta.finetuned.path})"
        if total > 0
        else "the fine-tune's update is zero"
    )
    chosen = []
    for c in changed:
        if c.reach.key in ranks:
            d = found[c.module.name]
            share = d.delta_norm**2 / total if total > 0 else math.nan
            chosen.append((c, ranks[c.reach.key], share))
    return chosen, notes, budget
