"""Summaries of a :class:`~lora_rank.report.Report` as rows, rich tables and CSV.

The same rows feed the terminal tables of ``lora-rank analyze``, its CSV output and the notebook
HTML of :mod:`lora_rank.html`, so the three always agree. ``rich`` is imported only by the
functions that draw.

Example:
    >>> import lora_rank
    >>> from lora_rank.tables import kind_rows
    >>> rows = kind_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
    >>> rows[0]["kind"], rows[0]["modules"], rows[0]["shapes"]
    ('attn_q', 6, '384×384')
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

from .report import KINDS, Module, Report, Spectrum

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import RenderableType
    from rich.table import Table

    from .peft_config import Recommendation, Target

#: Spectral statistics summarised per kind: (Spectrum field, column title).
SPECTRAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stable_rank", "stable rank"),
    ("energy_rank_90", "energy rank 90%"),
    ("alpha", "alpha"),
)

#: Spectral statistics listed per module with ``--per-module``.
MODULE_SPECTRAL_FIELDS: tuple[str, ...] = (
    "spectral_norm",
    "stable_rank",
    "energy_rank_90",
    "energy_rank_95",
    "energy_rank_99",
    "alpha",
)

_CONFIG_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_CONFIG_HIDDEN = ("hidden_size", "n_embd", "d_model", "dim")


def module_spectra(m: Module) -> list[Spectrum]:
    """The spectra of ``m``: its own, or one per expert for fused MoE expert tensors.

    Example:
        >>> module_spectra(Module("x", "attn_q", 0, 4, 4, (4, 4), "F32", 16, True))
        []
    """
    if m.spectrum is not None:
        return [m.spectrum]
    return list(m.expert_spectra or ())


def finite(values: Iterable[float]) -> list[float]:
    """The finite values of ``values`` (NaN and ±inf dropped).

    Example:
        >>> finite([1.0, float("nan"), 2.0])
        [1.0, 2.0]
    """
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def config_value(report: Report, keys: Sequence[str]) -> Optional[Any]:
    """First of ``keys`` present in the report's config (or its ``text_config``).

    Example:
        >>> import lora_rank
        >>> config_value(lora_rank.analyze(lora_rank.demo_checkpoint()), ["hidden_size"])
        384
    """
    config = report.config or {}
    for scope in (config, config.get("text_config") or {}):
        if not isinstance(scope, dict):
            continue
        for k in keys:
            if scope.get(k) is not None:
                return scope[k]
    return None


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


def _percent(share: float) -> str:
    pct = 100 * share
    return "<0.1%" if 0 < pct < 0.1 else f"{pct:.3g}%"


def _home_relative(path: str) -> str:
    """``path`` with the home directory written ``~`` (shorter, and the same on every machine)."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home) :]
    return path


def summary(report: Report) -> list[tuple[str, str]]:
    """The summary header as (label, value) pairs.

    Example:
        >>> import lora_rank
        >>> dict(summary(lora_rank.analyze(lora_rank.demo_checkpoint())))["hidden size"]
        '384'
    """
    layers = config_value(report, _CONFIG_LAYERS)
    if layers is None and report.num_layers:
        layers = report.num_layers
    hidden = config_value(report, _CONFIG_HIDDEN)
    arch = ", ".join(report.architectures)
    model = (report.model_type or "unknown") + (f" ({arch})" if arch else "")
    total_elems = sum(report.dtype_counts().values()) or 1
    dtypes = ", ".join(f"{d} {_percent(n / total_elems)}" for d, n in report.dtype_counts().items())
    targets = report.lora_targets
    rows = [
        ("model", model),
        ("layers", str(layers) if layers is not None else "unknown"),
        ("hidden size", str(hidden) if hidden is not None else "unknown"),
        ("parameters", f"{human(report.total_params)} ({report.total_params:,} stored elements)"),
        ("dtypes", dtypes or "none"),
        (
            "shards",
            f"{len(report.shards)} file(s), {human_bytes(report.total_bytes)} of tensor data",
        ),
        ("path", _home_relative(report.path)),
        (
            "LoRA targets",
            f"{len(targets)} modules ({human(sum(m.params for m in targets))} params) "
            'wrapped by target_modules="all-linear"',
        ),
    ]
    if report.spectral_settings is not None:
        shown = ("top_k", "method", "seed")
        settings = ", ".join(f"{k}={v}" for k, v in report.spectral_settings.items() if k in shown)
        rows.append(("spectra", settings or "computed"))
    return rows


