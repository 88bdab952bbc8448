"""Which modules a recommendation may target: kind groups, the presets, task weights, and the
selection of candidate modules (``layers`` / ``exclude`` filters) shared by every strategy.

Presets are defined on module *kinds* (:data:`lora_rank.inventory.kinds.KINDS`), so each family gets its
own names: ``q_proj``/``v_proj`` on Llama, ``query``/``value`` on BERT, ``q``/``v`` on T5, the
fused ``c_attn`` / ``qkv_proj`` / ``query_key_value`` where q, k and v are one matrix, and the
fused MoE expert tensors (``experts.gate_up_proj``) through ``target_parameters``.

========================  ====================================================================
``"all-linear"``          exactly what PEFT's ``target_modules="all-linear"`` wraps (every
                          ``Linear``/``Conv1D`` but the output layer; for MoE types PEFT
                          converts, the expert tensors and router, with PEFT's doubled rank on
                          fused ``gate_up_proj``)
``"attention-qv"``        q and v (the original LoRA choice); the fused qkv where q and v
                          cannot be split (said in ``warnings``)
``"attention"``           q, k, v and o
``"attention-mlp"``       attention plus the MLP projections (gate, up, down; MoE experts)
``"attention8-mlp4"``     q, v at rank ``r`` (8) and the MLP projections at ``r // 2`` (4)
========================  ====================================================================

Task weights (used by ``strategy="spectral"`` and :func:`lora_rank.recommend.strategies.rank_targets`):
``None`` (general) weighs attention and MLP equally; ``"classification"`` targets attention
only (LoRA's q/v finding; the head should be trained in full); ``"knowledge"`` favours the MLP
(factual associations live in the MLP layers: Geva et al. 2021, Meng et al. 2022) at 1.0 vs
0.5 for attention; ``"style"`` favours attention (1.0) over the MLP (0.5). A linear layer of no
known role *inside a numbered layer* (ConvNeXt's ``pwconv1``/``pwconv2``, projections no kind
rule names) is one of the block's projections, attention or MLP unknown: it weighs the mean of
the two (:func:`module_weight`). Routers, shared-expert gates, classifier heads and linear layers
of no known role outside the layers (poolers, head transforms) weigh 0: listed, never chosen.

Example:
    >>> PRESETS["attention-qv"].kinds
    ('attn_q', 'attn_v')
    >>> task_weight(None, "mlp_up"), task_weight("classification", "mlp_up")
    (1.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from ..inventory.kinds import KINDS
from ..peft.rules import Reach, reach
from ..report import Module, Report

ATTENTION_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k.startswith("attn_"))
#: MLP projections, dense and MoE experts (routers and shared-expert gates are not).
MLP_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k.startswith(("mlp_", "moe_expert_")))

#: Task → (attention weight, MLP weight).
TASKS: dict[Optional[str], tuple[float, float]] = {
    None: (1.0, 1.0),
    "classification": (1.0, 0.0),
    "knowledge": (0.5, 1.0),
    "style": (1.0, 0.5),
}


def check_task(task: Optional[str]) -> None:
    """Raise :class:`~lora_rank.ConfigError` for an unknown task."""
    if task not in TASKS:
        known = ", ".join(repr(t) for t in TASKS if t)
        raise ConfigError(f"unknown task {task!r}; choose None, {known}")


def task_weight(task: Optional[str], kind: str) -> float:
    """How much ``task`` values adapting a module of ``kind`` (0: not a candidate)."""
    check_task(task)
    attention, mlp = TASKS[task]
    if kind in ATTENTION_KINDS:
        return attention
    return mlp if kind in MLP_KINDS else 0.0


def module_weight(task: Optional[str], m: Module) -> float:
    """How much ``task`` values adapting ``m``: :func:`task_weight` of its kind, and for a linear
    layer of no known role inside a numbered layer the mean of the task's attention and MLP
    weights (0: not a candidate).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> mods = {m.name: m for m in report.modules}
        >>> module_weight("knowledge", mods["encoder.layer.0.intermediate.dense"])
        1.0
        >>> module_weight(None, mods["pooler.dense"])  # other_linear outside the layers
        0.0
    """
    if m.kind == "other_linear" and m.layer is not None:
        check_task(task)
        return sum(TASKS[task]) / 2
    return task_weight(task, m.kind)


@dataclass(frozen=True)
class Preset:
    """A preset: the kinds it targets and each kind's rank as a fraction of ``r``."""

    name: str
    description: str
    kinds: tuple[str, ...]
    #: Kind → rank factor (rank = max(1, round(factor · r))); kinds absent have factor 1.
    factors: dict[str, float] = field(default_factory=dict)
    #: Kinds to fall back on when a model has none of ``kinds``' q/v (fused qkv).
    fused_fallback: bool = False

    def factor(self, kind: str) -> float:
        """Rank factor of ``kind``."""
        return self.factors.get(kind, 1.0)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("all-linear", "every linear layer PEFT's all-linear wraps", ()),
        Preset(
            "attention-qv",
            "attention q and v (the original LoRA choice)",
            ("attn_q", "attn_v"),
            fused_fallback=True,
        ),
        Preset("attention", "attention q, k, v and o", ATTENTION_KINDS),
        Preset("attention-mlp", "attention q, k, v, o and the MLP", ATTENTION_KINDS + MLP_KINDS),
        Preset(
            "attention8-mlp4",
            "attention q, v at rank r and the MLP at rank r/2",
            ("attn_q", "attn_v", *MLP_KINDS),
            factors=dict.fromkeys(MLP_KINDS, 0.5),
            fused_fallback=True,
        ),
    )
}


