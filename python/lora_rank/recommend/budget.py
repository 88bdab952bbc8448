"""Budgets in trainable parameters: ``2_000_000``, ``"2M"``, ``0.005`` or ``"0.5%"`` of the
checkpoint's parameters, parsed into one count.

Example:
    >>> parse_budget("500k", 1)
    500000
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

from ..errors import ConfigError

_SCALE = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}

Budget = Union[int, float, str, None]


def parse_budget(budget: Budget, total_params: int) -> Optional[int]:
    """A budget in trainable parameters: an int is a count; a float in (0, 1) or a string
    ``"0.5%"`` / ``"0.005"`` a fraction of ``total_params``; ``"2M"``, ``"500k"``, ``"2e6"``
    counts. Anything else raises :class:`~lora_rank.ConfigError`.

    Example:
        >>> parse_budget("0.5%", 1_000_000), parse_budget(0.01, 1_000_000), parse_budget("2M", 1)
        (5000, 10000, 2000000)
    """
    if budget is None:
        return None
    value: float
    if isinstance(budget, bool):
        pass
    elif isinstance(budget, int):
        if budget > 0:
            return budget
    elif isinstance(budget, float):
        if 0 < budget < 1:
            return _fraction(budget, total_params, budget)
        if budget >= 1 and budget.is_integer():
            return int(budget)
    elif isinstance(budget, str):
        text = budget.strip().replace("_", "").replace(",", "").lower()
        try:
            if text.endswith("%"):
                value = float(text[:-1])
                if 0 < value <= 100:
                    return _fraction(value / 100, total_params, budget)
            elif text and text[-1] in _SCALE:
                value = float(text[:-1]) * _SCALE[text[-1]]
                if value >= 1:
                    return int(value)
            else:
                return parse_budget(
                    int(text) if re.fullmatch(r"\d+", text) else float(text), total_params
                )
        except (ValueError, ConfigError):
            pass
    raise ConfigError(
        f"invalid budget {budget!r}: give a parameter count (2000000, '2M'), a fraction of the "
        "model's parameters (0.005) or a percentage ('0.5%')"
    )


def _fraction(f: float, total: int, given: Budget) -> int:
    n = math.floor(f * total)
    if n < 1:
        raise ConfigError(f"budget {given!r} of {total:,} parameters is less than one parameter")
    return n
