r"""What PEFT (0.21) does with a ``LoraConfig``, replayed on a :class:`~lora_rank.report.Report`
without torch: which names ``target_modules`` / ``exclude_modules`` / ``layers_to_transform`` /
``target_parameters`` select, which ``rank_pattern`` key applies to a module, how each module is
reached (an ``nn.Linear`` module, or a parameter through ``target_parameters``), what its adapter
costs, and the in-place config conversion PEFT applies to MoE model types (Mixtral-style) under
transformers 5.

The rules mirror ``peft.tuners.tuners_utils.check_target_module_exists``,
``BaseTuner._inject_parameters``, ``peft.utils.other.get_pattern_key``,
``peft.tuners.lora.layer.ParamWrapper`` and
``peft.utils.transformers_weight_conversion._convert_peft_config_moe``; the test suite checks them
against PEFT itself on every test architecture.

Example:
    >>> pattern_key(["q_proj", "0.self_attn.v_proj"], "model.layers.0.self_attn.v_proj")
    '0.self_attn.v_proj'
    >>> module_matches(["q_proj"], "model.layers.3.self_attn.q_proj")
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..errors import PeftEmulationError
from ..inventory.rules import peft_moe_table
from ..report import Module, Report

#: ``target_modules`` / ``exclude_modules``: a list (exact name or dot-suffix) or one regex.
NameSpec = Union[str, Sequence[str], AbstractSet[str], None]

#: PEFT's ``INCLUDE_LINEAR_LAYERS_SHORTHAND``.
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Reach:
    """How PEFT reaches one module of the report.

    ``key`` is the name PEFT matches ``rank_pattern`` against (the module name, or for a
    parameter the full parameter path); ``cost`` the trainable parameters per unit of rank:
    ``in + out`` for a ``Linear``/``Conv1D`` module or a 2-D parameter, ``experts · (in + out)``
    for a 3-D expert parameter (``ParamWrapper`` stacks one rank-``r`` adapter per expert).

    Example:
        >>> m = Module("model.layers.0.self_attn.q_proj", "attn_q", 0, 32, 16, (16, 32), "F32",
        ...            512, True)
        >>> reach(m, "llama")
        Reach(key='model.layers.0.self_attn.q_proj', is_parameter=False, cost=48)
    """

    key: str
    is_parameter: bool
    cost: int


@dataclass(frozen=True)
class MoeConversion:
    """PEFT's rewrite of ``target_modules`` for one MoE model type: transformers-4 module names
    (``w1``, ``gate``) → transformers-5 parameter names (``gate_up_proj``, ``gate.weight``), and
    which new names fuse several old ones (their ``r`` and ``lora_alpha`` are multiplied)."""

    old_to_new: dict[str, str]
    fused: dict[str, tuple[str, ...]]

    def old_name(self, target: str) -> Optional[str]:
        """The old name ``target`` stands for (PEFT: equal, or ending in ``.old``), if any."""
        for old in self.old_to_new:
            if target == old or target.endswith(f".{old}"):
                return old
        return None


def moe_conversion(model_type: Optional[str]) -> Optional[MoeConversion]:
    """PEFT's MoE conversion for ``model_type``, or None when PEFT converts nothing.

    Example:
        >>> moe_conversion("mixtral").fused
        {'gate_up_proj': ('w1', 'w3')}
        >>> moe_conversion("qwen2_moe") is None, moe_conversion("llama") is None
        (True, True)
    """
    table = peft_moe_table(model_type)
    return None if table is None else MoeConversion(*table)


def _has_bias(m: Module) -> bool:
    return m.params > math.prod(m.shape)


def reach(m: Module, model_type: Optional[str]) -> Optional[Reach]:
    """How PEFT can put a LoRA adapter on ``m``, or None when it cannot (embeddings, norms,
    modules PEFT's MoE conversion would remap, ...).

    Example:
        >>> m = Module("model.layers.0.mlp.experts.down_proj", "moe_expert_down", 0, 16, 32,
        ...            (4, 32, 16), "F32", 2048, False, num_experts=4)
        >>> reach(m, "qwen2_moe")
        Reach(key='model.layers.0.mlp.experts.down_proj', is_parameter=True, cost=192)
    """
    if m.in_features is None or m.out_features is None:
        return None
    experts = m.num_experts or 1
    cost = experts * (m.in_features + m.out_features)
    if m.parameter is not None:
        return Reach(m.parameter, True, cost)
    if len(m.shape) == 3 and m.kind.startswith("moe_expert"):
        return Reach(m.name, True, cost)
    if not m.is_lora_target:
        return None
    conv = moe_conversion(model_type)
    if conv is not None and conv.old_name(m.name) is not None:
        # PEFT rewrites any target_modules entry ending in this name to an expert parameter.
        return None
    return Reach(m.name, False, cost)


# -- name matching ---------------------------------------------------------------------------


def _in_list(names: Iterable[str], key: str) -> bool:
    """``key`` equals an entry or ends with ``.entry``: looked up per dot-suffix of ``key``
    (linear in the depth of ``key``, not in the length of the list)."""
    listed = names if isinstance(names, (set, frozenset)) else set(names)
    if key in listed:
        return True
    dot = key.find(".")
    while dot != -1:
        if key[dot + 1 :] in listed:
            return True
        dot = key.find(".", dot + 1)
    return False


def module_matches(target_modules: NameSpec, name: str) -> bool:
    r"""Whether ``target_modules`` selects the module called ``name`` (before
    ``layers_to_transform`` and exclusions): a string is a ``re.fullmatch`` regex, a list
    holds exact names or dot-suffixes.

    Example:
        >>> module_matches(r".*\.(q|v)_proj", "model.layers.0.self_attn.v_proj")
        True
        >>> module_matches(["attn.c_proj"], "transformer.h.0.mlp.c_proj")
        False
    """
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return _in_list(target_modules, name)


def excluded(exclude_modules: NameSpec, name: str) -> bool:
    """Whether ``exclude_modules`` removes ``name`` (same list/regex rules as targets).

    Example:
        >>> excluded(["pooler.dense"], "bert.pooler.dense"), excluded(None, "x")
        (True, False)
    """
    return bool(exclude_modules) and module_matches(exclude_modules, name)


def layer_of(name: str) -> Optional[int]:
    """The layer index PEFT's ``layers_to_transform`` reads from ``name`` (the first numbered
    component after at least two others; ``layers_pattern`` unset).

    Example:
        >>> layer_of("encoder.block.3.layer.1.DenseReluDense.wi"), layer_of("lm_head")
        (3, None)
    """
    m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    return int(m.group("idx")) if m else None


def parameter_matches(target_parameters: Optional[Collection[str]], key: str) -> bool:
    """Whether ``target_parameters`` selects the parameter ``key`` (exact or dot-suffix).

    Example:
        >>> parameter_matches(["gate.weight"], "model.layers.0.mlp.gate.weight")
        True
    """
    return bool(target_parameters) and _in_list(target_parameters or (), key)


def key_matches(pattern: str, name: str) -> bool:
    r"""Whether a ``rank_pattern`` / ``alpha_pattern`` key matches ``name``:
    ``re.match(rf"(.*\.)?({pattern})$", name)``.

    Example:
        >>> key_matches(r"0\.self_attn\.q_proj", "model.layers.10.self_attn.q_proj")
        False
    """
    return re.match(rf"(.*\.)?({pattern})$", name) is not None


def pattern_key(keys: Iterable[str], name: str) -> Optional[str]:
    """The first key (in order) matching ``name``, as ``peft.utils.other.get_pattern_key``
    picks it; None when no key matches (PEFT then uses ``r`` / ``lora_alpha``)."""
    for k in keys:
        if key_matches(k, name):
            return k
    return None


# -- what PEFT would do --------------------------------------------------------------------


@dataclass(frozen=True)
class Universe:
    """Names PEFT looks at in the model built from a report.

    ``modules``: every module name (targets, their containers, and conservatively also
    parameter paths); ``parameters``: every parameter path; ``all_linear``: what
    ``target_modules="all-linear"`` selects as modules; ``moe``: PEFT's MoE conversion.
    """

    modules: frozenset[str]
    parameters: frozenset[str]
    all_linear: frozenset[str]
    moe: Optional[MoeConversion]
    reach: Mapping[str, Reach]

    @classmethod
    def of(cls, report: Report) -> Universe:
        """The universe of ``report``'s model."""
        modules: set[str] = set()
        params: set[str] = set()
        for m in report.modules:
            parts = m.name.split(".")
            # A fused expert tensor's name is a parameter path: only its parents are modules.
            is_param_path = m.parameter == m.name or (
                len(m.shape) == 3 and m.kind.startswith("moe_expert")
            )
            modules.update(
                ".".join(parts[:i]) for i in range(1, len(parts) + (0 if is_param_path else 1))
            )
            if m.parameter is not None:
                params.add(m.parameter)
            if len(m.shape) == 3 or m.kind == "other":
                params.add(m.name)
            params.add(f"{m.name}.weight")
            if _has_bias(m):
                params.add(f"{m.name}.bias")
        reaches = {}
        for m in report.modules:
            r = reach(m, report.model_type)
            if r is not None:
                reaches[r.key] = r
        all_linear = frozenset(
            m.name for m in report.modules if m.is_lora_target and m.parameter is None
        )
        return cls(
            frozenset(modules),
            frozenset(params),
            all_linear,
            moe_conversion(report.model_type),
            reaches,
        )