@dataclass(frozen=True)
class Candidate:
    """A module a recommendation may target, with how PEFT reaches it."""

    module: Module
    reach: Reach


@dataclass
class Selection:
    """Modules left after the ``layers`` / ``exclude`` filters, and notes about them."""

    candidates: list[Candidate]
    warnings: list[str]
    restricted: bool


def _excludes(m: Module, entry: str) -> bool:
    if entry in KINDS:
        return m.kind == entry
    return m.name == entry or m.name.endswith(f".{entry}") or m.parameter == entry


def select(
    report: Report,
    *,
    exclude: Optional[Iterable[str]] = None,
    layers: Optional[Iterable[int]] = None,
) -> Selection:
    """Every module PEFT can put an adapter on, minus ``exclude`` (kinds, runtime names or
    dot-suffixes of names) and outside ``layers`` (layer indices; modules outside numbered
    layers are then dropped too).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> s = select(report, exclude=["pooler.dense", "attn_k"], layers=[0])
        >>> sorted(c.module.kind for c in s.candidates)
        ['attn_o', 'attn_q', 'attn_v', 'mlp_down', 'mlp_up']
    """
    if isinstance(exclude, str) or isinstance(layers, (str, bytes)):
        raise ConfigError("exclude and layers take lists (exclude=['pooler.dense'], layers=[0, 1])")
    excl = list(exclude or ())
    want: Optional[set[int]] = None
    if layers is not None:
        want = set()
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ConfigError(f"layers must be integers, not {i!r}")
            want.add(i)
    warnings: list[str] = []
    unused = set(excl)
    out: list[Candidate] = []
    for m in report.modules:
        r = reach(m, report.model_type)
        if r is None:
            continue
        hit = [e for e in excl if _excludes(m, e)]
        unused -= set(hit)
        if hit or (want is not None and m.layer not in want):
            continue
        out.append(Candidate(m, r))
    if unused:
        warnings.append(f"exclude entries matched no target module: {', '.join(sorted(unused))}")
    if want is not None:
        missing = want - {c.module.layer for c in out}
        if missing:
            warnings.append(f"layers with no target module: {sorted(missing)}")
    return Selection(out, warnings, bool(excl) or want is not None)


def preset_candidates(
    sel: Selection, preset: Preset, report: Report
) -> tuple[list[Candidate], list[str]]:
    """The candidates ``preset`` targets, and warnings (fused q/k/v that cannot be split)."""
    if preset.name == "all-linear":
        return [c for c in sel.candidates if c.module.is_lora_target], []
    kinds = set(preset.kinds)
    warnings: list[str] = []
    present = {m.kind for m in report.modules}
    if preset.fused_fallback and "attn_qkv" in present:
        fused = sorted({m.short_name for m in report.modules if m.kind == "attn_qkv"})
        kinds.add("attn_qkv")
        warnings.append(
            f"q, k and v are one fused matrix ({', '.join(fused)}): q and v cannot be "
            "adapted alone, so the whole fused projection (k included) is targeted"
        )
    return [c for c in sel.candidates if c.module.kind in kinds], warnings
