r"""Figures of a :class:`~lora_rank.report.Report`: a layer × module-kind heatmap of one spectral
statistic (or of the recommended LoRA rank), and the singular-value spectra of chosen modules.

Both return a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state, no
display needed); save it with :func:`figure_bytes` or ``fig.savefig``. matplotlib (the ``plot``
extra) is imported only here, inside the functions.

Example:
    >>> import lora_rank
    >>> from lora_rank.render.plot import heatmap
    >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True)
    >>> fig = heatmap(report, "stable_rank")
    >>> figure_bytes(fig, "png")[:4]
    b'\x89PNG'
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ConfigError, LoraRankError
from ..inventory.kinds import KINDS
from ..report import Module, Report
from .format import finite
from .rows import layer_prefix, module_spectra

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: Heatmap metrics: name → colour-bar label (short: it runs along the bar).
METRICS: dict[str, str] = {
    "stable_rank": r"stable rank  $\|W\|_F^2\,/\,\sigma_1^2$",
    "energy_rank_90": "energy rank 90%  (k)",
    "energy_rank_95": "energy rank 95%  (k)",
    "energy_rank_99": "energy rank 99%  (k)",
    "alpha": r"alpha  (tail exponent of $\sigma_i^2$)",
    "spectral_norm": r"spectral norm  $\sigma_1$",
    "rank": "LoRA rank  r",
}


def _energy(q: str) -> str:
    return (
        rf"smallest $k$ with $\sigma_1^2+\dots+\sigma_k^2 \geq {q}\,\|W\|_F^2$; "
        "higher: the weight's energy needs more directions"
    )


#: Under the heatmap title: what the number is and how to read it.
_READING: dict[str, str] = {
    "stable_rank": "higher: the weight's energy is spread over more directions",
    "energy_rank_90": _energy("0.9"),
    "energy_rank_95": _energy("0.95"),
    "energy_rank_99": _energy("0.99"),
    "alpha": r"Hill estimate of the power-law exponent of the top $\sigma_i^2$; "
    "lower: heavier tail (more learned structure)",
    "spectral_norm": "largest singular value of each weight",
    "rank": "per-module LoRA rank of the recommendation",
}

#: Metrics with integer values.
_INTEGER = frozenset({"energy_rank_90", "energy_rank_95", "energy_rank_99", "rank"})

#: Above this many modules a spectrum plot colours lines by layer instead of a legend.
_MAX_LEGEND = 10
#: Cell values are written in the heatmap when it has at most this many cells.
_MAX_ANNOTATED = 160


@dataclass(frozen=True)
class Grid:
    """Heatmap data: ``values[row][col]`` is the median of the metric over the modules of
    kind ``kinds[col]`` in layer ``rows[row]`` (NaN when there is none); ``counts`` is how many
    values each cell aggregates."""

    rows: list[str]
    kinds: list[str]
    values: list[list[float]]
    counts: list[list[int]]


def _layer_key(m: Module) -> Optional[tuple[str, int]]:
    """(stack, layer): the stack tells ``encoder.block.0`` from ``decoder.block.0``."""
    prefix = layer_prefix(m)
    if prefix is None or m.layer is None:
        return None
    return prefix.rsplit(".", 1)[0], m.layer


def _module_value(m: Module, metric: str, ranks: Optional[Mapping[str, int]]) -> list[float]:
    if metric == "rank":
        r = None if ranks is None else ranks.get(m.name)
        return [float(r)] if r else []
    return finite(getattr(s, metric) for s in module_spectra(m))


def grid(
    report: Report, metric: str = "stable_rank", ranks: Optional[Mapping[str, int]] = None
) -> Grid:
    """The layer × kind table behind :func:`heatmap`; modules outside numbered layers
    (embeddings, heads) are left out. ``ranks`` (module name → rank) is needed for
    ``metric="rank"``.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> g = grid(report, "rank", ranks={"encoder.layer.0.attention.self.query": 8})
        >>> g.rows[:2], g.kinds[:2], g.values[0][0], g.values[1][0]  # layer 1: not adapted
        (['0', '1'], ['attn_q', 'attn_k'], 8.0, nan)
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric == "rank" and ranks is None:
        raise ConfigError("metric 'rank' needs the ranks of a recommendation")
    cells: dict[tuple[tuple[str, int], str], list[float]] = {}
    stacks: dict[str, None] = {}
    for m in report.modules:
        key = _layer_key(m)
        if key is None:
            continue
        found = _module_value(m, metric, ranks)
        # For ranks, every LoRA candidate gets a cell: empty (grey) when not adapted.
        if found or (metric == "rank" and m.is_lora_target):
            stacks.setdefault(key[0])
            cells.setdefault((key, m.kind), []).extend(found)
    if not any(cells.values()):
        hint = " (run with spectral=True)" if metric != "rank" and not report.has_spectra else ""
        raise ConfigError(f"no module in numbered layers has a value of {metric!r}{hint}")
    # Encoder stacks before decoder stacks, otherwise in model order.
    order = sorted(stacks, key=lambda st: ("decoder" in st, list(stacks).index(st)))
    keys = sorted({k for k, _ in cells}, key=lambda k: (order.index(k[0]), k[1]))
    present = {kind for _, kind in cells}
    kinds = [k for k in KINDS if k in present] + sorted(present - set(KINDS))
    multi = len(stacks) > 1
    # Several stacks (encoder.block, decoder.block): label rows "encoder 0", "decoder 0".
    rows = [
        f"{(stack.split('.')[-2:] * 2)[0]} {layer}" if multi else str(layer)
        for stack, layer in keys
    ]
    values = [
        [
            statistics.median(cells[(k, kind)]) if cells.get((k, kind)) else math.nan
            for kind in kinds
        ]
        for k in keys
    ]
    counts = [[len(cells.get((k, kind), ())) for kind in kinds] for k in keys]
    return Grid(rows, kinds, values, counts)


