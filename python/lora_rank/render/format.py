"""Number and text formatting shared by every renderer (terminal tables, CSV, HTML, plots):
pure functions of values, no report types and no rich.

Example:
    >>> human(22713728), fmt_number(35.8187), shape_text((384, 1536))
    ('22.7M', '35.8', '384×1536')
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any, Optional


def finite(values: Iterable[float]) -> list[float]:
    """The finite values of ``values`` (NaN and ±inf dropped).

    Example:
        >>> finite([1.0, float("nan"), 2.0])
        [1.0, 2.0]
    """
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _scaled(n: float, units: tuple[str, str, str, str], sep: str) -> Optional[str]:
    for div, unit in zip((1e12, 1e9, 1e6, 1e3), units):
        if abs(n) >= div:
            return f"{n / div:.3g}{sep}{unit}"
    return None


def human(n: float) -> str:
    """``n`` with a k/M/B/T suffix, 3 significant digits.

    Example:
        >>> human(22713728), human(512), human(7_241_732_096)
        ('22.7M', '512', '7.24B')
    """
    return _scaled(n, ("T", "B", "M", "k"), "") or f"{n:g}"


def human_bytes(n: int) -> str:
    """Bytes in decimal units.

    Example:
        >>> human_bytes(90_868_376), human_bytes(12)
        ('90.9 MB', '12 B')
    """
    return _scaled(n, ("TB", "GB", "MB", "kB"), " ") or f"{n} B"


def shape_text(shape: Sequence[int]) -> str:
    """``(384, 1536)`` → ``'384×1536'``.

    Example:
        >>> shape_text((384, 1536))
        '384×1536'
    """
    return "×".join(str(d) for d in shape) if shape else "scalar"


def percent(share: float) -> str:
    pct = 100 * share
    return "<0.1%" if 0 < pct < 0.1 else f"{pct:.3g}%"


def home_relative(path: str) -> str:
    """``path`` with the home directory written ``~`` (shorter, and the same on every machine)."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home) :]
    return path


def first_distinct(items: list[str], n: int = 3) -> str:
    """The first ``n`` distinct items, comma-separated, with a count of the rest."""
    distinct = list(dict.fromkeys(items))
    more = f" (+{len(distinct) - n})" if len(distinct) > n else ""
    return ", ".join(distinct[:n]) + more


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of ``rows`` (header from the first row's keys; None written empty).

    Example:
        >>> print(to_csv([{"a": 1, "b": None}]), end="")
        a,b
        1,
    """
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def fmt_number(v: Any) -> str:
    """Table text of a cell value: thousands separators for ints, 3-4 significant digits for
    floats, ``–`` for missing.

    Example:
        >>> fmt_number(147840), fmt_number(35.8187), fmt_number(None), fmt_number(True)
        ('147,840', '35.8', '–', 'yes')
    """
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e6:
            return f"{int(v)}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def fmt_range(row: dict[str, Any], fld: str) -> str:
    """``median (min–max)`` of one per-kind spectral statistic.

    Example:
        >>> fmt_range({"alpha_median": 2.5, "alpha_min": 2.0, "alpha_max": 3.25}, "alpha")
        '2.5 (2–3.25)'
    """
    med = row.get(f"{fld}_median")
    if med is None:
        return "–"
    lo, hi = row[f"{fld}_min"], row[f"{fld}_max"]
    if lo == hi:
        return fmt_number(med)
    return f"{fmt_number(med)} ({fmt_number(lo)}–{fmt_number(hi)})"


def ranges(values: Sequence[int]) -> str:
    """Sorted integers as compact ranges.

    Example:
        >>> ranges([0, 1, 2, 5, 7, 8]), ranges([])
        ('0–2, 5, 7–8', '')
    """
    spans: list[list[int]] = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in spans)
