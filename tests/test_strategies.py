"""The weighted strategies (lora_rank.recommend.weights) and ``auto`` on the real MiniLM, with PEFT as
the oracle of what is wrapped and counted; presets at any budget."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Callable, Optional

import lora_rank
import pytest
from lora_rank import ConfigError, Report
from lora_rank.recommend.allocation import BUDGET_FLOOR
from lora_rank.recommend.presets import ATTENTION_KINDS, MLP_KINDS
from lora_rank.recommend.strategies import AUTO, recommend
from lora_rank.recommend.weights import RULES
from test_recommend import check_against_peft

#: all-linear's cost of one unit of rank on MiniLM: 6 layers x (4 x 768 + 2 x 1920) + 768.
PER_RANK = 6 * (4 * (384 + 384) + 2 * (384 + 1536)) + (384 + 384)


@pytest.fixture(scope="module")
def report(minilm: Path) -> Report:
    return lora_rank.analyze(minilm, spectral=True)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("r", [2, 8])
def test_rule_matches_peft_within_budget(
    rule: str, r: int, report: Report, minilm: Path, tmp_path: Path
) -> None:
    budget = PER_RANK * r
    rec = recommend(report, rule, budget=budget, rank_multiple=1)
    check_against_peft(rec, minilm, tmp_path)
    assert BUDGET_FLOOR * budget <= rec.trainable_params <= budget
    assert all(t.alpha == 2 * t.rank for t in rec.targets)


def _ranks(report: Report, rule: str) -> dict[str, int]:
    return recommend(report, rule, budget=PER_RANK * 8, rank_multiple=1).module_ranks()


def _mean(ranks: dict[str, int], names: list[str]) -> float:
    return statistics.fmean(ranks.get(n, 0) for n in names)


def test_rules_follow_their_weights(report: Report) -> None:
    mods = {m.name: m for m in report.lora_targets}
    mlp = [n for n, m in mods.items() if m.kind in MLP_KINDS]
    attn = [n for n, m in mods.items() if m.kind in ATTENTION_KINDS]
    kind = _ranks(report, "kind-prior")
    # Weight 2 vs 1: the MLP's rank is about twice attention's (ranks + 4 ∝ weight, rounded).
    assert 1.6 < _mean(kind, mlp) / _mean(kind, attn) < 2.4
    depth = _ranks(report, "depth")
    by_layer = [_mean(depth, [n for n in mods if mods[n].layer == i]) for i in range(6)]
    assert by_layer == sorted(by_layer, reverse=True) and by_layer[0] > 2 * by_layer[5]
    pooler = _ranks(report, "pooler")
    assert pooler["pooler.dense"] > 4 * max(v for k, v in pooler.items() if k != "pooler.dense")
    alpha = _ranks(report, "alpha")
    layer_alpha = {
        i: statistics.fmean(m.spectrum.alpha for m in mods.values() if m.layer == i)  # type: ignore[union-attr]
        for i in range(6)
    }
    hi, lo = (
        max(layer_alpha, key=layer_alpha.__getitem__),
        min(layer_alpha, key=layer_alpha.__getitem__),
    )
    assert alpha[f"encoder.layer.{hi}.output.dense"] > alpha[f"encoder.layer.{lo}.output.dense"]
    # The spectral rule gives the pooler (a kind of no known role) nothing; the others adapt it.
    assert "pooler.dense" not in _ranks(report, "spectral")
    assert all("pooler.dense" in _ranks(report, r) for r in ("kind-prior", "depth", "alpha"))


def test_auto_is_the_benchmarked_strategy(report: Report) -> None:
    auto = recommend(report, "auto", budget=PER_RANK * 4)
    same = recommend(report, AUTO, budget=PER_RANK * 4)
    assert auto.module_ranks() == same.module_ranks()
    assert auto.strategy == "auto" and AUTO in auto.rule


@pytest.mark.parametrize("strategy", ["all-linear", "attention-qv", "attention8-mlp4"])
def test_presets_reach_any_budget(
    strategy: str, report: Report, minilm: Path, tmp_path: Path
) -> None:
    """budget="0.5%" of MiniLM is 113,568: all-linear fits rank 2 (84,480) now that presets
    step by 1, where rank_multiple=4 used to raise."""
    rec = recommend(report, strategy, budget="0.5%")
    check_against_peft(rec, minilm, tmp_path)
    assert rec.trainable_params <= 113_568
    if strategy == "all-linear":
        assert set(rec.module_ranks().values()) == {2}
    bigger = recommend(report, strategy, r=max(rec.module_ranks().values()) + 1)
    assert bigger.trainable_params > 113_568


def test_preset_budget_below_rank_one_names_reachable_budgets(report: Report) -> None:
    with pytest.raises(ConfigError, match=r"start at 42,240 \(rank 1\), 84,480 \(rank 2\)"):
        recommend(report, "all-linear", budget=40_000)
    with pytest.raises(ConfigError, match=r"168,960 \(rank 4\), 337,920 \(rank 8\)"):
        recommend(report, "all-linear", budget=100_000, rank_multiple=4)


@pytest.mark.parametrize("task", [None, "classification"])
@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_weighs_convnext(
    rule: str, task: Optional[str], checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """ConvNeXt's Linear layers (pwconv1/pwconv2) are of no attention or MLP kind: every weighted
    strategy still weighs each module all-linear wraps, or names it in a warning with why (the
    spectral rule raised 'no module can be scored' here); PEFT counts the trainable params."""
    path = checkpoint("convnext")
    report = lora_rank.analyze(path)
    wrapped = {m.name for m in report.lora_targets}
    pw = {n for n in wrapped if n.endswith((".pwconv1", ".pwconv2"))}
    assert len(pw) == 8 and wrapped == pw | {"classifier"}
    per_rank = sum((m.in_features or 0) + (m.out_features or 0) for m in report.lora_targets)
    # Rank 8 everywhere fits: every pwconv is adapted. A quarter of that: some get no rank, said.
    for budget in (per_rank * 8, per_rank * 2):
        rec = recommend(report, rule, budget=budget, task=task)
        check_against_peft(rec, path, tmp_path / str(budget))
        assert rec.trainable_params <= budget
        if budget == per_rank * 8:
            assert set(rec.module_ranks()) >= pw
        # Each module of all-linear is adapted or counted in a note saying why not (the notes
        # name the first few of each reason).
        targeted = set(rec.module_ranks())
        counts = [re.match(r"(\d+) (?:of \d+ weighted )?module\(s\)", w) for w in rec.warnings]
        assert len(targeted) + sum(int(c.group(1)) for c in counts if c) == len(wrapped)
        warned = {n for n in wrapped if any(n in w for w in rec.warnings)}
        assert not warned & targeted and (warned or targeted == wrapped), rec.warnings
        if rule == "spectral":  # the head weighs 0 for every task: said, with why
            assert "classifier" not in rec.module_ranks()
            assert any("weighs classifier 0" in w for w in rec.warnings)
