r"""Compact name patterns that select exactly a given set of names: the shortest dot-suffix
lists (PEFT's list semantics) and regexes grouped by module template and layer (PEFT's
``rank_pattern`` key semantics, :func:`lora_rank.peft.rules.key_matches`).

A regex groups names that differ only in their layer index: the selected ``q_proj`` of layers
0, 3 and 7 become ``(?:0|3|7)\.self_attn\.q_proj``, and where every layer is selected just
``q_proj``; components are added on the left only as far as needed to stay exact. Every result
is checked against the whole universe of names before it is returned; None means no compact
pattern exists.

Example:
    >>> names = [f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("q_proj", "k_proj")]
    >>> suffix_list(names[:2] + names[2:4], names)
    ['0.self_attn.q_proj', '0.self_attn.k_proj', '1.self_attn.q_proj', '1.self_attn.k_proj']
    >>> regex(names[:2] + names[2:4], names)
    '(?:0|1)\\.self_attn\\.(?:q_proj|k_proj)'
    >>> regex([n for n in names if n.endswith("q_proj")], names)
    'q_proj'
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Optional

from .rules import key_matches


def _covered(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith(f".{suffix}")


def suffix_list(selected: Sequence[str], universe: Iterable[str]) -> Optional[list[str]]:
    """The shortest dot-suffixes (in first-use order) that, as a PEFT ``target_modules`` list,
    select exactly ``selected`` among ``universe``; None when impossible.

    Example:
        >>> suffix_list(["a.attn.c_proj"], ["a.attn.c_proj", "a.mlp.c_proj"])
        ['attn.c_proj']
    """
    sel = set(selected)
    index: dict[str, set[str]] = defaultdict(set)
    for name in sel.union(universe):
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            index[".".join(parts[-k:])].add(name)
    chosen: list[str] = []
    for name in selected:
        if any(_covered(name, s) for s in chosen):
            continue
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            s = ".".join(parts[-k:])
            if index[s] <= sel:
                chosen.append(s)
                break
        else:
            return None
    hit = set().union(*(index[s] for s in chosen)) if chosen else set()
    return chosen if hit == sel else None


def split_layer(name: str) -> tuple[tuple[str, ...], Optional[str], tuple[str, ...]]:
    """``(head, layer, tail)`` around the first numbered component after the first one.

    Example:
        >>> split_layer("encoder.block.2.layer.1.DenseReluDense.wi")
        (('encoder', 'block'), '2', ('layer', '1', 'DenseReluDense', 'wi'))
        >>> split_layer("lm_head")
        (('lm_head',), None, ())
    """
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i].isdigit():
            return tuple(parts[:i]), parts[i], tuple(parts[i + 1 :])
    return tuple(parts), None, ()


def template(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``name`` without its layer index: names of the same role in every layer share it.

    Example:
        >>> template("model.layers.7.mlp.up_proj") == template("model.layers.0.mlp.up_proj")
        True
    """
    head, _, tail = split_layer(name)
    return head, tail


def embed(rx: str) -> str:
    """``rx`` safe to embed in a longer regex: wrapped in ``(?:...)`` when it has a top-level
    ``|``.

    Example:
        >>> embed("q_proj|v_proj"), embed("(?:0|1)_q")
        ('(?:q_proj|v_proj)', '(?:0|1)_q')
    """
    depth, escaped = 0, False
    for ch in rx:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return f"(?:{rx})"
    return rx


def _alt(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else "(?:" + "|".join(items) + ")"


def _esc(parts: Sequence[str]) -> str:
    return r"\.".join(re.escape(p) for p in parts)


class _Matcher:
    """Hit sets of candidate pieces over a universe, indexed by last component."""

    def __init__(self, universe: set[str]) -> None:
        self.by_last: dict[str, list[str]] = defaultdict(list)
        for name in universe:
            self.by_last[name.rsplit(".", 1)[-1]].append(name)

    def hits(self, piece: str, last: str) -> set[str]:
        return {n for n in self.by_last.get(last, ()) if key_matches(piece, n)}


def _piece(
    head: tuple[str, ...],
    nums: list[str],
    tail: tuple[str, ...],
    sel: set[str],
    matcher: _Matcher,
) -> Optional[tuple[str, str]]:
    """``(lead, last)`` of the shortest exact piece for one template: ``lead + re.escape(last)``
    is the regex."""
    if not nums:  # a name outside numbered layers
        for k in range(1, len(head) + 1):
            lead = _esc(head[-k:-1]) + (r"\." if k > 1 else "")
            if matcher.hits(lead + re.escape(head[-1]), head[-1]) <= sel:
                return lead, head[-1]
        return None
    last = tail[-1] if tail else nums[0]
    for k in range(1, len(tail) + 1):  # the role alone, in every layer
        lead = _esc(tail[-k:-1]) + (r"\." if k > 1 else "")
        if matcher.hits(lead + re.escape(last), last) <= sel:
            return lead, last
    layer_alt = _alt(sorted(set(nums), key=int))
    for j in range(len(head) + 1):
        lead = _esc(head[len(head) - j :]) + (r"\." if j else "") + layer_alt
        if not tail:
            if matcher.hits(lead, last) <= sel:
                return lead, ""
            continue
        lead += r"\." + (_esc(tail[:-1]) + r"\." if len(tail) > 1 else "")
        if matcher.hits(lead + re.escape(last), last) <= sel:
            return lead, last
    return None


def regex(selected: Sequence[str], universe: Iterable[str]) -> Optional[str]:
    r"""One regex that, as a ``rank_pattern`` key (``(.*\.)?(KEY)$``), matches exactly
    ``selected`` among ``universe``; None when impossible. Pieces of the same lead are merged
    into one alternation of their last components.

    Example:
        >>> regex(["e.block.0.q", "d.block.1.q"], ["e.block.0.q", "e.block.1.q", "d.block.1.q"])
        '0\\.q|d\\.block\\.1\\.q'
    """
    sel = set(selected)
    uni = sel.union(universe)
    matcher = _Matcher(uni)
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for name in selected:
        head, num, tail = split_layer(name)
        groups.setdefault((head, tail), [])
        if num is not None:
            groups[(head, tail)].append(num)
    leads: dict[str, list[str]] = {}
    for (head, tail), nums in groups.items():
        piece = _piece(head, nums, tail, sel, matcher)
        if piece is None:
            return None
        lasts = leads.setdefault(piece[0], [])
        if piece[1] not in lasts:
            lasts.append(piece[1])
    out = "|".join(
        lead + (_alt([re.escape(x) for x in lasts]) if lasts != [""] else "")
        for lead, lasts in leads.items()
    )
    hit = {n for n in uni if key_matches(out, n)}
    return out if hit == sel else None
