"""Adapters and fine-tune deltas (lora_rank.deltas) against independent oracles: adapters made
by PEFT itself (their updates from PEFT's own ``get_delta_weight``, decomposed by numpy in
float64), fine-tunes with planted low-rank updates of known spectra, and extracted / resized
adapters loaded and merged by PEFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import lora_rank
import numpy as np
import pytest
from checkpoints import load_model
from lora_rank.deltas.extract import resize

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def _peft_adapter(base: Path, out: Path, **config: Any) -> dict[str, np.ndarray]:
    """Save a PEFT adapter of ``base`` (random factors) into ``out``; each adapted module's
    update from PEFT's own ``get_delta_weight``, in float64."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(1)
    model = peft.get_peft_model(
        load_model(base), peft.LoraConfig(init_lora_weights=False, **config)
    )
    model.save_pretrained(out)
    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and "default" in module.scaling:
            key = name.removeprefix("base_model.model.")
            deltas[key] = module.get_delta_weight("default").detach().double().numpy()
    return deltas


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": dict(r=4, lora_alpha=8, target_modules="all-linear"),
    "rslora": dict(r=6, lora_alpha=3, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        rank_pattern={"down_proj": 7, r"layers\.0\.self_attn\.q_proj": 2},
        alpha_pattern={"v_proj": 3},
    ),
    "dora": dict(r=4, lora_alpha=4, use_dora=True, target_modules=["k_proj", "o_proj"]),
    "embedding": dict(r=5, lora_alpha=10, target_modules=["embed_tokens", "up_proj"]),
    "saved": dict(r=3, lora_alpha=6, target_modules=["gate_proj"], modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_adapter_spectra_equal_float64_svd_of_peft_delta(
    checkpoint: Callable[[str], Path], tmp_path: Path, variant: str
) -> None:
    config = VARIANTS[variant]
    base = checkpoint("llama")
    deltas = _peft_adapter(base, tmp_path, **config)
    report = lora_rank.analyze(tmp_path, base=base)
    assert isinstance(report, lora_rank.AdapterReport)
    assert {m.name for m in report.adapted} == set(deltas)
    worst = 0.0
    for m in report.adapted:
        want = np.linalg.svd(deltas[m.name], compute_uv=False)
        got = np.array(m.spectrum.singular_values)
        assert len(got) == m.r
        worst = max(worst, float(np.max(np.abs(got - want[: m.r])) / want[0]))
        assert want[m.r :].max(initial=0) < 1e-6 * want[0]
        assert m.spectrum.frobenius_norm == pytest.approx(np.linalg.norm(deltas[m.name]), rel=1e-6)
        w = load_model(base).get_submodule(m.name).weight.detach().double().numpy()
        assert m.relative_change == pytest.approx(
            np.linalg.norm(deltas[m.name]) / np.linalg.norm(w), rel=1e-6
        )
        assert m.dora == bool(config.get("use_dora"))
        assert m.embedding == ("embed" in m.name)
    assert worst < 1e-6, worst
    if variant == "saved":
        assert report.modules_to_save == ["lm_head"]
    if variant == "patterns":
        assert report.adapted_module("model.layers.1.mlp.down_proj").r == 7
        assert report.adapted_module("model.layers.0.self_attn.q_proj").r == 2
        assert report.adapted_module("model.layers.1.self_attn.q_proj").r == 4
        assert report.adapted_module("model.layers.0.self_attn.v_proj").alpha == 3


def test_adapter_for_another_base_names_each_mismatch(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    _peft_adapter(checkpoint("llama"), tmp_path, r=2, target_modules=["q_proj", "up_proj"])
    with pytest.raises(lora_rank.ConfigError) as e:
        lora_rank.analyze(tmp_path, base=lora_rank.demo_checkpoint())
    msg = str(e.value)
    for layer in (0, 1):
        for module in ("self_attn.q_proj", "mlp.up_proj"):
            assert f"model.layers.{layer}.{module}: no such module in the base" in msg


def _planted(base: Path, out: Path, *, resize_vocab: int = 0) -> dict[str, np.ndarray]:
    """Save a fine-tune of ``base``: layer 0's q_proj + a rank-3 update (σ 3, 2, 1), layer
    1's down_proj + rank 2 (σ 1.5, 0.5), layer 0's input norm shifted; returns the updates."""
    model = load_model(base)
    rng = np.random.default_rng(7)
    planted = {}
    for name, sv in [
        ("model.layers.0.self_attn.q_proj", [3.0, 2.0, 1.0]),
        ("model.layers.1.mlp.down_proj", [1.5, 0.5]),
    ]:
        w = model.get_submodule(name).weight
        u, _ = np.linalg.qr(rng.standard_normal((w.shape[0], len(sv))))
        v, _ = np.linalg.qr(rng.standard_normal((w.shape[1], len(sv))))
        d = (u * sv) @ v.T
        planted[name] = d
        with torch.no_grad():
            w += torch.from_numpy(d).float()
    with torch.no_grad():
        model.get_submodule("model.layers.0.input_layernorm").weight += 0.1
    if resize_vocab:
        model.resize_token_embeddings(resize_vocab)
    model.save_pretrained(out, max_shard_size="20KB")
    return planted


@pytest.fixture(scope="module")
def planted_pair(
    checkpoint_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, np.ndarray]]:
    from checkpoints import ARCHS, save_checkpoint

    base = tmp_path_factory.mktemp("base")
    save_checkpoint(ARCHS["llama"], base)
    ft = tmp_path_factory.mktemp("ft")
    return base, ft, _planted(base, ft)


def test_compare_recovers_planted_updates(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    base, ft, planted = planted_pair
    c = lora_rank.compare(base, ft, progress=False)
    changed = {m.name for m in c.changed_modules}
    assert changed == set(planted)
    for name, d in planted.items():
        m = c.module(name)
        want = np.linalg.svd(d, compute_uv=False)
        k = int(np.sum(want > 1e-9))
        got = np.array(m.spectrum.singular_values[:k])
        assert np.max(np.abs(got - want[:k])) < 1e-5, (name, got, want[:k])
        assert m.spectrum.singular_values[k] < 1e-5
        assert m.spectrum.energy_rank_99 == k
        w = load_model(base).get_submodule(name).weight.detach().double().numpy()
        assert m.relative_change == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w), rel=1e-5)
    assert [(ch.name, ch.change) for ch in c.changes] == [
        ("model.layers.0.input_layernorm.weight", "changed")
    ]
    assert c.changes[0].relative_change == pytest.approx(
        0.1
        * np.sqrt(32)
        / np.linalg.norm(
            load_model(base).get_submodule("model.layers.0.input_layernorm").weight.detach().numpy()
        ),
        rel=1e-4,
    )


