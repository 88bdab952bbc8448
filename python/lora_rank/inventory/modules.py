"""Build the module inventory from header data alone: group tensors into runtime modules, name
them as transformers does after loading, classify them, and mark what PEFT's
``target_modules="all-linear"`` wraps.

The PEFT rule reproduced here (``peft.tuners.tuners_utils._maybe_include_all_linear_layers``
plus ``peft.utils.transformers_weight_conversion`` for MoE models):

- every ``nn.Linear`` / ``Conv1D`` module is a target, except the output embedding
  (``model.get_output_embeddings()``: ``lm_head``, ``embed_out``, ...);
- for model types in PEFT's MoE table (Mixtral-style), fused expert tensors
  (``experts.gate_up_proj``, ``experts.down_proj``) and the router weight (``gate.weight``)
  become ``target_parameters``.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..report import Module, Tensor
from . import architectures, kinds, naming
from .rules import peft_moe_table


class _Group:
    """Runtime parameters of one runtime module (or one fused parameter)."""

    __slots__ = (
        "bare", "dtype", "fused_param", "indices", "keys", "name", "num_experts", "params",
        "template",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        fused_param: Optional[str],
        bare: bool,
        template: Optional[_Template],
        indices: Sequence[str],
    ) -> None:
        self.name = name
        self.params: dict[str, tuple[int, ...]] = {}
        self.dtype = ""
        self.keys: list[str] = []
        self.fused_param = fused_param
        self.num_experts: Optional[int] = None
        #: A bare parameter or buffer (``final_logits_bias``), not a module's weight.
        self.bare = bare
        #: The pattern ``name`` was made from (None: not made from a pattern), and the
        #: indices filled into it.
        self.template = template
        self.indices = indices


class _Template:
    """A module name with its layer and expert indices as ``architectures.ABSTRACT_INDEX``:
    what every module of the pattern shares (name pieces, where its layer index is) is worked
    out once."""

    def __init__(self, text: str) -> None:
        self.pieces = text.split(architectures.ABSTRACT_INDEX)
        # The layer index: the value at one of the indices, or a number the name spells.
        probe = self.pieces[0] + "".join(f".{_PROBE + i}{p}" for i, p in enumerate(self.pieces[1:]))
        found = kinds.layer_index(probe)
        #: Which index is the layer index (None: no index is), else the layer the name spells.
        self.layer_slot = found - _PROBE if found is not None and found >= _PROBE else None
        self.fixed_layer = None if self.layer_slot is not None else found


#: Stands for the i-th index (as ``_PROBE + i``) while a template's layer index is located: a
#: number no checkpoint's layers reach.
_PROBE = 10**15


def _split_param(runtime: str) -> tuple[str, str]:
    module, _, leaf = runtime.rpartition(".")
    return module, leaf


@dataclass(frozen=True)
class _KeyPattern:
    """Where every checkpoint key of one pattern goes: the runtime name with its indices as
    ``architectures.ABSTRACT_INDEX``, the converter and source index, and (without converter)
    the module name pattern, the parameter's leaf name and whether it is a bare parameter."""

    runtime: str
    converter: Optional[naming.Transform]
    source_index: Optional[int]
    module: _Template
    leaf: str
    bare: bool
    #: The indices ``runtime`` keeps (None: all; a converter fusing experts drops one).
    kept: Optional[tuple[int, ...]] = None


def _key_pattern(
    by_pattern: Optional[Callable[[str, str, list[str]], Any]],
    abstract: str,
    key: str,
    indices: list[str],
) -> Optional[_KeyPattern]:
    """The :class:`_KeyPattern` of ``key`` (with pattern ``abstract`` and ``indices``), or None
    when its keys are renamed one by one."""
    hit = by_pattern(abstract, key, indices) if by_pattern is not None else None
    if hit is None:
        return None
    runtime, converter, source_index, kept = hit
    module, leaf, bare = _module_of(runtime)
    if converter is None and (
        kept is not None or module.count(architectures.ABSTRACT_INDEX) != len(indices)
    ):
        return None
    return _KeyPattern(runtime, converter, source_index, _Template(module), leaf, bare, kept)