def _title(report: Report, what: str) -> str:
    name = report.model_type or "checkpoint"
    arch = report.architectures[0] if report.architectures else ""
    return f"{name}{f' ({arch})' if arch else ''}: {what}"


def heatmap(
    report: Report,
    metric: str = "stable_rank",
    *,
    ranks: Optional[Mapping[str, int]] = None,
    subtitle: Optional[str] = None,
) -> Figure:
    """A layer × module-kind heatmap of ``metric`` (one of :data:`METRICS`), with a colour bar.

    Each cell is the median over the modules of that kind in that layer (several for MoE
    experts or encoder-decoder cross-attention). Layers are rows, top to bottom; many layers
    get thinned tick labels so they stay readable. ``metric="rank"`` plots ``ranks`` (runtime
    module name → LoRA rank, e.g. ``Recommendation.module_ranks()``) over every LoRA candidate,
    grey where a candidate is not adapted. ``subtitle`` replaces the line under the title that
    says how to read the colours.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True)
        >>> fig = heatmap(report, "stable_rank")
        >>> fig.axes[0].get_xlabel()
        'module kind'
    """
    import matplotlib as mpl
    import numpy as np
    from matplotlib.figure import Figure

    g = grid(report, metric, ranks)
    nrows, ncols = len(g.rows), len(g.kinds)
    row_in = 0.3 if nrows <= 24 else max(0.12, 7.0 / nrows)
    plot_h = row_in * nrows
    fig = Figure(
        figsize=(min(max(6.5, 3.2 + 0.8 * ncols), 16.0), 2.3 + plot_h), layout="constrained"
    )
    ax = fig.add_subplot()
    data = np.ma.masked_invalid(np.array(g.values, dtype=float))
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#e4e4e4")
    integer = metric in _INTEGER
    lo, hi = float(data.min()), float(data.max())
    if hi - lo < (1.0 if integer else 1e-9 * max(abs(hi), 1.0)):
        lo, hi = lo - 1, hi + 1  # one value everywhere: centre it in the colour bar
    image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
    rotate = ncols > 5
    ax.set_xticks(
        range(ncols), g.kinds, rotation=35 if rotate else 0, ha="right" if rotate else "center"
    )
    # Thin the layer labels so they stay at least ~10 pt apart.
    step = max(1, math.ceil(10 / (72 * row_in)))
    shown = list(range(0, nrows, step))
    ax.set_yticks(shown, [g.rows[i] for i in shown], fontsize=9 if nrows <= 24 else 8)
    missing = bool(np.ma.getmaskarray(data).any())
    grey = "not adapted" if metric == "rank" else "no such module in that layer"
    ax.set_xlabel("module kind" + (f"   (grey: {grey})" if missing else ""))
    ax.set_ylabel("layer")
    name = METRICS[metric].split("  ")[0]
    fig.suptitle(_title(report, name + " per layer and module kind"), fontsize=11)
    reading = _READING[metric]
    if metric.startswith("energy_rank") and any(
        not s.energy_rank_exact for m in report.modules for s in module_spectra(m)
    ):
        reading += f"\n(estimated where the rank lies beyond the top-{_top_k(report)} values)"
    ax.set_title(subtitle or reading, fontsize=8, color="0.35")
    cbar = fig.colorbar(image, ax=ax, pad=0.02, aspect=min(60.0, max(20.0, 5 * plot_h)))
    if integer:
        from matplotlib.ticker import MaxNLocator

        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
    multi = any(c > 1 for row in g.counts for c in row)
    cbar.set_label(METRICS[metric] + ("\nmedian over the matrices of each cell" if multi else ""))
    if nrows * ncols <= _MAX_ANNOTATED:
        _annotate(ax, g, image, integer)
    return fig


