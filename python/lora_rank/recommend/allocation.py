"""Per-module LoRA ranks under a trainable-parameter budget: discrete water-filling.

Each item ``i`` has a score ``s_i`` (task weight × effective rank, see :mod:`lora_rank.recommend.scoring`),
a cost ``c_i`` (trainable parameters per unit of rank) and a cap (its largest allowed rank).
The ranks maximise

    U = Σ_i  c_i · s_i · log(1 + r_i / q)        subject to   Σ_i c_i · r_i ≤ B,

with ``q`` the rank step (``rank_multiple``). Each module's utility is the log of the reach its
adapter gets, weighted by its size in parameters and its score; the continuous optimum is
``r_i + q = s_i / λ``: ranks proportional to the score, with the water level ``λ`` set by the
budget. The discrete version is a greedy water-filling: starting from nothing, give the next
rank step (``min_rank`` for a module's first, ``rank_multiple`` after) to the item whose
marginal utility per parameter, ``s_i · Δlog(1 + r/q) / Δr``, is highest, as long as it fits
the budget and the item's cap. Items that never get a step are not targeted.

When the greedy stops more than 3% under the budget (rank steps are coarse next to a small
budget), the allocation is solved exactly instead: a multiple-choice knapsack over budget units
of ``gcd`` of the step costs, maximising ``U`` among allocations that use at least 97% of the
budget. Where that table would be too large (budgets of millions of units, where the greedy's
shortfall is below one step anyway), a repair pass trades one step of one item for a refill of
the others while that brings the total closer to the budget.

Example:
    >>> items = [Item("a", 100, 64, 30.0), Item("b", 100, 64, 10.0)]
    >>> allocate(items, 4000, step=4, min_rank=4)
    {'a': 32, 'b': 8}
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Optional

#: Minimum share of the budget an allocation must use.
BUDGET_FLOOR = 0.97


@dataclass(frozen=True)
class Item:
    """One target: name, parameters per unit of rank, largest rank, score (> 0)."""

    key: str
    cost: int
    cap: int
    score: float


def _step(r: int, step: int, min_rank: int) -> int:
    return min_rank if r == 0 else step


def _density(item: Item, r: int, dr: int, step: int) -> float:
    """Marginal utility per trainable parameter of raising ``item`` from ``r`` to ``r + dr``."""
    return item.score * (math.log1p((r + dr) / step) - math.log1p(r / step)) / dr


def _fill(
    items: Sequence[Item],
    ranks: list[int],
    room: int,
    *,
    step: int,
    min_rank: int,
    frozen: int = -1,
) -> int:
    """Greedy water-filling from ``ranks`` (updated in place) into ``room`` parameters; item
    ``frozen`` is not raised. Returns the room left."""
    heap: list[tuple[float, int]] = []
    for i, it in enumerate(items):
        dr = _step(ranks[i], step, min_rank)
        if i != frozen and ranks[i] + dr <= it.cap:
            heap.append((-_density(it, ranks[i], dr, step), i))
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        it = items[i]
        dr = _step(ranks[i], step, min_rank)
        if it.cost * dr > room:
            continue  # every later step of this item costs as much or more
        ranks[i] += dr
        room -= it.cost * dr
        nxt = _step(ranks[i], step, min_rank)
        if ranks[i] + nxt <= it.cap:
            heapq.heappush(heap, (-_density(it, ranks[i], nxt, step), i))
    return room


def _repair(
    items: Sequence[Item], ranks: list[int], budget: int, *, step: int, min_rank: int
) -> list[int]:
    """Trade single steps for refills while that uses more of the budget (see module doc)."""
    for _ in range(4 * len(items) + 8):
        used = sum(it.cost * r for it, r in zip(items, ranks))
        if used >= BUDGET_FLOOR * budget:
            break
        # One trial per distinct amount freed: the item losing the least utility per parameter.
        trials: dict[int, tuple[float, int]] = {}
        for i, it in enumerate(items):
            r = ranks[i]
            if r == 0:
                continue
            back = r if r == min_rank else step
            loss = _density(it, r - back, back, step)
            freed = it.cost * back
            if freed not in trials or loss < trials[freed][0]:
                trials[freed] = (loss, i)
        best = (used, ranks)
        for _, i in trials.values():
            trial = list(ranks)
            back = trial[i] if trial[i] == min_rank else step
            trial[i] -= back
            room = _fill(
                items,
                trial,
                budget - used + items[i].cost * back,
                step=step,
                min_rank=min_rank,
                frozen=i,
            )
            if budget - room > best[0]:
                best = (budget - room, trial)
        if best[1] is ranks:
            break
        ranks = best[1]
    return ranks


def _utility(item: Item, r: int, step: int) -> float:
    return item.cost * item.score * math.log1p(r / step)


#: Largest knapsack table (options × budget units) :func:`_exact` fills.
EXACT_LIMIT = 3_000_000


def _exact(items: Sequence[Item], budget: int, *, step: int, min_rank: int) -> Optional[list[int]]:
    """The allocation maximising ``U`` among those using ≥ 97% of ``budget`` (else the one
    using the most); None when the table would exceed :data:`EXACT_LIMIT`."""
    unit = reduce(math.gcd, (it.cost * math.gcd(step, min_rank) for it in items))
    slots = budget // unit
    options = [
        [(0, 0, 0.0)]
        + [
            (r, r * it.cost // unit, _utility(it, r, step))
            for r in range(min_rank, it.cap + 1, step)
        ]
        for it in items
    ]
    if sum(len(o) for o in options) * (slots + 1) > EXACT_LIMIT:
        return None
    none = -math.inf
    best = [0.0] + [none] * slots  # best[s]: highest U using exactly s units
    picks: list[list[int]] = []
    for opts in options:
        new, pick = [none] * (slots + 1), [0] * (slots + 1)
        for s in range(slots + 1):
            for j, (_, units, value) in enumerate(opts):
                if units > s:
                    break
                if best[s - units] != none and best[s - units] + value > new[s]:
                    new[s], pick[s] = best[s - units] + value, j
        best = new
        picks.append(pick)
    reachable = [s for s in range(slots + 1) if best[s] != none]
    full = [s for s in reachable if s * unit >= BUDGET_FLOOR * budget]
    s = max(full, key=lambda x: (best[x], x)) if full else max(reachable)
    ranks = [0] * len(items)
    for i in range(len(items) - 1, -1, -1):
        r, units, _ = options[i][picks[i][s]]
        ranks[i] = r
        s -= units
    return ranks


def allocate(items: Sequence[Item], budget: int, *, step: int, min_rank: int) -> dict[str, int]:
    """Ranks (multiples of ``step``, ≥ ``min_rank`` or 0 = not targeted, ≤ each cap) with
    ``Σ cost · rank ≤ budget``; see the module docstring for the rule."""
    ranks = [0] * len(items)
    room = _fill(items, ranks, budget, step=step, min_rank=min_rank)
    if budget - room < BUDGET_FLOOR * budget:
        exact = _exact(items, budget, step=step, min_rank=min_rank)
        if exact is not None:
            ranks = exact
        else:
            ranks = _repair(items, ranks, budget, step=step, min_rank=min_rank)
    return {it.key: r for it, r in zip(items, ranks) if r > 0}


def used(items: Sequence[Item], ranks: dict[str, int]) -> int:
    """Trainable parameters of ``ranks``."""
    return sum(it.cost * ranks.get(it.key, 0) for it in items)


#: Singular values below this share of the largest σ² of all modules are numerically zero
#: (float rounding of the stored weights): :func:`most_energy` spends no rank on them.
NEGLIGIBLE = 1e-12


def most_energy(
    values: Mapping[str, Sequence[float]],
    cost: Mapping[str, int],
    budget: int,
    *,
    step: int = 1,
    cap: Optional[Mapping[str, int]] = None,
) -> dict[str, int]:
    """Ranks keeping the most Σσ² of an update under ``budget`` parameters.

    ``values[m]`` are module m's singular values (descending), ``cost[m]`` its parameters per
    rank (in + out for a linear layer). A step of ``step`` ranks keeps the σ² of those
    directions and costs ``step · cost[m]``, so taking steps in decreasing order of kept σ² per
    parameter while they fit is optimal up to the last step (a knapsack's greedy; each module's
    steps come in order because its σ are sorted). Ranks are multiples of ``step`` up to
    ``cap[m]`` (default: as many values as are known); modules that get no step are left out,
    and so are values that are numerically zero (:data:`NEGLIGIBLE`). What
    :meth:`lora_rank.deltas.compare.Comparison.extract` (``budget=``) and
    ``recommend(strategy="delta")`` allocate with.

    Example:
        >>> most_energy({"a": [3.0, 1.0], "b": [4.0, 2.0]}, {"a": 10, "b": 30}, 50)
        {'a': 2, 'b': 1}
        >>> most_energy({"a": [3.0, 1.0, 1.0, 0.5]}, {"a": 10}, 45, step=2)
        {'a': 4}
    """
    floor = NEGLIGIBLE * max((v[0] ** 2 for v in values.values() if len(v)), default=0.0)
    blocks: list[tuple[float, str, int]] = []
    for m, vals in values.items():
        limit = len(vals) if cap is None else min(len(vals), cap.get(m, 0))
        limit -= limit % step
        sq = [s * s for s in vals[:limit]]
        for j in range(0, limit, step):
            kept = sum(sq[j : j + step])
            if sq[j] > floor:
                blocks.append((kept / (step * cost[m]), m, j // step))
    blocks.sort(key=lambda t: (-t[0], t[1], t[2]))
    ranks: dict[str, int] = {}
    closed: set[str] = set()
    left = budget
    for density, m, i in blocks:
        if m in closed or density <= 0:
            continue
        if ranks.get(m, 0) != i * step or step * cost[m] > left:
            closed.add(m)  # a later step of m needs this one
            continue
        ranks[m] = (i + 1) * step
        left -= step * cost[m]
    return ranks
