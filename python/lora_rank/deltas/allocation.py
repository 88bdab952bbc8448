"""How many singular directions of each update to keep: under a parameter budget (the most
Σ‖ΔW‖²_F kept), at one rank for all (mergekit's ``--max-rank``), or by a per-module energy
threshold (kohya's ``sv_fro``).

A rank step of module i keeps σ² of its update and costs ``in_i + out_i`` parameters, so the
budgeted allocation takes steps in decreasing order of σ²/(in + out) while they fit: optimal
for Σ kept energy up to the last step (a knapsack's greedy), and every module's steps are taken
in order because its σ are sorted.

Example:
    >>> sizes = {"a": 10, "b": 30}
    >>> values = {"a": [3.0, 1.0], "b": [4.0, 2.0]}
    >>> budgeted(values, sizes, 50), uniform(values, sizes, 1), by_energy(values, {"a": 10.0, "b": 20.0}, 0.9)
    ({'a': 2, 'b': 1}, {'a': 1, 'b': 1}, {'a': 1, 'b': 2})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConfigError

#: Singular values below this share of the largest σ² of all modules are numerically zero
#: (float rounding of the stored weights): no rank is spent on them.
NEGLIGIBLE = 1e-12


def budgeted(
    values: Mapping[str, Sequence[float]], cost: Mapping[str, int], budget: int
) -> dict[str, int]:
    """Ranks keeping the most Σσ² under ``budget`` parameters; ``values[m]`` are module m's
    singular values (descending), ``cost[m]`` its parameters per rank (in + out). Modules
    that get no step are left out, and so are values that are numerically zero
    (:data:`NEGLIGIBLE`).

    Example:
        >>> budgeted({"a": [2.0, 1.0]}, {"a": 4}, 7)
        {'a': 1}
    """
    floor = NEGLIGIBLE * max((v[0] ** 2 for v in values.values() if v), default=0.0)
    steps = sorted(
        (
            (s * s / cost[m], m, i)
            for m, vals in values.items()
            for i, s in enumerate(vals)
            if s * s > floor
        ),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    ranks: dict[str, int] = {}
    closed: set[str] = set()
    left = budget
    for density, m, i in steps:
        if m in closed or density <= 0:
            continue
        if ranks.get(m, 0) != i or cost[m] > left:
            closed.add(m)  # a later step of m needs this one
            continue
        ranks[m] = i + 1
        left -= cost[m]
    return ranks


def uniform(
    values: Mapping[str, Sequence[float]], cost: Mapping[str, int], r: int
) -> dict[str, int]:
    """Rank ``r`` for every module (at most its number of nonzero singular values known).

    Example:
        >>> uniform({"a": [2.0, 0.0], "b": [1.0]}, {"a": 4, "b": 4}, 2)
        {'a': 1, 'b': 1}
    """
    if r < 1:
        raise ConfigError(f"r must be a positive integer, not {r!r}")
    out = {m: min(r, sum(1 for s in vals if s > 0)) for m, vals in values.items()}
    return {m: k for m, k in out.items() if k > 0}


def by_energy(
    values: Mapping[str, Sequence[float]], total_sq: Mapping[str, float], share: float
) -> dict[str, int]:
    """Per module, the smallest rank whose Σσ² reaches ``share`` of ‖ΔW‖²_F (``total_sq``),
    kohya's ``sv_fro``; a module whose known values do not reach it gets all of them.

    Example:
        >>> by_energy({"a": [3.0, 1.0]}, {"a": 10.0}, 0.8)
        {'a': 1}
    """
    if not 0 < share <= 1:
        raise ConfigError(f"energy must be in (0, 1], not {share!r}")
    out: dict[str, int] = {}
    for m, vals in values.items():
        goal, kept, k = share * total_sq[m], 0.0, 0
        for s in vals:
            if kept >= goal or s <= 0:
                break
            kept += s * s
            k += 1
        if k:
            out[m] = k
    return out


def kept_energy(values: Mapping[str, Sequence[float]], ranks: Mapping[str, int]) -> float:
    """Σ over modules of the σ² their ranks keep.

    Example:
        >>> kept_energy({"a": [2.0, 1.0]}, {"a": 1})
        4.0
    """
    return sum(s * s for m, k in ranks.items() for s in values[m][:k])
