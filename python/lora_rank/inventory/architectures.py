"""Architecture tables: per transformers model class, what every runtime parameter is.

``scripts/generate_architectures.py`` builds every model class of transformers' auto mappings
on the meta device, runs PEFT's ``target_modules="all-linear"`` on it and writes, per runtime
parameter pattern (layer and expert indices as ``#``), the owning module's class and category
(``linear``, ``conv1d``, ``embedding``, ``norm``, ``fused_expert``, ``buffer``, ``other``) and
whether PEFT wraps it, plus the rename mappings ``get_model_conversion_mapping`` applies to the
class (with their sub-model scopes). The data is one JSON file per model type under
``_data/architectures/``, read only when a checkpoint of that type is analysed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import _core
from . import naming
from .rules import DATA, conversion_mapping

#: Stands for a layer or expert index while a key is renamed once per pattern: a word
#: character (as digits are, for ``\w`` and ``\b``) that no rule spells.
_PLACEHOLDER = "\ua66e"
_DIGIT_RULE = re.compile(r"\\d|\\D|[0-9]")
#: What an index (``.12``) of a key becomes in its abstract pattern.
ABSTRACT_INDEX = "." + _PLACEHOLDER
#: One placeholder per index position (word characters no rule spells, without case), to
#: trace which indices a rename keeps.
_SLOT_PLACEHOLDERS = tuple(chr(0x4E00 + i) for i in range(8))

#: A pattern's rename (see :meth:`Table.rename_pattern`): runtime name with placeholders, the
#: converter, its source index and the indices kept (None: all, in order).
PatternRename = tuple[str, Optional[naming.Transform], Optional[int], Optional[tuple[int, ...]]]

#: Flag bits of a parameter record.
_WRAPPED, _TARGET_PARAMETER = 1, 2


def pattern(name: str) -> str:
    """A runtime name with its layer and expert indices abstracted.

    Example:
        >>> pattern("model.layers.12.mlp.experts.3.w1.weight")
        'model.layers.#.mlp.experts.#.w1.weight'
    """
    return _core.name_patterns([name], "#")[0][0]


def abstract_key(name: str) -> tuple[str, list[str]]:
    """``name`` with its layer and expert indices as :data:`ABSTRACT_INDEX`, and the indices.

    Example:
        >>> abstract, indices = abstract_key("h.3.mlp.experts.0.w1")
        >>> abstract == "h" + ABSTRACT_INDEX + ".mlp.experts" + ABSTRACT_INDEX + ".w1", indices
        (True, ['.3', '.0'])
    """
    patterns, _, indices = abstract_keys([name])
    return patterns[0], indices[0]


def abstract_keys(names: list[str]) -> tuple[list[str], list[int], list[list[str]]]:
    """:func:`abstract_key` of many names at once: the distinct patterns (in the order first
    seen), each name's pattern number and its indices.

    Example:
        >>> patterns, number, indices = abstract_keys(["h.0.w", "h.1.w"])
        >>> len(patterns), number, indices
        (1, [0, 0], [['.0'], ['.1']])
    """
    return _core.name_patterns(names, _PLACEHOLDER)


def fill(template: str, indices: list[str]) -> str:
    """``template`` (a name whose indices are :data:`ABSTRACT_INDEX`) with ``indices``
    (``[".3", ".0"]``, in order) put back.

    Example:
        >>> fill("a" + ABSTRACT_INDEX + ".b" + ABSTRACT_INDEX, [".3", ".0"])
        'a.3.b.0'
    """
    if not indices:
        return template
    return fill_pieces(template.split(ABSTRACT_INDEX), indices)


def fill_pieces(pieces: Sequence[str], indices: Sequence[str]) -> str:
    """:func:`fill` of a template already split at :data:`ABSTRACT_INDEX` (one more piece than
    indices).

    Example:
        >>> fill_pieces(["a", ".b", ""], [".3", ".0"]), fill_pieces(["lm_head"], [])
        ('a.3.b.0', 'lm_head')
    """
    if len(pieces) == 2:  # the common case: one layer index
        return pieces[0] + indices[0] + pieces[1]
    return pieces[0] + "".join(i + p for i, p in zip(indices, pieces[1:]))


def kept_indices(kept: Optional[tuple[int, ...]], indices: list[str]) -> list[str]:
    """The ``indices`` a pattern's runtime name keeps (``kept`` from
    :meth:`Table.rename_pattern`; None: all of them).

    Example:
        >>> kept_indices((0,), [".3", ".5"]), kept_indices(None, [".3"])
        (['.3'], ['.3'])
    """
    return indices if kept is None else [indices[i] for i in kept]


@dataclass(frozen=True)
class ParamRecord:
    """What one runtime parameter is, as transformers builds it and PEFT wraps it."""

    #: ``linear``, ``conv1d``, ``embedding``, ``norm``, ``fused_expert``, ``buffer`` or ``other``.
    category: str
    #: Class name of the module that owns the parameter.
    module_class: str
    #: PEFT's all-linear wraps the owning module (``target_modules``).
    wrapped: bool
    #: PEFT's all-linear wraps this parameter (``target_parameters``).
    target_parameter: bool


@dataclass(frozen=True)
class ScopedTransform(naming.Transform):
    """A transform that, like transformers' ``WeightTransform._scoped_match``, only applies under
    its sub-model's prefix (``scope`` None: anywhere)."""

    scope: Optional[str] = None
    base_model_prefix: str = ""

    def rename(self, key: str) -> tuple[str, Optional[int]]:
        if self.scope is None:
            return super().rename(key)
        scope = f"{self.scope}." if self.scope else ""
        base = f"{self.base_model_prefix}." if self.base_model_prefix else ""
        if key.startswith(base + scope):
            prefix = base + scope
        elif key.startswith(scope):
            prefix = scope
        else:
            return key, None
        new, idx = super().rename(key[len(prefix) :])
        return (prefix + new, idx) if idx is not None else (key, None)