def _module_of(runtime: str) -> tuple[str, str, bool]:
    """Module, leaf and bareness of a runtime parameter name: a leaf other than ``weight`` or
    ``bias`` is a bare parameter or buffer (``final_logits_bias``, ``position_ids``) with an
    entry of its own."""
    module, leaf = _split_param(runtime)
    if leaf in ("weight", "bias"):
        return module, leaf, False
    return runtime, "weight", True


def _name_kind(g: _Group, ndim: int) -> str:
    return "other" if g.bare else kinds.classify(g.name, ndim)


def _guess(
    g: _Group,
    ndim: int,
    weight: Sequence[int],
    conv1d: bool,
    fused_runtime: bool,
    moe_targets: Optional[dict[str, str]],
    vocab: Any,
) -> tuple[str, bool, Optional[str], Optional[int], Optional[int]]:
    """Kind, all-linear membership, PEFT parameter path and in/out features of a module the
    architecture table does not have, guessed from its name and shape."""
    kind = _name_kind(g, ndim)
    if kind == "lm_head" and vocab and ndim == 2 and vocab not in weight:
        kind = "other_linear"
    in_f = out_f = None
    if ndim == 2:
        out_f, in_f = (weight[1], weight[0]) if conv1d and kind != "embedding" else weight
    elif ndim == 3 and kind.startswith("moe_expert"):
        out_f, in_f = weight[1], weight[2]
    parameter = None
    # nn.Linear at run time: 2-D weights other than embeddings; routers of models whose
    # experts transformers fuses are custom modules holding a bare ``weight``.
    is_linear = ndim == 2 and kind not in kinds.NON_LINEAR_KINDS and "weight" in g.params
    if kind == "moe_router" and fused_runtime:
        is_linear = False
    is_target = is_linear and kind != "lm_head"
    if moe_targets is not None:
        if g.fused_param and _split_param(g.name)[1] in moe_targets.values():
            is_target, parameter = True, g.name
        elif kind == "moe_router" and "gate.weight" in moe_targets.values():
            is_target, parameter = True, f"{g.name}.weight"
    return kind, is_target, parameter, in_f, out_f


def _feature_axes(exact: architectures.ResolvedModule, ndim: int) -> Optional[tuple[int, int]]:
    """Axes of the out and in features in the stored shape of a module the table answers
    for: ``[out, in]`` for a Linear, ``[in, out]`` for a Conv1D, ``[experts, out, in]`` for
    fused experts; None when it has none (embeddings, norms, ...). A 2-D weight PEFT reaches
    through target_parameters (a custom router) gets LoRA factors shaped like a Linear's."""
    if ndim == 2 and (exact.is_linear or exact.parameter is not None):
        return (1, 0) if exact.is_conv1d else (0, 1)
    if ndim == 3 and exact.kind.startswith("moe_expert"):
        return (1, 2)
    return None