def applied(config: Mapping[str, Any], universe: Universe) -> dict[str, tuple[int, float]]:
    """``{PEFT key: (rank, alpha)}`` of every module and parameter PEFT wraps when given the
    ``LoraConfig`` keyword arguments ``config`` (replays the MoE conversion, target matching,
    exclusions, ``layers_to_transform`` and pattern lookup).

    Raises:
        PeftEmulationError: for a config whose PEFT outcome lora_rank does not replay (a regex
            ``target_modules`` on a model type PEFT converts) or that PEFT rejects.
    """
    tm = config.get("target_modules")
    tp = set(config.get("target_parameters") or ())
    r = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    layers = config.get("layers_to_transform")
    if layers is not None and isinstance(tm, str):
        raise PeftEmulationError("layers_to_transform cannot be used with a regex target_modules")
    is_all_linear = isinstance(tm, str) and tm.lower() == ALL_LINEAR

    moe = universe.moe
    if moe is not None and tm is not None and not (isinstance(tm, str) and not is_all_linear):
        names = set(moe.old_to_new) if is_all_linear else set()
        # PEFT resolves "all-linear" to the leaf names of the linear modules first.
        listed = {n.rsplit(".", 1)[-1] for n in universe.all_linear} if is_all_linear else tm
        remaining = set()
        for t in listed:
            old = moe.old_name(t)
            if old is None:
                remaining.add(t)
            else:
                names.add(old)
        tp |= {moe.old_to_new[o] for o in names}
        for new, olds in moe.fused.items():
            present = names & set(olds)
            if 0 < len(present) < len(olds):
                raise PeftEmulationError(f"PEFT refuses {sorted(present)} without all of {olds}")
            if len(olds) > 1 and len(present) == len(olds):
                key = rf".*\.{re.escape(new)}"
                rank_pattern[key] = r * len(olds)
                alpha_pattern[key] = alpha * len(olds)
        tm = sorted(remaining)
    elif moe is not None and isinstance(tm, str):
        raise PeftEmulationError("regex target_modules on a model type PEFT converts")
    elif is_all_linear:
        tm = sorted(universe.all_linear)

    wrapped: list[str] = []
    exclude = config.get("exclude_modules")
    # Lists as sets once (the same matching rules, looked up per name suffix).
    tm = tm if tm is None or isinstance(tm, str) else frozenset(tm)
    exclude = exclude if exclude is None or isinstance(exclude, str) else frozenset(exclude)
    for name in universe.modules:
        if excluded(exclude, name) or not module_matches(tm, name):
            continue
        if layers is not None and not isinstance(tm, str):
            idx = layer_of(name)
            if idx is None or idx not in (layers if isinstance(layers, list) else [layers]):
                continue
        wrapped.append(name)
    listed_params = frozenset(tp)  # a set: looked up per name suffix, not converted per key
    wrapped += [p for p in universe.parameters if parameter_matches(listed_params, p)]
    out: dict[str, tuple[int, float]] = {}
    for name in wrapped:
        if name not in universe.reach:
            raise PeftEmulationError(f"PEFT would wrap {name}, which cannot carry an adapter")
        rk = pattern_key(rank_pattern, name)
        ak = pattern_key(alpha_pattern, name)
        out[name] = (
            int(rank_pattern[rk]) if rk is not None else r,
            float(alpha_pattern[ak]) if ak is not None else alpha,
        )
    return out


def trainable(wrapped: Mapping[str, tuple[int, float]], universe: Universe) -> int:
    """Trainable parameters PEFT creates for ``wrapped`` (from :func:`applied`): rank × cost,
    summed (``lora_A`` + ``lora_B``, no bias)."""
    return sum(rank * universe.reach[name].cost for name, (rank, _) in wrapped.items())