def _top_k(report: Report) -> int:
    return max(
        (len(s.singular_values) for m in report.modules for s in module_spectra(m)), default=0
    )


def _cell_text(v: float, integer: bool) -> str:
    if integer or v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _annotate(ax: Any, g: Grid, image: Any, integer: bool) -> None:
    """Write each cell's value, dark on light cells and light on dark ones."""
    for i, row in enumerate(g.values):
        for j, v in enumerate(row):
            if math.isnan(v):
                continue
            r, gr, b, _ = image.cmap(image.norm(v))
            light = 0.299 * r + 0.587 * gr + 0.114 * b > 0.5
            ax.text(
                j,
                i,
                _cell_text(v, integer),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if light else "white",
            )


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def _corrected(pattern: str, names: Sequence[str]) -> Optional[str]:
    """``pattern`` with its first dot-separated piece that is no piece of any module name
    replaced by the closest piece that is, when the result matches a module (``layers.0.*``
    on BERT: ``layer.0.*``); else None."""
    pieces = sorted({p for n in names for p in n.split(".")})
    parts = pattern.split(".")
    for i, part in enumerate(parts):
        if part in pieces or any(c in part for c in "*?["):
            continue
        for close in difflib.get_close_matches(part, pieces, n=3, cutoff=0.6):
            fixed = ".".join([*parts[:i], close, *parts[i + 1 :]])
            if any(_matches(n, fixed) for n in names):
                return fixed
        return None
    return None


def _no_match(report: Report, pattern: str) -> ConfigError:
    """The error for a pattern matching no module: a corrected pattern when one piece is a
    near miss, and a few modules that exist (the first of each kind PEFT can adapt)."""
    names = [m.name for m in report.modules]
    fixed = _corrected(pattern, names)
    shown: dict[str, str] = {}
    for m in report.lora_targets or report.modules:
        shown.setdefault(m.kind, m.name)
    examples = list(shown.values())[:5]
    more = f", ... ({len(names)} modules)" if len(names) > len(examples) else ""
    hint = f"did you mean {fixed!r}? " if fixed else ""
    return ConfigError(
        f"no module matches {pattern!r} ({hint}modules are named like {', '.join(examples)}"
        f"{more}; give a runtime name, a dot-suffix of one or a glob)"
    )