@dataclass(frozen=True)
class Table:
    """The generated table of one model class."""

    class_name: str
    model_type: str
    base_model_prefix: str
    #: Runtime name of the output embedding (PEFT never wraps it), if the class has one.
    output_embedding: Optional[str]
    records: dict[str, ParamRecord]
    #: Patterns whose parameters differ between layers (not resolved from the table).
    mixed: frozenset[str]
    rules: naming.Rules
    #: PEFT's error when all-linear could not be applied to the class, else None.
    peft_error: Optional[str]
    #: Checkpoint names stay as stored (no base-model prefix added or stripped): a checkpoint
    #: resolved through its model type's base class may be of any head class.
    keep_prefix: bool = False
    #: Renames per key pattern (placeholders for indices); None: rename every key.
    _renames: Optional[dict[str, Optional[PatternRename]]] = field(
        default=None, compare=False, repr=False
    )
    _modules: dict[tuple[Any, ...], Optional[ResolvedModule]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def lookup(self, runtime_name: str) -> Optional[ParamRecord]:
        """The record of a runtime parameter name, or None when the class has no such pattern.

        Example:
            >>> t = table("LlamaForCausalLM")
            >>> t.lookup("model.layers.7.self_attn.q_proj.weight")
            ParamRecord(category='linear', module_class='Linear', wrapped=True, target_parameter=False)
            >>> t.lookup("lm_head.weight").wrapped
            False
        """
        found = self.records.get(pattern(runtime_name))
        prefix = self.base_model_prefix
        if found is None and self.keep_prefix and runtime_name.startswith(f"{prefix}."):
            found = self.records.get(pattern(runtime_name[len(prefix) + 1 :]))
        return found

    def runtime_name(self, key: str) -> naming.Renamed:
        """Where checkpoint ``key`` goes when transformers loads it into this class (renames,
        at most one converter, then the base-model prefix added or stripped as needed).

        Example:
            >>> table("ViTForImageClassification").runtime_name(
            ...     "vit.encoder.layer.0.attention.attention.query.weight").runtime
            'vit.layers.0.attention.q_proj.weight'
        """
        abstract, indices = abstract_key(key)
        hit = self.rename_pattern(abstract, key, indices)
        if hit is None:
            return self._rename(key)
        return naming.Renamed(key, fill(hit[0], kept_indices(hit[3], indices)), hit[1], hit[2])

    def rename_pattern(
        self, abstract: str, key: str, indices: list[str]
    ) -> Optional[PatternRename]:
        """:meth:`runtime_name` of every key of one pattern at once: ``abstract`` is ``key``
        with its ``indices`` replaced by :data:`ABSTRACT_INDEX` (see :func:`abstract_key`).
        Returns the runtime name with placeholders where the kept indices go (see :func:`fill`),
        the converter, its source index and which indices the runtime name keeps (None: all,
        in order; a converter fusing experts drops the expert index); None when keys of this
        pattern must be renamed one by one (rules that spell digits, or a rename whose indices
        cannot be traced). The answer is checked against ``key`` renamed on its own.

        Example:
            >>> t = table("LlamaForCausalLM")
            >>> abstract = "model.layers" + ABSTRACT_INDEX + ".mlp.up_proj.weight"
            >>> tpl, _, _, kept = t.rename_pattern(abstract, "model.layers.3.mlp.up_proj.weight", [".3"])
            >>> fill(tpl, [".7"]), kept
            ('model.layers.7.mlp.up_proj.weight', None)
            >>> t = table("DeepseekV3ForCausalLM")
            >>> key = "model.layers.4.mlp.experts.5.up_proj.weight"
            >>> abstract, indices = abstract_key(key)
            >>> tpl, conv, source, kept = t.rename_pattern(abstract, key, indices)
            >>> fill(tpl, kept_indices(kept, indices)), source, kept
            ('model.layers.4.mlp.experts.gate_up_proj', 1, (0,))
        """
        cache = self._renames
        if cache is None:
            return None
        if abstract in cache:
            return cache[abstract]
        r = self._rename(abstract)
        hit: Optional[PatternRename] = (r.runtime, r.converter, r.source_index, None)
        if r.runtime.count(_PLACEHOLDER) != len(indices):
            # An index dropped or added (fused experts): find which indices the runtime name
            # keeps by renaming the pattern with a distinct placeholder per index.
            kept = self._kept_slots(abstract, r, len(indices))
            hit = None if kept is None else (r.runtime, r.converter, r.source_index, kept)
        if hit is not None:
            exact = self._rename(key)
            if (
                fill(hit[0], kept_indices(hit[3], indices)) != exact.runtime
                or exact.converter is not hit[1]
                or exact.source_index != hit[2]
            ):
                if hit[3] is None:
                    object.__setattr__(self, "_renames", None)  # never expected; stay exact
                    return None
                hit = None  # this pattern's keys are renamed one by one
        cache[abstract] = hit
        return hit

    def _kept_slots(
        self, abstract: str, renamed: naming.Renamed, count: int
    ) -> Optional[tuple[int, ...]]:
        """Which of the ``count`` indices of ``abstract`` the runtime name ``renamed`` keeps, in
        the order it spells them; None when that cannot be traced (a placeholder repeated, or
        the distinct placeholders renamed differently from the single one)."""
        if count > len(_SLOT_PLACEHOLDERS):
            return None
        pieces = abstract.split(ABSTRACT_INDEX)
        probe = pieces[0] + "".join(
            f".{_SLOT_PLACEHOLDERS[i]}{p}" for i, p in enumerate(pieces[1:])
        )
        r = self._rename(probe)
        if r.converter is not renamed.converter or r.source_index != renamed.source_index:
            return None
        found = sorted(
            (r.runtime.find("." + _SLOT_PLACEHOLDERS[i]), i)
            for i in range(count)
            if "." + _SLOT_PLACEHOLDERS[i] in r.runtime
        )
        kept = tuple(i for _, i in found)
        template = r.runtime
        for i in kept:
            if template.count(_SLOT_PLACEHOLDERS[i]) != 1:
                return None
            template = template.replace("." + _SLOT_PLACEHOLDERS[i], ABSTRACT_INDEX)
        if template != renamed.runtime or any(c in template for c in _SLOT_PLACEHOLDERS):
            return None
        return kept

    def _rename(self, key: str) -> naming.Renamed:
        r = naming.rename_key(key, self.rules)
        prefix = self.base_model_prefix
        if not prefix or r.converter is not None or self.keep_prefix:
            return r
        name = r.runtime
        if name.startswith(prefix + ".") and self._has(name[len(prefix) + 1 :]):
            name = name[len(prefix) + 1 :]
        elif self._has(f"{prefix}.{name}"):
            name = f"{prefix}.{name}"
        return naming.Renamed(key, name, r.converter, r.source_index)

    def _has(self, name: str) -> bool:
        return pattern(name).replace("." + _PLACEHOLDER, ".#") in self.records


def _read(name: str) -> Any:
    path = DATA / "architectures" / name
    return json.loads(path.read_text()) if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, Any]:
    doc: dict[str, Any] = _read("_index.json") or {}
    return doc