class _Records:
    """Makes the :class:`Module` of each group: the table's answer (looked up once per name
    pattern) or, for what the table lacks, a guess from the name and shape; remembers which
    modules were guessed and which 2-D weights have no known role."""

    def __init__(
        self,
        table: Optional[architectures.Table],
        model_type: Optional[str],
        rules: naming.Rules,
        fused_parts: dict[str, Any],
        vocab: Any,
    ) -> None:
        self.table = table
        self.out_embedding = table.output_embedding if table is not None else None
        self.conv1d = model_type in kinds.CONV1D_MODEL_TYPES
        moe_table = peft_moe_table(model_type)
        self.moe_targets = moe_table[0] if moe_table is not None else None
        self.fused_runtime = bool(rules.converters) and any("experts" in n for n in fused_parts)
        self.vocab = vocab
        self.guessed: list[str] = []
        self.unclassified: list[str] = []
        #: Table answers per module name pattern (those naming a target parameter are per
        #: module).
        self.resolved: dict[tuple[Any, ...], Optional[architectures.ResolvedModule]] = {}

    def exact(self, g: _Group, ndim: int) -> Optional[architectures.ResolvedModule]:
        """The table's answer for ``g`` (None: the table has none, or there is no table)."""
        table = self.table
        if table is None:
            return None
        params = g.params
        tpl = g.template
        leaves = () if g.fused_param else tuple(params)
        bare = g.bare or g.fused_param is not None
        key = (tpl, leaves, bare, g.name == self.out_embedding, ndim)
        if tpl is not None and key in self.resolved:
            return self.resolved[key]
        exact = architectures.resolve_module(
            table, g.name, list(leaves), functools.partial(_name_kind, g, ndim), bare=bare
        )
        if tpl is not None and (exact is None or exact.parameter is None):
            self.resolved[key] = exact
        return exact

    def record(self, g: _Group) -> Module:
        """The module of group ``g``."""
        params = g.params
        weight = params.get("weight") or params.get("bias") or ()
        ndim = len(weight)
        exact = self.exact(g, ndim)
        in_f = out_f = None
        if exact is not None:
            kind, is_target = exact.kind, exact.is_lora_target
            parameter, module_class = exact.parameter, exact.module_class
            axes = _feature_axes(exact, ndim)
            if axes is not None:
                out_f, in_f = weight[axes[0]], weight[axes[1]]
        else:
            module_class = None
            if not g.bare:
                # A bare tensor the class does not have (a stored non-persistent buffer such as
                # BERT's position_ids, dropped on load) has no class to guess and is never a
                # target.
                self.guessed.append(g.name)
            kind, is_target, parameter, in_f, out_f = _guess(
                g, ndim, weight, self.conv1d, self.fused_runtime, self.moe_targets, self.vocab
            )
            if kind == "other_linear" and kinds.match_rule(g.name) is None:
                self.unclassified.append(g.name)
        tpl = g.template
        if tpl is None:
            layer = kinds.layer_index(g.name)
        elif tpl.layer_slot is not None:
            layer = int(g.indices[tpl.layer_slot][1:])
        else:
            layer = tpl.fixed_layer
        return Module(
            g.name,
            kind,
            layer,
            in_f,
            out_f,
            weight if type(weight) is tuple else tuple(weight),
            g.dtype,
            math.prod(weight) if len(params) == 1 else sum(map(math.prod, params.values())),
            is_target,
            tuple(g.keys),
            parameter,
            g.num_experts,
            module_class,
        )


#: A name pattern whose modules the table does not answer alike (guessed, or a target
#: parameter per module): each goes through :meth:`_Records.record`.
_ONE_BY_ONE = object()


def _one_module_per_key(
    tensors: list[Tensor],
    pattern_of: list[int],
    all_indices: list[list[str]],
    plans: list[Optional[_KeyPattern]],
    ctx: _Records,
) -> Optional[list[Module]]:
    """The modules when every checkpoint key is a module of its own under the table (every
    pattern renamed as a whole, no converter, no two patterns naming the same module: a
    Llama-style checkpoint without biases), made per key with the table's answer looked up once
    per pattern; None when that is not so (then :func:`build_modules` groups keys first). The
    same modules as the grouping path, without its per-key groups."""
    if ctx.table is None or not plans:
        return None
    templates = set()
    for kp in plans:
        if kp is None or kp.converter is not None:
            return None
        templates.add(tuple(kp.module.pieces))
    if len(templates) != len(plans):
        return None
    out_embedding = ctx.out_embedding
    answers: dict[tuple[int, int, bool], Any] = {}
    fill_pieces = architectures.fill_pieces
    modules: list[Module] = []
    append = modules.append
    for t, number, indices in zip(tensors, pattern_of, all_indices):
        kp = plans[number]
        assert kp is not None
        tpl = kp.module
        pieces = tpl.pieces
        name = fill_pieces(pieces, indices)
        shape = t.shape if type(t.shape) is tuple else tuple(t.shape)
        ndim = len(shape)
        key = (number, ndim, name == out_embedding)
        answer = answers.get(key)
        if answer is None or answer is _ONE_BY_ONE:
            g = _Group(name, None, kp.bare, tpl, indices)
            g.params[kp.leaf] = shape
            g.keys.append(t.name)
            g.dtype = t.dtype
            if answer is None:
                exact = ctx.exact(g, ndim)
                if exact is None or exact.parameter is not None:
                    answers[key] = _ONE_BY_ONE
                    append(ctx.record(g))
                    continue
                answer = answers[key] = (
                    exact.kind,
                    exact.is_lora_target,
                    exact.module_class,
                    _feature_axes(exact, ndim),
                )
            else:
                append(ctx.record(g))
                continue
        kind, is_target, module_class, axes = answer
        in_f = out_f = None
        if axes is not None:
            out_f, in_f = shape[axes[0]], shape[axes[1]]
        slot = tpl.layer_slot
        append(
            Module(
                name,
                kind,
                tpl.fixed_layer if slot is None else int(indices[slot][1:]),
                in_f,
                out_f,
                shape,
                t.dtype,
                math.prod(shape),
                is_target,
                (t.name,),
                None,
                None,
                module_class,
            )
        )
    if len({m.name for m in modules}) != len(modules):
        return None
    return modules


