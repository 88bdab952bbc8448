"""Rich tables of a :class:`~lora_rank.report.Report` and a
:class:`~lora_rank.peft.recommendation.Recommendation`: what ``lora-rank analyze`` and
``lora-rank recommend`` print. The rows come from :mod:`lora_rank.render.rows`; ``rich`` is
imported only by the functions that draw.

Example:
    >>> import lora_rank
    >>> kind_table(lora_rank.analyze(lora_rank.demo_checkpoint())).row_count
    10
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from ..report import Report
from .format import fmt_number, fmt_range
from .rows import (
    SPECTRAL_COLUMNS,
    kind_rows,
    layer_prefix,
    module_rows,
    module_spectra,
    recommendation_kind_rows,
    recommendation_summary,
    summary,
)

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import RenderableType
    from rich.table import Table

    from ..peft.recommendation import Recommendation


def kind_table(report: Report, rows: Optional[list[dict[str, Any]]] = None) -> Table:
    """A rich table of :func:`kind_rows`: names, counts, shapes and parameters per kind.

    Example:
        >>> import lora_rank
        >>> kind_table(lora_rank.analyze(lora_rank.demo_checkpoint())).row_count
        10
    """
    rows = kind_rows(report) if rows is None else rows
    table = _table(
        "Modules by kind",
        [
            ("kind", "l"),
            ("names", "l"),
            ("modules", "r"),
            ("LoRA targets", "r"),
            ("shapes", "l"),
            ("params", "r"),
        ],
    )
    table.columns[1].overflow = table.columns[4].overflow = "fold"
    for r in rows:
        table.add_row(
            r["kind"],
            r["names"],
            fmt_number(r["modules"]),
            fmt_number(r["lora_targets"]) if r["lora_targets"] else "",
            r["shapes"],
            fmt_number(r["params"]),
        )
    return table


def spectra_table(report: Report, rows: Optional[list[dict[str, Any]]] = None) -> Table:
    """A rich table of the spectral columns of :func:`kind_rows`: ``median (min–max)`` over
    the matrices of each kind that has spectra.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True, progress=False)
        >>> table = spectra_table(report)
        >>> [c.header for c in table.columns][:3], table.row_count
        (['kind', 'matrices', 'stable rank'], 8)
    """
    rows = kind_rows(report) if rows is None else rows
    table = _table(
        "Spectra by kind: median (min–max) over the weight matrices",
        [("kind", "l"), ("matrices", "r")] + [(title, "r") for _, title in SPECTRAL_COLUMNS],
    )
    counts = {
        k: sum(len(module_spectra(m)) for m in report.modules if m.kind == k)
        for k in {r["kind"] for r in rows}
    }
    for r in rows:
        if r.get("stable_rank_median") is None:
            continue
        table.add_row(
            r["kind"],
            fmt_number(counts[r["kind"]]),
            *[fmt_range(r, fld) for fld, _ in SPECTRAL_COLUMNS],
        )
    return table


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """An empty rich table with ``columns`` given as (header, ``"l"``/``"r"`` alignment)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    for header, align in columns:
        table.add_column(header, justify="right" if align == "r" else "left")
    return table


#: Columns of the per-module terminal table (CSV and JSON carry every field).
_MODULE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "module", "l"),
    ("kind", "kind", "l"),
    ("shape", "shape", "l"),
    ("params", "params", "r"),
    ("lora_target", "LoRA", "l"),
)


_MODULE_SPECTRAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("spectral_norm", "σ₁", "r"),
    ("stable_rank", "stable rank", "r"),
    ("energy_rank_90", "energy rank 90%", "r"),
    ("alpha", "alpha", "r"),
)