@functools.lru_cache(maxsize=64)
def _model_type_file(model_type: str) -> dict[str, Any]:
    if "/" in model_type or model_type.startswith("."):
        return {}
    doc = _read(f"{model_type}.json")
    return doc["classes"] if isinstance(doc, dict) else {}


def versions() -> dict[str, str]:
    """transformers and PEFT versions the tables were generated from.

    Example:
        >>> sorted(versions())
        ['peft', 'transformers']
    """
    return dict(_index().get("versions", {}))


def failed_classes() -> dict[str, str]:
    """Classes of the auto mappings that could not be built, with the reason.

    Example:
        >>> all(isinstance(reason, str) for reason in failed_classes().values())
        True
    """
    return dict(_index().get("failed", {}))


def table_classes() -> list[str]:
    """Every model class that has a table.

    Example:
        >>> "ViTForImageClassification" in table_classes()
        True
    """
    return sorted(_index().get("classes", {}))


def _rules(conversions: list[list[Any]], base_model_prefix: str) -> naming.Rules:
    renamings: list[naming.Transform] = []
    converters: list[naming.Transform] = []
    unsupported: list[str] = []
    for ident, scope in [*conversions, ["legacy", None]]:
        transforms = conversion_mapping(ident) or []
        compiled, skipped = naming._compile(transforms)
        unsupported.extend(skipped)
        for t in compiled:
            scoped = ScopedTransform(
                t.cls, t.regex, t.source_patterns, t.target_patterns, t.operations,
                scope=scope, base_model_prefix=base_model_prefix,
            )  # fmt: skip
            (converters if t.is_converter else renamings).append(scoped)
    return naming.Rules(tuple(renamings), tuple(converters), tuple(unsupported))


