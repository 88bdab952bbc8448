"""Name patterns and natural order (computed in Rust, ``_core.name_patterns`` /
``_core.natural_order``) against the regular-expression definitions they replace."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from lora_rank.inventory import architectures, naming

#: The Python definition of an index before it moved to Rust: a dot, ASCII digits, then a dot
#: or the end.
_INDEX = re.compile(r"\.\d+(?=\.|\Z)", re.ASCII)


def _oracle_natural_key(name: str) -> list[Any]:
    return [
        (0, int(p), "") if p.isascii() and p.isdecimal() else (1, 0, p) for p in name.split(".")
    ]


# Parts like real parameter names: words, numbers with leading zeros, empty parts, mixed
# digits and letters, non-ASCII digits (words, not indices), huge numbers.
_PART = st.one_of(
    st.sampled_from(["model", "layers", "h", "mlp", "q_proj", "weight", "fc1", "3a", "", "١٢"]),
    st.integers(min_value=0, max_value=10**25).map(str),
    st.sampled_from(["0", "00", "007", "10", "9"]),
    st.text(alphabet="ab_.0123456789", max_size=6),
)
_NAME = st.lists(_PART, min_size=1, max_size=8).map(".".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(_NAME, min_size=1, max_size=30))
def test_name_patterns_match_the_regex_definition(names: list[str]) -> None:
    patterns, number, indices = architectures.abstract_keys(names)
    for name, n, got in zip(names, number, indices):
        assert got == _INDEX.findall(name)
        assert patterns[n] == _INDEX.sub(architectures.ABSTRACT_INDEX, name)
        assert architectures.fill(patterns[n], got) == name
        assert architectures.pattern(name) == _INDEX.sub(".#", name)
    assert len(set(patterns)) == len(patterns)  # each pattern numbered once


@settings(max_examples=400, deadline=None)
@given(st.lists(_NAME, max_size=40))
def test_natural_order_matches_the_sort_key_definition(names: list[str]) -> None:
    assert naming.natural_sorted(names, str) == sorted(names, key=_oracle_natural_key)


def test_natural_order_examples() -> None:
    names = ["h.10.x", "h.2.x", "h.norm", "h.2", "h.02.y", "g"]
    assert naming.natural_sorted(names, str) == ["g", "h.2", "h.2.x", "h.02.y", "h.10.x", "h.norm"]
