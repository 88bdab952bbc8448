"""Checkpoint key → runtime name, with transformers' own rules shipped as data.

transformers 5 renames some checkpoint keys while loading, and fuses per-expert MoE weights
(``block_sparse_moe.experts.3.w1.weight``) into stacked parameters
(``mlp.experts.gate_up_proj``). The rules come from the shipped data
(:mod:`lora_rank.inventory.rules`), generated from transformers'
``get_checkpoint_conversion_mapping``; this module re-applies them exactly as
``transformers.core_model_loading.rename_source_key`` does: every matching renaming in order, then at most one converter.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from .. import _core
from .rules import conversion_mapping, versions

T = TypeVar("T")

#: Transform classes whose renaming is the generic one of ``WeightTransform``.
_GENERIC = {"WeightRenaming", "PrefixChange", "WeightConverter"}
#: Operations that do not change the shape of what they receive.
_SHAPE_PRESERVING = {"PermuteForRope", "Interleave"}


@dataclass(frozen=True)
class Transform:
    """One compiled transformers ``WeightTransform``."""

    cls: str
    regex: re.Pattern[str]
    source_patterns: tuple[str, ...]
    target_patterns: tuple[str, ...]
    operations: tuple[tuple[str, dict[str, Any]], ...]

    @property
    def is_converter(self) -> bool:
        return self.cls == "WeightConverter"

    def rename(self, key: str) -> tuple[str, Optional[int]]:
        """``(new_key, index of the source pattern that matched)``; the index is None when
        nothing matched (the key is returned unchanged)."""
        m = self.regex.search(key)
        if m is None:
            return key, None
        group = next(name for name, val in m.groupdict().items() if val is not None)
        replacement = self.target_patterns[0]
        if r"\1" in replacement:
            replacement = replacement.replace(r"\1", m.group(self.regex.groupindex[group] + 1))
        return key.replace(m.group(0), replacement, 1), int(group[1:])


@dataclass(frozen=True)
class Rules:
    """All rules of one model type."""

    renamings: tuple[Transform, ...]
    converters: tuple[Transform, ...]
    unsupported: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def installed_versions() -> dict[str, Optional[str]]:
    """Versions of transformers and PEFT installed here (None when absent): the first
    ``<name>-<version>.dist-info`` on ``sys.path``, as ``importlib.metadata`` finds it, read
    from the directory names (nothing is imported, not even ``importlib.metadata``, whose
    import costs more than the whole header read of a small checkpoint).

    Example:
        >>> import transformers
        >>> installed_versions()["transformers"] == transformers.__version__
        True
    """
    found: dict[str, Optional[str]] = {"transformers": None, "peft": None}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if not name.endswith(".dist-info"):
                continue
            dist, _, version = name[: -len(".dist-info")].partition("-")
            dist = dist.lower().replace("_", "-")
            if dist in found and found[dist] is None:
                found[dist] = version
        if all(found.values()):
            break
    return found


def version_note() -> str:
    """``""``, or a sentence saying that the installed transformers/PEFT differ from the ones
    the shipped rules and tables were generated with (for warnings about guessed modules).

    Example:
        >>> version_note() == "" or version_note().startswith(" (the shipped")
        True
    """
    shipped, installed = versions(), installed_versions()
    differ = [d for d, v in installed.items() if v is not None and v != shipped.get(d)]
    if not differ:
        return ""
    pairs = ", ".join(f"{d} {shipped.get(d)} vs {installed[d]} installed" for d in differ)
    return f" (the shipped rules and tables were generated with {pairs})"


def _compile(transforms: list[dict[str, Any]]) -> tuple[list[Transform], list[str]]:
    compiled, unsupported = [], []
    for t in transforms:
        if t["class"] not in _GENERIC:
            unsupported.append(t["class"])
            continue
        compiled.append(
            Transform(
                cls=t["class"],
                regex=re.compile(t["regex"]),
                source_patterns=tuple(t["source_patterns"]),
                target_patterns=tuple(t["target_patterns"]),
                operations=tuple((name, attrs) for name, attrs in t["operations"]),
            )
        )
    return compiled, unsupported


@functools.cache
def rules_for(model_type: Optional[str], architecture: Optional[str] = None) -> Rules:
    """Compiled rename rules for the root model, chosen as transformers'
    ``get_model_conversion_mapping`` does: the architecture class's mapping if it has one,
    else the model type's, then the global ``legacy`` renamings.

    Example:
        >>> len(rules_for("mixtral").converters)
        2
        >>> [t.target_patterns[0] for t in rules_for("gpt_neox", "GPTNeoXForCausalLM").renamings][0]
        'lm_head.'
    """
    transforms = conversion_mapping(architecture)
    if transforms is None:
        transforms = conversion_mapping(model_type) or []
    compiled, unsupported = _compile(transforms + (conversion_mapping("legacy") or []))
    return Rules(
        tuple(t for t in compiled if not t.is_converter),
        tuple(t for t in compiled if t.is_converter),
        tuple(unsupported),
    )


@dataclass(frozen=True)
class Renamed:
    """Where one checkpoint key goes at run time."""

    key: str
    runtime: str
    converter: Optional[Transform] = None
    #: Index of the converter source pattern the key matched (its position in a fusion).
    source_index: Optional[int] = None


def rename_key(key: str, rules: Rules) -> Renamed:
    """Apply ``rules`` to one checkpoint key, as transformers does on load.

    Example:
        >>> r = rename_key("model.layers.0.block_sparse_moe.experts.3.w1.weight",
        ...                rules_for("mixtral"))
        >>> r.runtime
        'model.layers.0.mlp.experts.gate_up_proj'
    """
    name = key
    for t in rules.renamings:
        name, _ = t.rename(name)
    for t in rules.converters:
        new, idx = t.rename(name)
        if idx is not None:
            return Renamed(key, new, t, idx)
    return Renamed(key, name)


def natural_sorted(items: Sequence[T], name: Callable[[T], str]) -> list[T]:
    """``items`` sorted by ``name(item)`` in natural order: names compared part by part (split
    at dots), parts of ASCII digits by value and before words, so ``layers.2`` comes before
    ``layers.10`` (stable; the order is computed in Rust, ``_core.natural_order``).

    Example:
        >>> natural_sorted(["h.10.x", "h.2.x", "h.norm"], str)
        ['h.2.x', 'h.10.x', 'h.norm']
    """
    return [items[i] for i in _core.natural_order([name(item) for item in items])]


def fused_shape(
    converter: Transform, parts: dict[int, list[tuple[str, tuple[int, ...]]]]
) -> Optional[tuple[int, ...]]:
    """Runtime shape of a converter's output from its inputs' shapes.

    ``parts`` maps a source-pattern index to its ``(key, shape)`` inputs. Returns None when an
    operation is not understood (the caller then warns and keeps the stored shapes).

    Example:
        >>> conv = rules_for("mixtral").converters[0]
        >>> fused_shape(conv, {0: [("e0.w1", (8, 4)), ("e1.w1", (8, 4))],
        ...                    1: [("e0.w3", (8, 4)), ("e1.w3", (8, 4))]})
        (2, 16, 4)
    """
    groups = []
    for i in sorted(parts):
        group = [shape for _, shape in parts[i]]
        if any(s != group[0] for s in group):  # equal shapes need no order
            group = [shape for _, shape in natural_sorted(parts[i], lambda p: p[0])]
        groups.append(group)
    shapes: list[tuple[int, ...]] = []
    merged = False
    for name, attrs in converter.operations:
        if name == "MergeModulelist":
            dim = attrs.get("dim", 0)
            out = []
            for g in groups:
                if any(s != g[0] for s in g):
                    return None
                s = list(g[0])
                s.insert(dim, len(g))
                out.append(tuple(s))
            shapes, merged = out, True
        elif name == "Concatenate":
            cur = shapes if merged else [g[0] for g in groups if len(g) == 1]
            if not cur or len(cur) != len(groups):
                return None
            dim = attrs.get("dim", 0)
            total = sum(s[dim] for s in cur)
            base = list(cur[0])
            base[dim] = total
            shapes, merged = [tuple(base)], True
        elif name == "Transpose":
            cur = shapes if merged else [g[0] for g in groups]
            d0, d1 = attrs.get("dim0", 0), attrs.get("dim1", 1)
            swapped = []
            for shape in cur:
                dims = list(shape)
                dims[d0], dims[d1] = dims[d1], dims[d0]
                swapped.append(tuple(dims))
            shapes, merged = swapped, True
        elif name in _SHAPE_PRESERVING:
            if not merged:
                shapes, merged = [g[0] for g in groups], True
        else:
            return None
    if not merged or len(shapes) != 1:
        return None
    return shapes[0]
