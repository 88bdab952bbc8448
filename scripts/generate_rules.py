"""Generate ``python/lora_rank/_data/transformers_rules.json`` from the installed transformers and PEFT.

lora_rank must name modules the way transformers names them after loading, without importing
transformers at run time (that import alone takes seconds and loads torch). So the key-renaming
rules are not hand-written: this script serialises transformers' own
``get_checkpoint_conversion_mapping`` for every model type, plus the MoE tables PEFT uses to turn
``target_modules="all-linear"`` into ``target_parameters``. ``tests/test_rules_data.py``
regenerates the data and fails when its *content* drifts from the installed libraries (the
versions it was generated with are recorded in the file, not compared: a new transformers
release that leaves the rules alone changes nothing).

Usage::

    python scripts/generate_rules.py            # rewrite the shipped file
    python scripts/generate_rules.py --check    # exit 1 and print what changed, if anything

To see whether the newest transformers/PEFT change the rules, run ``--check`` in a virtualenv
with them installed (README, "Development").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "python/lora_rank/_data/transformers_rules.json"


def _op(op: Any) -> list[Any]:
    attrs = {k: v for k, v in vars(op).items() if isinstance(v, (int, str, bool, type(None)))}
    return [type(op).__name__, attrs]


def _transform(w: Any) -> dict[str, Any]:
    return {
        "class": type(w).__name__,
        "regex": w.compiled_sources.pattern,
        "source_patterns": list(w.source_patterns),
        "target_patterns": list(w.target_patterns),
        "operations": [_op(o) for o in getattr(w, "operations", None) or []],
    }


def generate() -> dict[str, Any]:
    """Build the rules document from the installed libraries."""
    import peft
    import transformers
    from peft.utils import transformers_weight_conversion as pwc
    from transformers import conversion_mapping as cm

    registry = cm._build_checkpoint_conversion_mapping()
    names = sorted(set(registry) | set(cm._MODEL_TO_CONVERSION_PATTERN))
    mappings: dict[str, list[dict[str, Any]]] = {}
    model_types: dict[str, str] = {}
    by_text: dict[str, str] = {}
    for name in names:
        transforms = cm.get_checkpoint_conversion_mapping(name)
        if not transforms:
            continue
        doc = [_transform(w) for w in transforms]
        text = json.dumps(doc, sort_keys=True)
        canonical = by_text.setdefault(text, name)
        if canonical == name:
            mappings[name] = doc
        model_types[name] = canonical
    return {
        "generated_by": "scripts/generate_rules.py",
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__},
        "model_types": model_types,
        "mappings": mappings,
        "peft_moe": {
            "model_to_pattern": dict(sorted(pwc._MODEL_TO_CONVERSION_PATTERN.items())),
            "target_module_mapping": pwc._MOE_TARGET_MODULE_MAPPING,
            "fused_targets": {
                k: {n: list(v) for n, v in d.items()} for k, d in pwc._MOE_FUSED_TARGETS.items()
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    """Stable text form of the whole document (what is written)."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def content(doc: dict[str, Any]) -> dict[str, Any]:
    """The rules themselves: the document without the versions it was generated with."""
    return {k: v for k, v in doc.items() if k != "versions"}


def _rules_of(doc: dict[str, Any]) -> dict[str, list[Any]]:
    """Model type or class → its list of transforms (aliases resolved)."""
    return {name: doc["mappings"][canonical] for name, canonical in doc["model_types"].items()}


def _describe(transform: dict[str, Any]) -> str:
    sources = " | ".join(transform["source_patterns"])
    targets = " | ".join(transform["target_patterns"])
    return f"{transform['class']}: {sources} -> {targets}"


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable lines saying which model types gained, lost or changed rename rules, and which
    PEFT MoE tables changed; empty when the content is the same.

    Example:
        >>> t = {"class": "WeightRenaming", "source_patterns": ["a"], "target_patterns": ["b"]}
        >>> old = {"model_types": {"x": "x"}, "mappings": {"x": [t]}, "peft_moe": {}}
        >>> new = {"model_types": {"x": "x", "y": "x"}, "mappings": {"x": [t]}, "peft_moe": {}}
        >>> describe_changes(old, new)
        ['+ y: 1 rule(s), first WeightRenaming: a -> b']
    """
    lines: list[str] = []
    before, after = _rules_of(old), _rules_of(new)
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        if a is None and b is not None:
            lines.append(f"+ {name}: {len(b)} rule(s), first {_describe(b[0])}")
        elif b is None and a is not None:
            lines.append(f"- {name}: its {len(a)} rule(s) are gone")
        elif a is not None and b is not None:
            lines.append(f"~ {name}:")
            gone = [t for t in a if t not in b]
            added = [t for t in b if t not in a]
            lines += [f"    - {_describe(t)}" for t in gone]
            lines += [f"    + {_describe(t)}" for t in added]
            if not gone and not added:
                lines.append("    same rules in another order (order decides which rule wins)")
    for table in sorted(set(old.get("peft_moe", {})) | set(new.get("peft_moe", {}))):
        a_t, b_t = old.get("peft_moe", {}).get(table, {}), new.get("peft_moe", {}).get(table, {})
        for key in sorted(set(a_t) | set(b_t)):
            if a_t.get(key) != b_t.get(key):
                lines.append(f"~ peft_moe.{table}[{key!r}]: {a_t.get(key)!r} -> {b_t.get(key)!r}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the shipped file instead of writing"
    )
    args = parser.parse_args()
    doc = generate()
    text = render(doc)
    if args.check:
        shipped = json.loads(OUT.read_text()) if OUT.exists() else {"model_types": {}}
        shipped.setdefault("mappings", {})
        changes = describe_changes(content(shipped), content(doc))
        was, now = shipped.get("versions", {}), doc["versions"]
        print(f"shipped rules generated with {was}; installed {now}")
        if not changes:
            print("up to date: the installed libraries give the same rules")
            return 0
        print(f"{len(changes)} change(s); run python scripts/generate_rules.py to take them:")
        print("\n".join(changes))
        return 1
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