def _group_keys(
    tensors: list[Tensor],
    pattern_of: list[int],
    all_indices: list[list[str]],
    plans: list[Optional[_KeyPattern]],
    rename: Callable[[str], naming.Renamed],
    warnings: list[str],
) -> tuple[dict[str, _Group], dict[str, Any]]:
    """The runtime modules (and fused parameters) the keys make, in the order first seen, and
    the converter inputs of each fused parameter; a warning added for a fused shape that cannot
    be computed."""
    groups: dict[str, _Group] = {}
    fused_parts: dict[str, dict[int, list[tuple[str, tuple[int, ...]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    fused_converter: dict[str, naming.Transform] = {}
    runtime_pieces: dict[int, list[str]] = {}  # pattern number -> its runtime name, split
    for t, number, indices in zip(tensors, pattern_of, all_indices):
        kp = plans[number]
        if kp is not None and kp.converter is None:
            module = architectures.fill_pieces(kp.module.pieces, indices)
            leaf = kp.leaf
            g = groups.get(module)
            if g is None:
                g = groups[module] = _Group(module, None, kp.bare, kp.module, indices)
        else:
            if kp is None:
                r = rename(t.name)
                runtime, converter, source_index = r.runtime, r.converter, r.source_index
            else:
                split = runtime_pieces.get(number)
                if split is None:
                    split = runtime_pieces[number] = kp.runtime.split(architectures.ABSTRACT_INDEX)
                slots = kp.kept
                if slots is not None and len(slots) == 1 and len(split) == 2:
                    runtime = split[0] + indices[slots[0]] + split[1]  # fused experts
                elif len(split) == 1:
                    runtime = split[0]
                else:
                    kept = indices if slots is None else [indices[i] for i in slots]
                    runtime = architectures.fill_pieces(split, kept)
                converter, source_index = kp.converter, kp.source_index
            if converter is not None and source_index is not None:
                fused_parts[runtime][source_index].append((t.name, t.shape))
                fused_converter[runtime] = converter
                g = groups.get(runtime)
                if g is None:
                    g = groups[runtime] = _Group(runtime, runtime, False, None, ())
                g.keys.append(t.name)
                g.dtype = g.dtype or t.dtype
                continue
            module, leaf, bare = _module_of(runtime)
            g = groups.get(module)
            if g is None:
                g = groups[module] = _Group(module, None, bare, None, indices)
        g.params[leaf] = t.shape
        g.keys.append(t.name)
        if leaf == "weight" or not g.dtype:
            g.dtype = t.dtype

    for runtime, parts in fused_parts.items():
        g = groups[runtime]
        shape = naming.fused_shape(fused_converter[runtime], parts)
        if shape is None:
            warnings.append(
                f"could not compute the fused shape of {runtime} from {len(g.keys)} tensors"
            )
            shape = parts[min(parts)][0][1]
        g.params["weight"] = shape
        g.num_experts = shape[0] if len(shape) == 3 else None
    return groups, fused_parts


def build_modules(
    tensors: list[Tensor], config: Optional[dict[str, Any]]
) -> tuple[list[Module], list[str], str]:
    """Modules (in natural name order, independent of sharding), warnings, and how they were
    resolved (``"table"``: the generated table of the checkpoint's class or of its model type's
    base class; ``"heuristic"``: names and shapes) for ``tensors`` of a model with ``config``.

    Example:
        >>> t = [Tensor("model.layers.0.self_attn.q_proj.weight", "F32", (8, 4), "m", 0, 128)]
        >>> mods, _, how = build_modules(t, {"model_type": "llama"})
        >>> (mods[0].kind, mods[0].in_features, mods[0].out_features, mods[0].is_lora_target)
        ('attn_q', 4, 8, True)
        >>> how, mods[0].module_class
        ('table', 'Linear')
    """
    config = config or {}
    model_type = config.get("model_type")
    archs = config.get("architectures") or [None]
    table, found_via = architectures.table_for_config(config)
    rules = table.rules if table is not None else naming.rules_for(model_type, archs[0])
    warnings: list[str] = []
    if rules.unsupported:
        warnings.append(
            f"transformers renames keys of model type {model_type!r} with rule types lora_rank "
            f"does not replay ({', '.join(sorted(set(rules.unsupported)))}); names may differ: "
            "use analyze(..., resolve='transformers') for exact names"
        )

    # Renaming runs once per key pattern (indices abstracted); each key only fills in its
    # indices. Patterns the table cannot rename as a whole are renamed key by key.
    abstracts, pattern_of, all_indices = architectures.abstract_keys([t.name for t in tensors])
    first: dict[int, int] = {}  # pattern number -> its first key (numbers in first-seen order)
    for i, number in enumerate(pattern_of):
        if number not in first:
            first[number] = i
    by_pattern = table.rename_pattern if table is not None else None
    plans = [
        _key_pattern(by_pattern, abstracts[number], tensors[i].name, all_indices[i])
        for number, i in first.items()
    ]
    vocab = config.get("vocab_size")
    ctx = _Records(table, model_type, rules, {}, vocab)
    modules = _one_module_per_key(tensors, pattern_of, all_indices, plans, ctx)
    if modules is None:
        rename = table.runtime_name if table is not None else lambda k: naming.rename_key(k, rules)
        groups, fused_parts = _group_keys(tensors, pattern_of, all_indices, plans, rename, warnings)
        ctx = _Records(table, model_type, rules, fused_parts, vocab)
        modules = [ctx.record(g) for g in groups.values()]
    modules = naming.natural_sorted(modules, lambda m: m.name)
    if table is None:
        what = (
            f"{archs[0] or model_type!r} is none of transformers "
            f"{architectures.versions().get('transformers', '?')}'s classes"
            if archs[0] or model_type
            else "no config.json names the architecture"
        )
        warnings.append(
            f"no architecture table ({what}): module classes and all-linear membership of all "
            f"{len(modules)} modules are guessed from names and shapes{naming.version_note()}; "
            "use analyze(..., resolve='transformers') for exact ones"
        )
    elif ctx.guessed:
        guessed = naming.natural_sorted(ctx.guessed, str)
        shown = ", ".join(guessed[:5]) + (" ..." if len(guessed) > 5 else "")
        warnings.append(
            f"{len(guessed)} module(s) not in the architecture table of {table.class_name} "
            f"(found via its {found_via}), classes guessed from names and shapes: {shown}"
            f"{naming.version_note()}; use analyze(..., resolve='transformers') for exact ones"
        )
    if ctx.unclassified:
        unclassified = ctx.unclassified
        shown = ", ".join(unclassified[:5]) + (" ..." if len(unclassified) > 5 else "")
        warnings.append(
            f"{len(unclassified)} 2-D weight(s) of no known role, counted as linear layers "
            f"(other_linear): {shown}. If they are not nn.Linear at run time, use "
            "analyze(..., resolve='transformers') for exact module classes"
        )
    return modules, warnings, "table" if table is not None else "heuristic"
