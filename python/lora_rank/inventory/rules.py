"""The shipped rules data, ``_data/transformers_rules.json``, and its only reader.

``scripts/generate_rules.py`` writes the file from transformers'
``get_checkpoint_conversion_mapping`` and PEFT's MoE conversion tables; everything else reads it
through the functions here (:mod:`lora_rank.inventory.naming` for the key renamings,
:mod:`lora_rank.inventory.modules` and :mod:`lora_rank.peft.rules` for PEFT's MoE table).

Example:
    >>> peft_moe_table("mixtral")[1]
    {'gate_up_proj': ('w1', 'w3')}
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

#: PEFT's MoE conversion of one model type: (old ``target_modules`` name → new parameter
#: name, new name → the old names it fuses).
PeftMoeTable = tuple[dict[str, str], dict[str, tuple[str, ...]]]

#: The package's shipped data (the rules document and the architecture tables).
DATA = Path(__file__).resolve().parent.parent / "_data"


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The whole rules document, parsed once (treat it as read-only)."""
    text = (DATA / "transformers_rules.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def versions() -> dict[str, str]:
    """Versions of transformers and PEFT the shipped rules were generated from.

    Example:
        >>> set(versions()) == {"peft", "transformers"}
        True
    """
    return dict(document()["versions"])


def conversion_mapping(identifier: Optional[str]) -> Optional[list[dict[str, Any]]]:
    """transformers' ``WeightTransform`` list (as data) for an architecture class name or a
    ``model_type``; None when transformers has none for it.

    Example:
        >>> [t["class"] for t in conversion_mapping("mixtral")]
        ['WeightRenaming', 'WeightConverter', 'WeightConverter']
    """
    doc = document()
    canonical = doc["model_types"].get(identifier or "")
    return None if canonical is None else list(doc["mappings"][canonical])


def peft_moe_table(model_type: Optional[str]) -> Optional[PeftMoeTable]:
    """PEFT's ``_MOE_TARGET_MODULE_MAPPING`` and fused targets for ``model_type``, or None when
    PEFT converts nothing for it.

    Example:
        >>> peft_moe_table("mixtral")[0]["w2"], peft_moe_table("llama")
        ('down_proj', None)
    """
    tables = document()["peft_moe"]
    base = tables["model_to_pattern"].get(model_type or "")
    if base is None:
        return None
    mapping: Optional[dict[str, str]] = tables["target_module_mapping"].get(base)
    fused = tables["fused_targets"].get(base)
    if not mapping or not fused:
        return None
    return dict(mapping), {new: tuple(olds) for new, olds in fused.items()}
