"""The shipped transformers/PEFT rules must equal what the installed libraries say."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from lora_rank.inventory import naming

ROOT = Path(__file__).resolve().parent.parent


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "generate_rules", ROOT / "scripts/generate_rules.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_rules"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_shipped_rules_match_installed_transformers_and_peft() -> None:
    gen = _generator()
    fresh = json.loads(gen.render(gen.generate()))
    shipped = json.loads(gen.OUT.read_text())
    assert fresh["versions"] == shipped["versions"], "regenerate: python scripts/generate_rules.py"
    assert fresh == shipped, "shipped rules drifted: python scripts/generate_rules.py"


@pytest.mark.parametrize(
    "key",
    [
        "model.layers.0.block_sparse_moe.experts.3.w1.weight",
        "model.layers.7.block_sparse_moe.gate.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "embeddings.LayerNorm.gamma",
    ],
)
@pytest.mark.parametrize("model_type", ["mixtral", "minimax", "qwen2_moe", "bert"])
def test_rename_equals_transformers(model_type: str, key: str) -> None:
    """Our replay of the rules gives transformers' own ``rename_source_key`` result."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = (get_checkpoint_conversion_mapping(model_type) or []) + (
        get_checkpoint_conversion_mapping("legacy") or []
    )
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    expected, _ = rename_source_key(key, renamings, converters)
    assert naming.rename_key(key, naming.rules_for(model_type)).runtime == expected


def test_every_shipped_mapping_compiles() -> None:
    doc = naming._document()
    for model_type in doc["model_types"]:
        naming.rules_for(model_type)