@functools.lru_cache(maxsize=64)
def table(
    class_name: str, model_type: Optional[str] = None, keep_prefix: bool = False
) -> Optional[Table]:
    """The table of ``class_name`` (None when the class has none); ``model_type`` is where to
    look first (the class's file is found through the index otherwise); ``keep_prefix``: see
    :attr:`Table.keep_prefix`.

    Example:
        >>> table("DebertaV2Model").lookup("encoder.rel_embeddings.weight").category
        'embedding'
        >>> table("NoSuchModel") is None
        True
    """
    home = _index().get("classes", {}).get(class_name)
    entry = _model_type_file(model_type).get(class_name) if model_type else None
    if entry is None and home is not None:
        entry, model_type = _model_type_file(home).get(class_name), home
    if entry is None or model_type is None:
        return None
    kinds = _index().get("categories", [])
    records = {
        pat: ParamRecord(
            kinds[cat] if isinstance(cat, int) else cat,
            cls,
            bool(flags & _WRAPPED),
            bool(flags & _TARGET_PARAMETER),
        )
        for pat, cat, cls, flags in entry["params"]
    }
    prefix = entry.get("base_model_prefix") or ""
    rules = _rules(entry["conversions"], prefix)
    digit_free = not any(
        _DIGIT_RULE.search(p) or any(c in p for c in (_PLACEHOLDER, *_SLOT_PLACEHOLDERS))
        for t in rules.renamings + rules.converters
        for p in t.source_patterns
    )
    return Table(
        class_name=class_name,
        model_type=model_type,
        base_model_prefix=prefix,
        output_embedding=entry.get("output_embedding"),
        records=records,
        mixed=frozenset(entry.get("mixed", [])),
        rules=rules,
        peft_error=entry.get("peft_error"),
        keep_prefix=keep_prefix,
        _renames={} if digit_free else None,
    )


