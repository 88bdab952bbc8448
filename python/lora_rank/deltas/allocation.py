"""How many singular directions of each update to keep: under a parameter budget (the most
Σ‖ΔW‖²_F kept), at one rank for all (mergekit's ``--max-rank``), or by a per-module energy
threshold (kohya's ``sv_fro``).

A rank step of module i keeps σ² of its update and costs ``in_i + out_i`` parameters, so the
budgeted allocation takes steps in decreasing order of σ²/(in + out) while they fit: optimal
for Σ kept energy up to the last step (a knapsack's greedy), and every module's steps are taken
in order because its σ are sorted.

The budgeted rule is :func:`lora_rank.recommend.allocation.most_energy` (one definition, shared
with ``recommend(strategy="delta")``); the other two are here.

Example:
    >>> sizes = {"a": 10, "b": 30}
    >>> values = {"a": [3.0, 1.0], "b": [4.0, 2.0]}
    >>> uniform(values, sizes, 1), by_energy(values, {"a": 10.0, "b": 20.0}, 0.9)
    ({'a': 1, 'b': 1}, {'a': 1, 'b': 2})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import ConfigError


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