def test_extracted_adapter_merged_by_peft_reproduces_the_fine_tune(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    base, ft, planted = planted_pair
    c = lora_rank.compare(base, ft, progress=False)
    budget = 3 * (32 + 32) + 2 * (48 + 32)
    a = c.extract(tmp_path, budget=budget)
    assert a.ranks == {"model.layers.0.self_attn.q_proj": 3, "model.layers.1.mlp.down_proj": 2}
    assert a.lora_params == budget
    assert a.modules_to_save == ["model.layers.0.input_layernorm"]
    assert a.energy_kept == pytest.approx(1.0, abs=1e-6)  # the rest: f32 rounding of W_ft
    model = peft.PeftModel.from_pretrained(load_model(base), tmp_path, is_trainable=True)
    assert model.get_nb_trainable_parameters()[0] == a.trainable_params == budget + 32
    merged = model.merge_and_unload().state_dict()
    want = load_model(ft).state_dict()
    worst = max(float((merged[k] - want[k]).abs().max()) for k in want)
    assert worst < 2e-6, worst
    # Uniform and per-module thresholds, and the budget's optimality against uniform.
    uni = c.extract(None, r=1)
    assert uni.ranks == dict.fromkeys(planted, 1)
    best = c.extract(None, budget=uni.lora_params)
    assert best.lora_params <= uni.lora_params and best.energy_kept >= uni.energy_kept
    thr = c.extract(None, energy=0.85)
    assert thr.ranks == {"model.layers.0.self_attn.q_proj": 2, "model.layers.1.mlp.down_proj": 1}


def test_extraction_without_modules_to_save_names_what_it_drops(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    base, ft, _ = planted_pair
    c = lora_rank.compare(base, ft, progress=False)
    with pytest.warns(
        UserWarning, match="not captured by the adapter: model.layers.0.input_layernorm"
    ):
        a = c.extract(None, r=2, modules_to_save=False)
    assert a.modules_to_save == [] and a.not_captured


def test_resized_adapter_is_the_truncated_svd_of_the_update(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    base = checkpoint("llama")
    deltas = _peft_adapter(
        base,
        tmp_path / "a",
        r=8,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        modules_to_save=["lm_head"],
    )
    small = resize(tmp_path / "a", tmp_path / "b", r=3)
    assert set(small.ranks.values()) == {3}
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = peft.PeftModel.from_pretrained(load_model(base), tmp_path / "b")
    seen = 0
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and "default" in module.scaling:
            key = name.removeprefix("base_model.model.")
            got = module.get_delta_weight("default").detach().double().numpy()
            u, s, vt = np.linalg.svd(deltas[key], full_matrices=False)
            want = (u[:, :3] * s[:3]) @ vt[:3]
            assert np.max(np.abs(got - want)) < 1e-5 * s[0], key
            seen += 1
    assert seen == len(deltas)
    trainable = peft.PeftModel.from_pretrained(load_model(base), tmp_path / "b", is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == small.trainable_params
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert cfg["r"] == 3
    half = resize(tmp_path / "a", None, budget="50%")
    assert half.lora_params <= sum(8 * sum(d.shape) for d in deltas.values()) // 2


def test_compare_refuses_another_architecture(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    from checkpoints import ARCHS, Arch, save_checkpoint

    llama = ARCHS["llama"]
    wider = Arch(
        "llama", llama.config_class, llama.model_class, {**llama.kwargs, "intermediate_size": 64}
    )
    save_checkpoint(wider, tmp_path)
    with pytest.raises(
        lora_rank.ConfigError,
        match=r"'model.layers.0.mlp.(gate|up|down)_proj.weight' does not match",
    ):
        lora_rank.compare(checkpoint("llama"), tmp_path, progress=False)
    with pytest.raises(lora_rank.ConfigError, match="no weight matrix in common"):
        lora_rank.compare(checkpoint("llama"), lora_rank.demo_checkpoint(), progress=False)


def test_resized_vocabulary_is_flagged_and_saved(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    base = checkpoint("llama")
    _planted(base, tmp_path, resize_vocab=128)
    c = lora_rank.compare(base, tmp_path, progress=False)
    resized = {ch.name for ch in c.changes if ch.change == "resized"}
    assert any("embed_tokens" in n for n in resized), c.changes
    a = c.extract(None, r=3)
    assert "model.embed_tokens" in a.modules_to_save


def test_cli_extract_resize_and_analyze_an_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lora_rank.cli import main
    from lora_rank.deltas.extract import example_finetune

    ft = example_finetune(str(tmp_path / "ft"))
    assert main(["compare", "--demo", ft, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 of 40 matrices changed" in out and "encoder.layer.0.attention.self.query" in out
    assert main(["extract", "--demo", ft, "--budget", "20000", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "LoRA parameters: 9,216 (budget 20,000)" in out
    assert "trainable parameters (PEFT's count): 9,216\n" in out
    assert main(["resize", str(tmp_path / "a"), "--r", "3", "--out", str(tmp_path / "b")]) == 0
    assert main(["analyze", str(tmp_path / "b"), "--base", str(lora_rank.demo_checkpoint())]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.0.attention.self.query │ 3 │     3 │     1 │    3 │" in out
    # A fine-tune of another model: one line on stderr, status 2.
    from checkpoints import ARCHS, save_checkpoint

    other = save_checkpoint(ARCHS["llama"], tmp_path / "llama")
    capsys.readouterr()
    assert main(["compare", "--demo", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no weight matrix in common" in err[0], err


def _best_allocation(updates: dict[str, np.ndarray], cost: dict[str, int], budget: int) -> float:
    """The most Σσ² any per-module ranks within ``budget`` keep (brute force over every rank
    combination, numpy float64 SVD): the oracle of strategy='delta'."""
    import itertools

    sq = {n: np.linalg.svd(d, compute_uv=False) ** 2 for n, d in updates.items()}
    names = sorted(updates)
    best = 0.0
    for ranks in itertools.product(*(range(int(np.sum(sq[n] > 1e-12)) + 1) for n in names)):
        if sum(k * cost[n] for n, k in zip(names, ranks)) <= budget:
            best = max(best, sum(float(sq[n][:k].sum()) for n, k in zip(names, ranks)))
    return best


@pytest.mark.parametrize("budget", [64, 130, 208, 352, 5000])
def test_delta_strategy_keeps_the_most_update_energy_per_parameter(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]], budget: int
) -> None:
    base, ft, planted = planted_pair
    c = lora_rank.compare(base, ft, progress=False)
    report = lora_rank.analyze(base)
    rec = report.recommend("delta", delta=c, budget=budget)
    ranks = rec.module_ranks()
    # Only the two changed matrices are ever targeted (the rest of all-linear is unchanged).
    assert set(ranks) <= set(planted) and ranks
    cost = {"model.layers.0.self_attn.q_proj": 32 + 32, "model.layers.1.mlp.down_proj": 48 + 32}
    assert rec.trainable_params == sum(k * cost[n] for n, k in ranks.items()) <= budget
    kept = sum(
        float((np.linalg.svd(planted[n], compute_uv=False)[:k] ** 2).sum())
        for n, k in ranks.items()
    )
    assert kept == pytest.approx(_best_allocation(planted, cost, budget), rel=1e-6)
    # PEFT itself counts what the recommendation says, on the real model.
    model = peft.get_peft_model(load_model(base), rec.to_peft())
    assert model.get_nb_trainable_parameters()[0] == rec.trainable_params
    assert any("left unchanged get no rank" in w for w in rec.warnings)
    # The same rule as extraction under the same budget.
    assert c.extract(None, budget=budget).ranks == ranks


def test_delta_strategy_refusals_and_auto(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    from lora_rank.recommend.strategies import AUTO_WITH_DELTA

    base, ft, _ = planted_pair
    report = lora_rank.analyze(base)
    c = lora_rank.compare(base, ft, progress=False)
    with pytest.raises(lora_rank.ConfigError, match=r"needs delta=lora_rank\.compare"):
        report.recommend("delta", budget=1000)
    with pytest.raises(lora_rank.ConfigError, match="read by strategy='delta' only"):
        report.recommend("all-linear", delta=c)
    flat = lora_rank.compare(base, ft, spectral=False, progress=False)
    with pytest.raises(lora_rank.ConfigError, match="needs the update spectra"):
        report.recommend("delta", delta=flat, budget=1000)
    demo = lora_rank.demo_checkpoint()
    other = lora_rank.compare(demo, demo, spectral=True, progress=False)
    with pytest.raises(lora_rank.ConfigError, match=r"has no module .* can adapt"):
        report.recommend("delta", delta=other, budget=1000)
    same = lora_rank.compare(base, base, progress=False)
    with pytest.raises(lora_rank.ConfigError, match="changed no module"):
        report.recommend("delta", delta=same, budget=1000)
    # auto with a delta is what the benchmark supports (strategies.AUTO_WITH_DELTA).
    auto = report.recommend("auto", delta=c, budget=1000)
    plain = report.recommend(
        AUTO_WITH_DELTA, budget=1000, **({"delta": c} if AUTO_WITH_DELTA == "delta" else {})
    )
    assert auto.module_ranks() == plain.module_ranks()
    if AUTO_WITH_DELTA != "delta":
        assert any("does not read it" in w for w in auto.warnings)


def test_cli_recommend_with_a_delta(
    planted_pair: tuple[Path, Path, dict[str, np.ndarray]], capsys: pytest.CaptureFixture[str]
) -> None:
    from lora_rank.cli import main

    base, ft, _ = planted_pair
    args = ["recommend", str(base), "--delta", str(ft), "--budget", "208", "--format", "json"]
    assert main([*args, "--strategy", "delta", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    c = lora_rank.compare(base, ft, progress=False)
    want = lora_rank.analyze(base).recommend("delta", delta=c, budget=208)
    assert got["rank_pattern"] == want.to_dict()["rank_pattern"]
    assert got["trainable_params"] == want.trainable_params == 208
    # --delta with another strategy: one line, status 2.
    assert main([*args, "--strategy", "attention-qv", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read by strategy='delta' only" in err[0], err
