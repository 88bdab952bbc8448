"""Generate ``python/lora_rank/_data/transformers_rules.json`` from the installed transformers and PEFT.

lora_rank must name modules the way transformers names them after loading, without importing
transformers at run time (that import alone takes seconds and loads torch). So the key-renaming
rules are not hand-written: this script serialises transformers' own
``get_checkpoint_conversion_mapping`` for every model type, plus the MoE tables PEFT uses to turn
``target_modules="all-linear"`` into ``target_parameters``. ``tests/test_rules_data.py``
regenerates the data and fails when the shipped copy drifts from the installed libraries.

Usage::

    python scripts/generate_rules.py            # rewrite the shipped file
    python scripts/generate_rules.py --check    # exit 1 if it differs
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
    """Stable text form (what is compared by ``--check``), versions excluded."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = render(generate())
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} differs from the installed transformers/peft")
        return 0 if same else 1
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
