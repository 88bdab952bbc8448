"""The shipped transformers/PEFT rules must equal what the installed libraries say."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from lora_rank.inventory import naming, rules

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
    """Compared by content: the versions the file was generated with are recorded, not compared,
    so a transformers release that leaves the rules alone does not fail this test."""
    gen = _generator()
    fresh = json.loads(gen.render(gen.generate()))
    shipped = json.loads(gen.OUT.read_text())
    changes = gen.describe_changes(gen.content(shipped), gen.content(fresh))
    assert not changes, "shipped rules drifted (python scripts/generate_rules.py):\n" + "\n".join(
        changes
    )
    assert gen.content(fresh) == gen.content(shipped)
    assert set(shipped["versions"]) == {"transformers", "peft"}


def test_drift_report_names_what_changed() -> None:
    """The --check diff names the model type and the patterns that changed."""
    gen = _generator()
    shipped = gen.content(json.loads(gen.OUT.read_text()))
    edited = json.loads(json.dumps(shipped))
    canonical = edited["model_types"]["mixtral"]
    rule = edited["mappings"][canonical][0]
    rule["target_patterns"] = ["renamed_by_a_new_release"]
    gone = next(name for name in sorted(edited["model_types"]) if name != "mixtral")
    del edited["model_types"][gone]
    lines = gen.describe_changes(shipped, edited)
    assert f"- {gone}: its" in "\n".join(lines)
    assert any(line.startswith("~ mixtral:") for line in lines)
    assert any("renamed_by_a_new_release" in line for line in lines)
    assert gen.describe_changes(shipped, shipped) == []


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
    doc = rules.document()
    for model_type in doc["model_types"]:
        naming.rules_for(model_type)