def select_modules(report: Report, patterns: Sequence[str]) -> list[Module]:
    """Modules matching any of ``patterns``: an exact runtime name, a dot-suffix of one (as PEFT
    matches: ``layer.0.attention.self.query``), or a shell glob of either (``layer.0.*``,
    ``*.query``). Every pattern must match at least one module; a pattern that matches none
    raises :class:`~lora_rank.ConfigError` naming a few modules that exist (and the pattern
    with a near-miss piece corrected, when that matches).

    Example:
        >>> import lora_rank
        >>> r = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> [m.name for m in select_modules(r, ["layer.5.attention.self.query"])]
        ['encoder.layer.5.attention.self.query']
        >>> select_modules(r, ["layers.0.*"])
        Traceback (most recent call last):
        ...
        lora_rank.errors.ConfigError: no module matches 'layers.0.*' (did you mean 'layer.0.*'? ...
    """
    chosen: dict[str, Module] = {}
    for pat in patterns:
        hits = [m for m in report.modules if _matches(m.name, pat)]
        if not hits:
            raise _no_match(report, pat)
        for m in hits:
            chosen.setdefault(m.name, m)
    return list(chosen.values())


def spectra(report: Report, modules: Sequence[str]) -> Figure:
    """Singular values σᵢ (log scale) against their index i for the modules matching
    ``modules`` (see :func:`select_modules`). Up to 10 modules get a legend; more are
    coloured by layer (colour bar) with one line style per module kind. A dot marks each
    module's 90% energy rank when it falls within the computed top-k.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint(), spectral=True)
        >>> fig = spectra(report, ["*.query"])
        >>> fig.axes[0].get_yscale()
        'log'
    """
    from matplotlib.figure import Figure

    mods = [m for m in select_modules(report, modules) if module_spectra(m)]
    if not mods:
        raise LoraRankError(
            "the chosen modules have no spectra"
            + ("" if report.has_spectra else " (run with spectral=True)")
        )
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    layers = [m.layer for m in mods if m.layer is not None]
    by_layer = len(mods) > _MAX_LEGEND and len(set(layers)) > 1
    if by_layer:
        import matplotlib as mpl
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator

        norm = mpl.colors.Normalize(min(layers), max(layers))
        cmap = mpl.colormaps["viridis"]
        # Colour says the layer; the line style says the kind.
        kinds = list(dict.fromkeys(m.kind for m in mods))
        styles = dict(zip(kinds, ["-", "--", ":", "-."] * len(kinds)))
    top_k, marked = 0, False
    for m in mods:
        # Fused MoE tensors: the first expert's spectrum stands for the tensor.
        s = module_spectra(m)[0]
        sv = s.singular_values
        top_k = max(top_k, len(sv))
        style: dict[str, Any] = {"label": m.name}
        if by_layer:
            style = {
                "color": cmap(norm(m.layer)) if m.layer is not None else "0.5",
                "linestyle": styles[m.kind],
            }
        (line,) = ax.plot(range(1, len(sv) + 1), sv, lw=1.2, **style)
        k = s.energy_rank_90
        if 1 <= k <= len(sv):
            ax.plot([k], [sv[k - 1]], "o", ms=4, color=line.get_color())
            marked = True
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("index i (singular values in descending order)")
    ax.set_ylabel(r"singular value $\sigma_i$ (log scale)")
    ax.set_xlim(0.5, top_k + 0.5)
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(_title(report, f"top-{top_k} singular values of {len(mods)} module(s)"))
    note = "dot: 90% energy rank" if marked else None
    if by_layer:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        unlayered = len(layers) < len(mods)
        cbar = fig.colorbar(
            sm, ax=ax, label="layer" + (" (grey: outside numbered layers)" if unlayered else "")
        )
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
        handles = [Line2D([], [], color="0.2", linestyle=styles[k], label=k) for k in kinds]
        ax.legend(handles=handles, fontsize=8, title=note, title_fontsize=8)
    else:
        ax.legend(fontsize=8, title=note, title_fontsize=8)
    return fig


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis with plain numbers (0.3, 2, 50) instead of 3×10⁻¹."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def figure_bytes(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    """``fig`` rendered as ``fmt`` (``"png"``, ``"svg"`` or ``"pdf"``).

    Example:
        >>> from matplotlib.figure import Figure
        >>> figure_bytes(Figure(figsize=(1, 1)), "png")[:4]
        b'\\x89PNG'
    """
    import io

    buf = io.BytesIO()
    fig.savefig(
        buf, format=fmt, dpi=dpi, metadata={"Software": "lora-rank"} if fmt == "png" else None
    )
    return buf.getvalue()
