"""The whole path a user takes, with the real spectral engine: analyze(spectral=True) →
recommend("spectral", budget) → PEFT. The oracle is PEFT's own trainable count and ranks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lora_rank
import pytest
from peft_oracle import apply_peft


@pytest.mark.parametrize(
    ("arch", "fraction"), [("llama", 0.2), ("mixtral", 0.15), ("qwen2_moe", 0.2), ("gpt2", 0.2)]
)
def test_spectral_auto_recommendation_is_exact_in_peft(
    arch: str, fraction: float, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    path = checkpoint(arch)
    report = lora_rank.analyze(path, spectral=True, progress=False)
    assert report.has_spectra
    budget = int(report.total_params * fraction)
    rec = report.recommend("spectral", budget=budget)
    assert 0.97 * budget <= rec.trainable_params <= budget
    rec.save(tmp_path)
    import peft

    config = peft.LoraConfig.from_pretrained(str(tmp_path))
    oracle = apply_peft(path, config)
    assert oracle.trainable == rec.trainable_params
    planned = rec.module_ranks()
    assert {
        **{m: oracle.ranks[m] for m in oracle.modules},
        **{p: oracle.ranks[p] for p in oracle.parameters},
    } == planned


def test_minilm_demo_path(minilm: Path) -> None:
    """The demo a newcomer runs: real trained weights, a 0.5% budget, a config PEFT accepts."""
    report = lora_rank.analyze(minilm, spectral=True, progress=False)
    q = report.module("encoder.layer.0.attention.self.query")
    assert q.spectrum is not None and abs(q.spectrum.spectral_norm - 6.125) < 0.01
    rec = report.recommend("auto", budget="0.5%")
    oracle = apply_peft(minilm, rec.to_peft())
    assert oracle.trainable == rec.trainable_params
    assert rec.trainable_params <= 0.005 * report.total_params
