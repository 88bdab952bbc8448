"""Recommendation emission: compact patterns checked with PEFT's own matchers, the
verification that refuses configs PEFT would apply differently, the representations chosen
(all-linear, lists, layers_to_transform, regex), save / to_dict / explain."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lora_rank
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_rank import Recommendation
from lora_rank.errors import PeftEmulationError
from lora_rank.peft.config import build
from lora_rank.peft.patterns import embed, regex, suffix_list
from lora_rank.peft.recommendation import Target
from peft_oracle import apply_peft

#: Roles of a synthetic layer: name parts after the layer index (BERT's ambiguous "dense"s,
#: GPT-2's attn/mlp c_proj, T5-like nesting).
ROLES = [
    ("self_attn", "q_proj"),
    ("self_attn", "v_proj"),
    ("attention", "output", "dense"),
    ("output", "dense"),
    ("intermediate", "dense"),
    ("attn", "c_proj"),
    ("mlp", "c_proj"),
    ("layer", "0", "SelfAttention", "q"),
    ("layer", "1", "EncDecAttention", "q"),
]


@st.composite
def universes(draw: Any) -> tuple[list[str], list[str]]:
    """A module universe of 1-2 stacks × up to 12 layers × some roles (plus a head), and a
    random selection of it (model order)."""
    stacks = draw(st.sampled_from([["model.layers"], ["encoder.block", "decoder.block"]]))
    layers = draw(st.integers(1, 12))
    roles = draw(st.lists(st.sampled_from(ROLES), min_size=1, max_size=6, unique=True))
    names = [f"{s}.{i}.{'.'.join(r)}" for s in stacks for i in range(layers) for r in roles]
    names += ["pooler.dense", "lm_head"]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    return names, [n for n in names if n in set(chosen)]


def _peft_list_hits(entries: list[str], universe: list[str]) -> set[str]:
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = SimpleNamespace(
        target_modules=entries,
        target_parameters=None,
        exclude_modules=None,
        modules_to_save=None,
        layers_to_transform=None,
        layers_pattern=None,
    )
    return {n for n in universe if check_target_module_exists(cfg, n)}


@settings(max_examples=150, deadline=None)
@given(universes())
def test_patterns_select_exactly_in_peft(case: tuple[list[str], list[str]]) -> None:
    """rank_pattern keys (PEFT's get_pattern_key), regex target_modules (PEFT's fullmatch) and
    suffix lists (PEFT's check_target_module_exists) hit exactly the selection."""
    from peft.utils.other import get_pattern_key, match_target_against_key

    universe, selected = case
    key = regex(selected, universe)
    assert key is not None
    assert {n for n in universe if get_pattern_key([key], n) == key} == set(selected)
    target = r"(?:.*\.)?" + embed(key)
    assert {n for n in universe if match_target_against_key(target, n)} == set(selected)
    listed = suffix_list(selected, universe)
    if listed is not None:
        assert _peft_list_hits(listed, universe) == set(selected)
        assert len(listed) <= len(selected)
    else:  # only when some selected name is a dot-suffix of an unselected one: never here
        pytest.fail(f"no suffix list for {selected}")


def test_regex_groups_layers_and_kinds() -> None:
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(12) for p in ("q_proj", "v_proj")]
    assert regex([n for n in names if n.endswith("q_proj")], names) == "q_proj"
    some = [n for n in names if ".3." in n or ".11." in n]
    assert regex(some, names) == r"(?:3|11)\.self_attn\.(?:q_proj|v_proj)"
    assert suffix_list(names, names) == ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def minilm_report(minilm: Path) -> lora_rank.Report:
    return lora_rank.analyze(minilm)


def test_layers_to_transform_when_most_compact(
    minilm_report: lora_rank.Report, minilm: Path
) -> None:
    rec = minilm_report.recommend("attention", layers=[0, 2, 4])
    assert rec.layers_to_transform == [0, 2, 4]
    assert rec.target_modules == ["query", "key", "value", "attention.output.dense"]
    result = apply_peft(minilm, rec.to_peft())
    assert result.trainable == rec.trainable_params
    assert result.modules == {t.key for t in rec.targets}
    assert {int(n.split(".")[2]) for n in result.modules} == {0, 2, 4}


def test_regex_when_a_list_would_be_long(minilm_report: lora_rank.Report, minilm: Path) -> None:
    exclude = [f"{i}.attention.self.query" for i in (0, 2)] + ["3.attention.self.key"]
    exclude += [f"{i}.output.dense" for i in (1, 4)] + ["5.intermediate.dense"]
    rec = minilm_report.recommend("attention-mlp", exclude=exclude)
    assert isinstance(rec.target_modules, str) and rec.target_modules.startswith(r".*\.")
    result = apply_peft(minilm, rec.to_peft())
    assert result.trainable == rec.trainable_params
    assert result.modules == {t.key for t in rec.targets}
    assert len(result.modules) == 36 - len(exclude)