def table_for_config(config: Optional[dict[str, Any]]) -> tuple[Optional[Table], str]:
    """The table a checkpoint resolves through: its ``architectures[0]`` class, else its model
    type's base model class (checkpoint names then keep their prefix: the head class is not
    known); with how it was found (``"class"``, ``"base class"`` or ``""``).

    Example:
        >>> t, how = table_for_config({"model_type": "vit", "architectures": ["ViTModel"]})
        >>> t.class_name, how
        ('ViTModel', 'class')
        >>> table_for_config({"model_type": "vit"})[1]
        'base class'
    """
    config = config or {}
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if archs and isinstance(archs[0], str):
        found = table(archs[0], model_type)
        if found is not None:
            return found, "class"
    base = _index().get("base_classes", {}).get(model_type or "")
    if base is not None:
        found = table(base, model_type, keep_prefix=True)
        if found is not None:
            return found, "base class"
    return None, ""


@dataclass(frozen=True)
class ResolvedModule:
    """One runtime module (or bare / fused parameter) as its class's table describes it."""

    kind: str
    #: ``nn.Linear`` or transformers' ``Conv1D`` at run time.
    is_linear: bool
    #: Conv1D (weight stored ``[in, out]``).
    is_conv1d: bool
    is_lora_target: bool
    #: Full runtime parameter name when PEFT reaches it through ``target_parameters``.
    parameter: Optional[str]
    module_class: str


#: Name-based kinds that a module of a non-linear class cannot have.
_LINEAR_ONLY_KINDS_OK = ("moe_expert", "moe_router")


def resolve_module(
    t: Table, name: str, leaves: list[str], name_kind: Callable[[], str], *, bare: bool
) -> Optional[ResolvedModule]:
    """The table's answer for the module ``name`` holding parameters ``leaves`` (``weight``,
    ``bias``; for a bare or fused parameter, ``name`` is the parameter itself); None when the
    table has no record for it (the caller guesses, and says so). ``name_kind`` is the kind the
    name rules give (called once per name pattern): it stays the label unless the class
    contradicts it.

    Example:
        >>> t = table("DebertaV2Model")
        >>> r = resolve_module(t, "encoder.rel_embeddings", ["weight"], lambda: "other_linear",
        ...                    bare=False)
        >>> r.kind, r.is_linear, r.is_lora_target
        ('embedding', False, False)
    """
    key = (pattern(name), tuple(leaves), bare, name == t.output_embedding)
    if key in t._modules:
        found = t._modules[key]
        if found is None or found.parameter is None:
            return found
    found = _resolve(t, name, leaves, name_kind(), bare)
    t._modules[key] = found
    return found


def _resolve(
    t: Table, name: str, leaves: list[str], name_kind: str, bare: bool
) -> Optional[ResolvedModule]:
    full = [name] if bare or not leaves else [f"{name}.{leaf}" for leaf in leaves]
    if any(pattern(n) in t.mixed for n in full):
        return None
    records = [t.lookup(n) for n in full]
    main = records[0] if records else None
    if main is None and len(records) > 1:
        main = next((r for r in records if r is not None), None)
    if main is None:
        return None
    # A bias the defaults leave out (attention_bias=True) belongs to the module its weight names.
    records = [main if r is None else r for r in records]
    category = main.category
    linear = category in ("linear", "conv1d")
    kind = name_kind
    if category == "embedding":
        kind = "embedding"
    elif category == "norm":
        kind = "norm"
    elif linear:
        if name == t.output_embedding:
            kind = "lm_head"
        elif kind in ("embedding", "norm", "other", "moe_router", "lm_head"):
            kind = "other_linear"
    elif category == "fused_expert":
        kind = kind if kind.startswith("moe_expert") else "other"
    elif not kind.startswith(_LINEAR_ONLY_KINDS_OK):
        kind = "other"
    wrapped = any(r is not None and r.wrapped for r in records)
    parameter = next(
        (n for n, r in zip(full, records) if r is not None and r.target_parameter), None
    )
    return ResolvedModule(
        kind=kind,
        is_linear=linear,
        is_conv1d=category == "conv1d",
        is_lora_target=wrapped or parameter is not None,
        parameter=parameter,
        module_class=main.module_class,
    )
