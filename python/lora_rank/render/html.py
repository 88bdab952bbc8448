"""Compact HTML tables for notebooks: what ``Report._repr_html_`` and
``Recommendation._repr_html_`` return. Every value is HTML-escaped. The rows come from
:mod:`lora_rank.render.rows`, so the notebook shows what the terminal shows.

Example:
    >>> import lora_rank
    >>> html = report_html(lora_rank.analyze(lora_rank.demo_checkpoint()))
    >>> html.startswith("<div") and "attn_q" in html
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any, Optional

from .format import fmt_number, fmt_range
from .rows import (
    SPECTRAL_COLUMNS,
    kind_rows,
    recommendation_kind_rows,
    recommendation_summary,
    summary,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..peft.recommendation import Recommendation
    from ..report import Report

_STYLE = "border-collapse:collapse;font-size:0.9em;margin:0.3em 0"
_CELL = "padding:1px 8px;text-align:{align}"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    caption: Optional[str] = None,
    numeric: Sequence[bool] = (),
) -> str:
    """An HTML table; cells are escaped, ``numeric[i]`` right-aligns column ``i``; no header
    row when ``headers`` is empty.

    Example:
        >>> "&lt;b&gt;</td>" in table(["name"], [["<b>"]])
        True
    """

    def cell(tag: str, i: int, value: Any) -> str:
        align = "right" if i < len(numeric) and numeric[i] else "left"
        return f'<{tag} style="{_CELL.format(align=align)}">{escape(str(value))}</{tag}>'

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    cap = f'<caption style="text-align:left"><b>{escape(caption)}</b></caption>' if caption else ""
    return f'<table style="{_STYLE}">{cap}{thead}<tbody>{body}</tbody></table>'


def report_html(report: Report) -> str:
    """The summary and the per-kind table of ``report`` (with spectral columns when computed).

    Example:
        >>> import lora_rank
        >>> "22,713,728" in report_html(lora_rank.analyze(lora_rank.demo_checkpoint()))
        True
    """
    head = table([], summary(report))
    headers = ["kind", "names", "modules", "LoRA targets", "shapes", "params"]
    numeric = [False, False, True, True, False, True]
    rows: list[list[str]] = []
    for r in kind_rows(report):
        row = [
            r["kind"],
            r["names"],
            fmt_number(r["modules"]),
            fmt_number(r["lora_targets"]),
            r["shapes"],
            fmt_number(r["params"]),
        ]
        if report.has_spectra:
            row += [fmt_range(r, fld) for fld, _ in SPECTRAL_COLUMNS]
        rows.append(row)
    if report.has_spectra:
        headers += [f"{title}: median (min–max)" for _, title in SPECTRAL_COLUMNS]
        numeric += [True] * len(SPECTRAL_COLUMNS)
    body = table(headers, rows, caption="Modules by kind", numeric=numeric)
    return f"<div>{head}{body}</div>"


def recommendation_html(rec: Recommendation) -> str:
    """The PEFT fields, the exact trainable-parameter count and the per-kind rank table of
    ``rec``.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> "73,728" in recommendation_html(rec)
        True
    """
    head = table([], recommendation_summary(rec))
    headers = ["kind", "names", "modules", "layers", "rank", "alpha", "trainable params"]
    keys = ["kind", "names", "modules", "layers", "rank", "alpha", "params"]
    rows = [[fmt_number(r[k]) for k in keys] for r in recommendation_kind_rows(rec)]
    rows.append(
        ["total", "", fmt_number(len(rec.targets)), "", "", "", fmt_number(rec.trainable_params)]
    )
    body = table(
        headers,
        rows,
        caption="LoRA targets and ranks",
        numeric=[False, False, True, False, True, True, True],
    )
    return f"<div>{head}{body}</div>"