def test_mixtral_notes_peft_spurious_warning(checkpoint: Callable[[str], Path]) -> None:
    """PEFT checks rank_pattern keys against modules only, so keys for target_parameters look
    unused to it; the recommendation says they apply (the oracle tests show they do)."""
    report = lora_rank.analyze(checkpoint("mixtral"))
    rec = report.recommend("attention8-mlp4")
    assert rec.target_parameters == ["gate_up_proj", "down_proj"]
    assert any("did not match any targeted module" in w for w in rec.warnings)
    assert not any("did not match" in w for w in report.recommend("attention").warnings)


def test_qwen2_moe_experts_through_target_parameters(checkpoint: Callable[[str], Path]) -> None:
    """PEFT's all-linear does not reach qwen2_moe experts; attention-mlp targets them
    explicitly (PEFT agrees: test_recommend's oracle runs)."""
    report = lora_rank.analyze(checkpoint("qwen2_moe"))
    assert report.recommend("all-linear").target_parameters is None
    rec = report.recommend("attention-mlp")
    assert rec.target_parameters == ["gate_up_proj", "down_proj"]
    experts = [t for t in rec.targets if t.is_parameter]
    assert {t.params for t in experts} == {8 * 4 * (16 + 32), 8 * 4 * (32 + 32)}


def _bert_plan(report: lora_rank.Report) -> list[Target]:
    return report.recommend("attention8-mlp4").targets


def test_build_refuses_a_key_that_overmatches(
    checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank_pattern key hitting more than its modules never leaves build()."""
    report = lora_rank.analyze(checkpoint("bert"))
    targets = _bert_plan(report)
    assert build(report, targets, strategy="x").rank_pattern  # needs a key
    monkeypatch.setattr("lora_rank.peft.config.patterns.regex", lambda sel, uni: "dense|query")
    with pytest.raises(PeftEmulationError):
        build(report, targets, strategy="x")


def test_build_refuses_targets_peft_cannot_wrap(checkpoint: Callable[[str], Path]) -> None:
    report = lora_rank.analyze(checkpoint("bert"))
    emb = report.module("bert.embeddings.word_embeddings")
    bogus = Target(emb.name, emb.name, emb.kind, None, 8, 16.0, 8 * 128, False)
    with pytest.raises(PeftEmulationError):
        build(report, [*_bert_plan(report), bogus], strategy="x")


def test_build_refuses_a_wrong_count(checkpoint: Callable[[str], Path]) -> None:
    report = lora_rank.analyze(checkpoint("llama"))
    t = report.recommend("attention-qv").targets
    wrong = [Target(**{**x.__dict__, "params": x.params + 1}) for x in t]
    with pytest.raises(PeftEmulationError, match="trainable count"):
        build(report, wrong, strategy="x")


def test_save_is_atomic_and_peft_reads_it(
    minilm_report: lora_rank.Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peft

    rec = minilm_report.recommend("attention8-mlp4")
    out = tmp_path / "new" / "adapter"
    path = rec.save(out)
    assert sorted(os.listdir(out)) == ["adapter_config.json"]
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec.adapter_config()))
    cfg = peft.LoraConfig.from_pretrained(str(out))
    assert (cfg.r, cfg.lora_alpha, cfg.rank_pattern) == (rec.r, rec.lora_alpha, rec.rank_pattern)
    before = path.read_text()

    def fail(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        minilm_report.recommend("attention-qv").save(out)
    assert path.read_text() == before
    assert sorted(os.listdir(out)) == ["adapter_config.json"]


def test_views(minilm_report: lora_rank.Report) -> None:
    rec = minilm_report.recommend("attention8-mlp4")
    d = json.loads(json.dumps(rec.to_dict()))
    assert d["trainable_params"] == rec.trainable_params == sum(t.params for t in rec.targets)
    assert d["rank_pattern"] == rec.rank_pattern and len(d["targets"]) == len(rec.targets) == 24
    assert rec.module_ranks() == {t.module: t.rank for t in rec.targets}
    text = rec.explain()
    lines = text.splitlines()
    assert lines[0] == "strategy: attention8-mlp4 (task: general)"
    assert any(line.split()[:2] == ["module", "kind"] for line in lines)
    for t in rec.targets:
        row = next(line for line in lines if line.startswith(t.key + " "))
        assert row.split()[1:] == [t.kind, "-", str(t.rank), str(int(t.alpha)), f"{t.params:,}"]
    assert f"trainable: {rec.trainable_params:,}" in text
    assert repr(rec).startswith("Recommendation(attention8-mlp4, 24 targets")
    cfg = rec.to_peft(lora_dropout=0.1)
    assert cfg.lora_dropout == 0.1 and cfg.r == rec.r
    rec.to_peft().rank_pattern["x"] = 1  # PEFT may edit its config: ours stays intact
    assert "x" not in rec.rank_pattern


def test_presets_stay_light(
    minilm_report: lora_rank.Report, tmp_path: Path, no_heavy_imports: None
) -> None:
    """Presets, explain, to_dict and save need neither torch nor peft."""
    rec = minilm_report.recommend("attention-mlp", budget="1%")
    rec.explain()
    rec.to_dict()
    rec.save(tmp_path)
    assert isinstance(rec, Recommendation)