def module_table(report: Report, width: int = 120) -> Table:
    """A rich table of :func:`module_rows`: every module, grouped under a heading per numbered
    layer (names shown relative to the layer), fitted to ``width`` columns: long names fold,
    the numbers never wrap.

    Example:
        >>> import lora_rank
        >>> module_table(lora_rank.analyze(lora_rank.demo_checkpoint())).row_count
        60
    """
    from rich import box

    columns = list(_MODULE_COLUMNS + (_MODULE_SPECTRAL_COLUMNS if report.has_spectra else ()))
    rows: list[list[str]] = []
    current: Optional[str] = None
    for m, r in zip(report.modules, module_rows(report)):
        prefix = layer_prefix(m)
        if prefix != current:
            if prefix is not None:
                rows.append([prefix])
            current = prefix
        name = ("  " + m.name[len(prefix) + 1 :]) if prefix else m.name
        rows.append([name, *[fmt_number(r[key]) for key, _, _ in columns[1:]]])
    widths = [
        max([len(row[i]) for row in rows if len(row) > i] + [max(map(len, title.split()))])
        for i, (_, title, _) in enumerate(columns)
    ]
    # Too narrow for every column: drop the least useful ones before squeezing names.
    for key in ("shape", "kind", "params"):
        if sum(widths[1:]) + 3 * len(columns) + 1 + 24 <= width:
            break
        i = [c[0] for c in columns].index(key)
        del columns[i], widths[i]
        for row in rows:
            if len(row) > i:
                del row[i]
    table = _table("Modules", [(title, align) for _, title, align in columns])
    table.box = box.SIMPLE_HEAD
    for col, w in zip(table.columns[1:], widths[1:]):
        col.width = w
    # Width of the box: content + padding 2 + separator 1 per column, + 1.
    others = sum(widths[1:]) + 3 * len(columns) + 1
    table.columns[0].width = max(16, min(widths[0], width - others))
    table.columns[0].overflow = "fold"
    for row in rows:
        if len(row) == 1:
            table.add_row(f"[bold]{row[0]}[/]")
        else:
            table.add_row(*row)
    return table


def summary_table(report: Report) -> Table:
    """The :func:`summary` pairs as a borderless two-column rich table.

    Example:
        >>> import lora_rank
        >>> summary_table(lora_rank.analyze(lora_rank.demo_checkpoint())).row_count
        8
    """
    return pairs_table(summary(report))


def pairs_table(pairs: Sequence[tuple[str, str]]) -> Table:
    """(label, value) pairs as a borderless two-column rich table; long values fold.

    Example:
        >>> pairs_table([("r", "8")]).row_count
        1
    """
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in pairs:
        table.add_row(label, value)
    return table


def renderables(
    shown: Union[Report, Recommendation], per_module: bool = False, width: int = 120
) -> list[RenderableType]:
    """Everything ``lora-rank analyze`` prints for a report, or ``lora-rank recommend`` for a
    recommendation, in order.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> shown = renderables(report)
        >>> len(shown), shown[2].title
        (3, 'Modules by kind')
        >>> [type(r).__name__ for r in renderables(report.recommend("attention-qv"), True)]
        ['Table', 'str', 'Table', 'str']
    """
    if not isinstance(shown, Report):
        head = pairs_table(recommendation_summary(shown))
        body = target_table(shown, width) if per_module else recommendation_table(shown)
        lines: list[RenderableType] = [head, "", body]
        return [*lines, f"[dim]{shown.rule}[/]"] if shown.rule else lines
    if per_module:
        return [summary_table(shown), "", module_table(shown, width)]
    rows = kind_rows(shown)
    out: list[RenderableType] = [summary_table(shown), "", kind_table(shown, rows)]
    if shown.has_spectra:
        out += ["", spectra_table(shown, rows)]
    return out


def recommendation_table(rec: Recommendation) -> Table:
    """A rich table of :func:`recommendation_kind_rows`.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> recommendation_table(rec).row_count  # attn_q, attn_v, total
        3
    """
    rows = recommendation_kind_rows(rec)
    columns = [
        ("kind", "l"),
        ("names", "l"),
        ("modules", "r"),
        ("layers", "l"),
        ("rank", "r"),
        ("alpha", "r"),
        ("trainable params", "r"),
    ]
    table = _table("LoRA targets and ranks", columns)
    for r in rows:
        table.add_row(
            r["kind"],
            r["names"],
            fmt_number(r["modules"]),
            r["layers"],
            r["rank"],
            r["alpha"],
            fmt_number(r["params"]),
        )
    table.add_section()
    table.add_row(
        "total", "", fmt_number(len(rec.targets)), "", "", "", f"[bold]{rec.trainable_params:,}[/]"
    )
    return table


def target_table(rec: Recommendation, width: int = 120) -> Table:
    """A rich table of every adapted module: name, kind, score, rank, alpha, params.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> target_table(rec).row_count
        12
    """
    table = _table(
        "LoRA targets",
        [
            ("module", "l"),
            ("kind", "l"),
            ("score", "r"),
            ("rank", "r"),
            ("alpha", "r"),
            ("params", "r"),
        ],
    )
    table.columns[0].overflow = "fold"
    for t in rec.targets:
        table.add_row(
            t.key,
            t.kind,
            fmt_number(t.score),
            str(t.rank),
            fmt_number(float(t.alpha)),
            fmt_number(t.params),
        )
    return table
