"""Rich tables of updates: an adapter's modules (:class:`~lora_rank.deltas.AdapterReport`), a
comparison of two checkpoints (:class:`~lora_rank.deltas.Comparison`) and an extracted or
resized adapter. What ``lora-rank analyze ADAPTER``, ``compare``, ``extract`` and ``resize``
print; ``rich`` is imported only by the functions that draw.

Example:
    >>> import lora_rank, tempfile
    >>> from lora_rank.deltas.adapter import example_adapter
    >>> adapter_table(lora_rank.analyze(example_adapter(tempfile.mkdtemp()))).row_count
    1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from . import tables
from .format import fmt_number, percent

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from ..deltas.adapter import AdapterReport
    from ..deltas.compare import Comparison
    from ..deltas.extract import ExtractedAdapter

#: Singular values shown per update.
SHOWN = 3


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    """:func:`lora_rank.render.tables._table` whose first column (a module or tensor name) is
    never cut."""
    table = tables._table(title, columns)
    table.columns[0].no_wrap = True
    return table


def _change(share: Optional[float]) -> str:
    """A relative change; "from 0" where the base was all zeros."""
    if share is None:
        return ""
    return "from 0" if share == float("inf") else percent(share)


def _values(sv: Any) -> str:
    return ", ".join(fmt_number(s) for s in list(sv)[:SHOWN]) + (", …" if len(sv) > SHOWN else "")


def adapter_table(report: AdapterReport) -> Table:
    """Per adapted module: r, alpha, scaling, rank used (99% of ‖ΔW‖²), top singular values
    of ΔW = scaling·B·A, and ‖ΔW‖/‖W‖ when a base was given.

    Example:
        >>> import lora_rank, tempfile
        >>> from lora_rank.deltas.adapter import example_adapter
        >>> t = adapter_table(lora_rank.analyze(example_adapter(tempfile.mkdtemp())))
        >>> [c.header for c in t.columns][:4]
        ['module', 'r', 'alpha', 'scale']
    """
    with_base = report.base_path is not None
    cols = [("module", "l"), ("r", "r"), ("alpha", "r"), ("scale", "r"), ("used", "r")]
    cols += [("top σ of ΔW", "l")]
    if with_base:
        cols.append(("‖ΔW‖/‖W‖", "r"))
    table = _table(
        f"Adapter {report.path}: {len(report.adapted)} adapted modules "
        "(used: rank holding 99% of ‖ΔW‖²)",
        cols,
    )
    for m in report.adapted:
        row = [
            m.name + (" (DoRA)" if m.dora else ""),
            str(m.r),
            fmt_number(m.alpha),
            fmt_number(m.scaling),
            str(m.rank_used),
            _values(m.spectrum.singular_values),
        ]
        if with_base:
            row.append(_change(m.relative_change))
        table.add_row(*row)
    return table


def comparison_tables(c: Comparison, changed_only: bool = True) -> list[Table]:
    """The updates (per changed matrix: relative change, energy ranks and top σ of ΔW) and
    the other differences.

    Example:
        >>> import lora_rank
        >>> c = lora_rank.compare(lora_rank.demo_checkpoint(), lora_rank.demo_checkpoint(),
        ...                       spectral=False)
        >>> [t.row_count for t in comparison_tables(c)]
        [0]
    """
    shown = c.changed_modules if changed_only else c.modules
    cols = [("module", "l"), ("‖ΔW‖/‖W‖", "r")]
    spectral = c.settings is not None
    if spectral:
        cols += [("rank 90%", "r"), ("rank 99%", "r"), ("top σ of ΔW", "l")]
    unchanged = len(c.modules) - len(c.changed_modules)
    table = _table(
        f"Updates: {len(c.changed_modules)} of {len(c.modules)} matrices changed "
        f"({unchanged} unchanged); ranks: energy ranks of ΔW",
        cols,
    )
    for m in shown:
        name = m.finetuned_name + (f"[{m.expert}]" if m.expert is not None else "")
        row = [name, _change(m.relative_change)]
        if spectral and m.spectrum is not None:
            s = m.spectrum
            row += [str(s.energy_rank_90), str(s.energy_rank_99), _values(s.singular_values)]
        table.add_row(*row)
    tables = [table]
    if c.changes:
        other = _table(
            f"Other differences: {len(c.changes)}",
            [("tensor", "l"), ("change", "l"), ("detail", "l"), ("‖Δ‖/‖base‖", "r")],
        )
        for ch in c.changes:
            other.add_row(ch.name, ch.change, ch.detail, _change(ch.relative_change))
        tables.append(other)
    return tables


def extraction_table(a: ExtractedAdapter, title: Optional[str] = None) -> Table:
    """Per adapted module of an extracted or resized adapter: its rank.

    Example:
        >>> from lora_rank.deltas.extract import ExtractedAdapter
        >>> extraction_table(ExtractedAdapter(None, "uniform", {"q": 2}, 64, 64, 0.5, None)).row_count
        1
    """
    table = _table(
        title
        or (
            f"{len(a.ranks)} modules, {a.lora_params:,} LoRA parameters, "
            f"{percent(a.energy_kept)} of Σ‖ΔW‖² kept ({a.method})"
        ),
        [("module", "l"), ("rank", "r")],
    )
    for name, k in a.ranks.items():
        table.add_row(name, str(k))
    return table