def _stat(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _first_distinct(items: list[str], n: int = 3) -> str:
    """The first ``n`` distinct items, comma-separated, with a count of the rest."""
    distinct = list(dict.fromkeys(items))
    more = f" (+{len(distinct) - n})" if len(distinct) > n else ""
    return ", ".join(distinct[:n]) + more


def kind_rows(report: Report) -> list[dict[str, Any]]:
    """One row per module kind (in :data:`~lora_rank.report.KINDS` order): module count, LoRA
    targets, distinct shapes, parameters and, when spectra were computed, the median / min /
    max of each statistic in :data:`SPECTRAL_COLUMNS` (keys ``stable_rank_median`` etc.).

    Example:
        >>> import lora_rank
        >>> rows = kind_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> [(r["kind"], r["lora_targets"]) for r in rows][:3]
        [('attn_q', 6), ('attn_k', 6), ('attn_v', 6)]
    """
    by_kind: dict[str, list[Module]] = defaultdict(list)
    for m in report.modules:
        by_kind[m.kind].append(m)
    rows = []
    for kind in [k for k in KINDS if k in by_kind] + sorted(set(by_kind) - set(KINDS)):
        mods = by_kind[kind]
        row: dict[str, Any] = {
            "kind": kind,
            "names": _first_distinct([m.short_name for m in mods]),
            "modules": len(mods),
            "lora_targets": sum(m.is_lora_target for m in mods),
            "shapes": _first_distinct(
                [shape_text(m.shape) for m in sorted(mods, key=lambda m: -m.params)]
            ),
            "params": sum(m.params for m in mods),
        }
        if report.has_spectra:
            spectra = [s for m in mods for s in module_spectra(m)]
            for fld, _ in SPECTRAL_COLUMNS:
                stats = _stat(finite(getattr(s, fld) for s in spectra))
                for stat, v in stats.items():
                    row[f"{fld}_{stat}"] = v
        rows.append(row)
    return rows


def module_rows(report: Report) -> list[dict[str, Any]]:
    """One row per module: name, kind, layer, shape, dtype, params, LoRA target and, when
    spectra were computed, the statistics of :data:`MODULE_SPECTRAL_FIELDS` (the median over
    experts for fused MoE tensors).

    Example:
        >>> import lora_rank
        >>> rows = module_rows(lora_rank.analyze(lora_rank.demo_checkpoint()))
        >>> rows[6]["name"], rows[6]["shape"], rows[6]["lora_target"]
        ('encoder.layer.0.attention.output.dense', '384×384', True)
    """
    rows = []
    for m in report.modules:
        row: dict[str, Any] = {
            "name": m.name,
            "kind": m.kind,
            "layer": m.layer,
            "shape": shape_text(m.shape),
            "dtype": m.dtype,
            "params": m.params,
            "lora_target": m.is_lora_target,
        }
        if report.has_spectra:
            spectra = module_spectra(m)
            for fld in MODULE_SPECTRAL_FIELDS:
                vals = finite(getattr(s, fld) for s in spectra)
                row[fld] = statistics.median(vals) if vals else None
        rows.append(row)
    return rows


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
        >>> spectra_table(lora_rank.analyze(lora_rank.demo_checkpoint())).row_count
        0
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


def layer_prefix(m: Module) -> Optional[str]:
    """The name of the numbered layer ``m`` sits in (``encoder.layer.0``), or None.

    Example:
        >>> layer_prefix(Module("model.layers.3.mlp.up_proj", "mlp_up", 3, 4, 4, (4, 4), "F32",
        ...                     16, True))
        'model.layers.3'
    """
    if m.layer is None:
        return None
    head, sep, _ = f".{m.name}".partition(f".{m.layer}.")
    return f"{head}.{m.layer}".lstrip(".") if sep else None


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


def report_renderables(
    report: Report, per_module: bool = False, width: int = 120
) -> list[RenderableType]:
    """Everything ``lora-rank analyze`` prints for ``report``, in order.

    Example:
        >>> import lora_rank
        >>> len(report_renderables(lora_rank.analyze(lora_rank.demo_checkpoint())))
        3
    """
    if per_module:
        return [summary_table(report), "", module_table(report, width)]
    rows = kind_rows(report)
    out: list[RenderableType] = [summary_table(report), "", kind_table(report, rows)]
    if report.has_spectra:
        out += ["", spectra_table(report, rows)]
    return out


# -- recommendations -----------------------------------------------------------------------


def _rank_text(ranks: list[int]) -> str:
    lo, hi = min(ranks), max(ranks)
    if lo == hi:
        return str(lo)
    return f"{lo}–{hi} (median {fmt_number(float(statistics.median(ranks)))})"


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


def recommendation_kind_rows(rec: Recommendation) -> list[dict[str, Any]]:
    """The adapted modules of ``rec`` per kind: count, layers, rank range, alpha range and
    trainable parameters.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> [(r["kind"], r["modules"], r["rank"], r["params"]) for r in
        ...  recommendation_kind_rows(rec)]
        [('attn_q', 6, '8', 36864), ('attn_v', 6, '8', 36864)]
    """
    by_kind: dict[str, list[Target]] = defaultdict(list)
    for t in rec.targets:
        by_kind[t.kind].append(t)
    rows = []
    for kind in [k for k in KINDS if k in by_kind] + sorted(set(by_kind) - set(KINDS)):
        ts = by_kind[kind]
        alphas = sorted({fmt_number(float(t.alpha)) for t in ts}, key=float)
        rows.append(
            {
                "kind": kind,
                "names": _first_distinct([t.key.rsplit(".", 1)[-1] for t in ts]),
                "modules": len(ts),
                "layers": ranges(sorted({t.layer for t in ts if t.layer is not None})),
                "rank": _rank_text([t.rank for t in ts]),
                "alpha": alphas[0] if len(alphas) == 1 else f"{alphas[0]}–{alphas[-1]}",
                "params": sum(t.params for t in ts),
            }
        )
    return rows


def recommendation_summary(rec: Recommendation) -> list[tuple[str, str]]:
    """The head of ``lora-rank recommend``: strategy, the PEFT fields and the exact
    trainable-parameter count, as (label, value) pairs.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> dict(recommendation_summary(rec))["target_modules"]
        "['query', 'value']"
    """
    import json

    rows = [("strategy", rec.strategy + (f" (task: {rec.task})" if rec.task else ""))]
    kwargs = rec.peft_kwargs()
    for key in ("target_modules", "exclude_modules", "layers_to_transform", "target_parameters"):
        if kwargs.get(key):
            rows.append(
                (key, json.dumps(kwargs[key]) if key != "target_modules" else str(kwargs[key]))
            )
    rows.append(("r / lora_alpha", f"{rec.r} / {fmt_number(float(rec.lora_alpha))}"))
    for key in ("rank_pattern", "alpha_pattern"):
        if kwargs.get(key):
            rows.append((key, json.dumps(kwargs[key])))
    share = rec.trainable_params / rec.total_params if rec.total_params else math.nan
    trainable = f"{rec.trainable_params:,} ({_percent(share)} of {rec.total_params:,})"
    if rec.budget:
        trainable += f"; budget {rec.budget:,}, {_percent(rec.trainable_params / rec.budget)} used"
    rows.append(("trainable params", trainable))
    return rows


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


def recommendation_renderables(
    rec: Recommendation, per_module: bool = False, width: int = 120
) -> list[RenderableType]:
    """Everything ``lora-rank recommend`` prints for ``rec``, in order.

    Example:
        >>> import lora_rank
        >>> rec = lora_rank.analyze(lora_rank.demo_checkpoint()).recommend("attention-qv")
        >>> len(recommendation_renderables(rec))
        4
    """
    head = pairs_table(recommendation_summary(rec))
    body = target_table(rec, width) if per_module else recommendation_table(rec)
    out: list[RenderableType] = [head, "", body]
    if rec.rule:
        out.append(f"[dim]{rec.rule}[/]")
    return out
