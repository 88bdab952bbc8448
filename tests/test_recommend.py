"""recommend() and rank_targets(), checked against PEFT itself on every test architecture.

For each architecture (the 15 tiny fixtures and the real MiniLM) and each preset, and for
``strategy="spectral"`` (what ``auto`` was before benches/quality) at three budgets: the model is built from the checkpoint, wrapped with
``get_peft_model(model, rec.to_peft())``, and PEFT's trainable count, wrapped modules and
parameters, and each wrapped module's rank and alpha must equal the Recommendation; the budget
must hold (≤ budget, ≥ 97%); ``save`` + ``LoraConfig.from_pretrained`` must give back the same
config. ``auto`` runs on exact spectra (float64 eigenvalues of the runtime weights' Gram matrices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lora_rank
import pytest
from checkpoints import ARCHS, load_model
from lora_rank import ConfigError, Report, Spectrum
from lora_rank.recommend.allocation import BUDGET_FLOOR
from lora_rank.recommend.budget import parse_budget
from lora_rank.recommend.presets import ATTENTION_KINDS, MLP_KINDS, PRESETS
from lora_rank.recommend.strategies import rank_targets, recommend
from peft_oracle import PeftResult, apply_peft

ARCH_NAMES = [*ARCHS, "minilm"]
PRESET_NAMES = list(PRESETS)
#: Budgets of the auto runs: fractions of the checkpoint's parameters (the fixtures are tiny,
#: so their budgets are larger shares), rounded down to a multiple of 512 parameters.
AUTO_BUDGETS = {"fixture": (0.1, 0.2, 0.35), "minilm": (0.005, 0.01, 0.02)}
#: LoraConfig fields a Recommendation sets.
FIELDS = (
    "r",
    "lora_alpha",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "target_parameters",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
)


@pytest.fixture(scope="module")
def path_of(checkpoint: Callable[[str], Path], minilm: Path) -> Callable[[str], Path]:
    return lambda name: minilm if name == "minilm" else checkpoint(name)


def _spectrum(w: Any) -> Spectrum:
    """Statistics of one matrix from the eigenvalues of its float64 Gram matrix (σᵢ² exactly up
    to rounding; much faster than an SVD on busy cores): the oracle for spectra."""
    import numpy as np

    a = np.asarray(w, dtype=np.float64)
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    s = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))
    energy = np.cumsum(s**2) / np.sum(s**2)
    ranks = [int(np.searchsorted(energy, q - 1e-12) + 1) for q in (0.90, 0.95, 0.99)]
    f2 = float(np.sum(s**2))
    return Spectrum(
        tuple(float(x) for x in s[:32]),
        math.sqrt(f2),
        float(s[0]),
        f2 / float(s[0]) ** 2,
        *ranks,
        True,
        math.nan,
        0,
        "numpy-gram",
    )


def fill_spectra(report: Report, path: Path) -> Report:
    """Spectra of every weight matrix of ``report`` from the model transformers loads (per
    expert for fused expert tensors)."""
    params = dict(load_model(path).named_parameters())
    for m in report.modules:
        name = m.parameter or (m.name if len(m.shape) == 3 else f"{m.name}.weight")
        p = params.get(name)
        if p is None or p.dim() < 2 or m.kind == "embedding":
            continue
        w = p.detach().float().numpy()
        if w.ndim == 3:
            m.expert_spectra = tuple(_spectrum(x) for x in w)
        else:
            m.spectrum = _spectrum(w)
    report.spectral_settings = {"method": "numpy-gram"}
    return report


@pytest.fixture(scope="module")
def spectral_report(path_of: Callable[[str], Path]) -> Callable[[str], Report]:
    """``spectral_report(arch)``: the analyzed checkpoint with exact spectra (cached)."""
    cache: dict[str, Report] = {}

    def get(name: str) -> Report:
        if name not in cache:
            cache[name] = fill_spectra(lora_rank.analyze(path_of(name)), path_of(name))
        return cache[name]

    return get


def _alphas(result: PeftResult) -> dict[str, float]:
    """lora_alpha of every LoRA layer PEFT created, by PEFT key."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in result.model.named_modules():
        if isinstance(mod, LoraLayer):
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            param = getattr(mod, "parameter_name", None)
            out[f"{name}.{param}" if param else name] = float(mod.lora_alpha["default"])
    return out


def _normalized(config: Any) -> dict[str, Any]:
    out = {}
    for f in FIELDS:
        v = getattr(config, f)
        out[f] = sorted(v) if isinstance(v, (list, set)) else v
    return out


def check_against_peft(rec: lora_rank.Recommendation, path: Path, tmp: Path) -> PeftResult:
    """PEFT wraps exactly rec.targets with their ranks and alphas, counts
    rec.trainable_params, and reads the saved config back unchanged."""
    import peft

    result = apply_peft(path, rec.to_peft())
    assert result.trainable == rec.trainable_params
    assert result.modules == {t.key for t in rec.targets if not t.is_parameter}
    assert result.parameters == {t.key for t in rec.targets if t.is_parameter}
    assert result.ranks == {t.key: t.rank for t in rec.targets}
    assert _alphas(result) == {t.key: t.alpha for t in rec.targets}
    assert rec.save(tmp) == tmp / "adapter_config.json"
    loaded = peft.LoraConfig.from_pretrained(str(tmp))
    assert _normalized(loaded) == _normalized(rec.to_peft())
    return result


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_preset_matches_peft(
    arch: str, preset: str, path_of: Callable[[str], Path], tmp_path: Path
) -> None:
    path = path_of(arch)
    report = lora_rank.analyze(path)
    rec = recommend(report, preset)
    result = check_against_peft(rec, path, tmp_path)
    kinds = {t.kind for t in rec.targets}
    if preset == "all-linear":
        assert result.modules | result.parameters == {
            (m.parameter or m.name) for m in report.lora_targets
        }
    elif preset == "attention-qv":
        assert kinds in ({"attn_q", "attn_v"}, {"attn_qkv"})
        assert any("fused" in w for w in rec.warnings) == (kinds == {"attn_qkv"})
    elif preset == "attention":
        assert kinds <= set(ATTENTION_KINDS) and len(kinds) >= 2
    elif preset == "attention-mlp":
        assert kinds & set(MLP_KINDS) and kinds <= set(ATTENTION_KINDS + MLP_KINDS)
    else:  # attention8-mlp4
        assert {t.rank for t in rec.targets if t.kind in MLP_KINDS} == {4}
        assert {t.rank for t in rec.targets if t.kind not in MLP_KINDS} == {8}


def test_all_linear_literal_and_mixtral_doubling(path_of: Callable[[str], Path]) -> None:
    """all-linear is emitted as PEFT's own shorthand; on Mixtral PEFT doubles r and alpha on
    the fused gate_up_proj, and the plan says so (the oracle test checks PEFT agrees)."""
    rec = recommend(lora_rank.analyze(path_of("mixtral")), "all-linear", r=8)
    assert rec.target_modules == "all-linear"
    fused = [t for t in rec.targets if t.key.endswith("experts.gate_up_proj")]
    assert fused and {(t.rank, t.alpha) for t in fused} == {(16, 32.0)}
    assert {t.rank for t in rec.targets if t not in fused} == {8}


def _auto_budgets() -> Iterator[Any]:
    for arch in ARCH_NAMES:
        fractions = AUTO_BUDGETS["minilm" if arch == "minilm" else "fixture"]
        for i, f in enumerate(fractions):
            yield pytest.param(arch, f, id=f"{arch}-budget{i}")


@pytest.mark.parametrize(("arch", "fraction"), list(_auto_budgets()))
def test_auto_matches_peft_within_budget(
    arch: str,
    fraction: float,
    path_of: Callable[[str], Path],
    spectral_report: Callable[[str], Report],
    tmp_path: Path,
) -> None:
    report = spectral_report(arch)
    budget = int(fraction * report.total_params) // 512 * 512
    rec = recommend(report, "spectral", budget=budget)
    check_against_peft(rec, path_of(arch), tmp_path)
    assert rec.budget == budget
    assert BUDGET_FLOOR * budget <= rec.trainable_params <= budget
    for t in rec.targets:
        m = report.module(t.module)
        assert t.rank % 4 == 0 and 4 <= t.rank <= min(128, m.in_features, m.out_features)
        assert t.alpha == 2 * t.rank


def test_auto_ranks_follow_scores(spectral_report: Callable[[str], Report]) -> None:
    """A module with a higher score never gets a rank more than one step below one with a
    lower score, and ranks are not all equal (MiniLM's MLP uses more directions)."""
    rec = recommend(spectral_report("minilm"), "spectral", budget="2%")
    for a in rec.targets:
        for b in rec.targets:
            if a.score >= b.score:
                assert a.rank >= b.rank - 4, (a, b)
    mlp = [t.rank for t in rec.targets if t.kind in MLP_KINDS]
    attn = [t.rank for t in rec.targets if t.kind in ATTENTION_KINDS]
    assert min(mlp) >= max(attn) - 4 and sum(mlp) / len(mlp) > sum(attn) / len(attn)


def _mlp_share(rec: lora_rank.Recommendation) -> float:
    return sum(t.params for t in rec.targets if t.kind in MLP_KINDS) / rec.trainable_params


def test_tasks(spectral_report: Callable[[str], Report]) -> None:
    report = spectral_report("minilm")
    budget = 300_000
    classification = recommend(report, "spectral", budget=budget, task="classification")
    assert {t.kind for t in classification.targets} <= set(ATTENTION_KINDS)
    general = recommend(report, "spectral", budget=budget)
    knowledge = recommend(report, "spectral", budget=budget, task="knowledge")
    style = recommend(report, "spectral", budget=budget, task="style")
    assert _mlp_share(style) < _mlp_share(general) < _mlp_share(knowledge)
    assert _mlp_share(style) > 0
    with pytest.raises(ConfigError, match="unknown task"):
        recommend(report, "spectral", task="chat")


def test_auto_default_budget_is_uniform_r(spectral_report: Callable[[str], Report]) -> None:
    """Without a budget, auto spends what rank r on every scored candidate would."""
    report = spectral_report("llama")
    uniform = recommend(report, "attention-mlp", r=8)
    rec = recommend(report, "spectral", r=8)
    assert rec.budget == uniform.trainable_params
    assert BUDGET_FLOOR * rec.budget <= rec.trainable_params <= rec.budget


def test_auto_computes_missing_spectra(
    monkeypatch: pytest.MonkeyPatch, path_of: Callable[[str], Path]
) -> None:
    """A report without spectra gets them from lora_rank.spectral.compute_spectra."""
    import sys
    import types

    calls: list[Report] = []

    def compute_spectra(report: Report, **_: Any) -> None:
        calls.append(report)
        fill_spectra(report, path_of("qwen2"))

    monkeypatch.setitem(
        sys.modules,
        "lora_rank.spectral.compute",
        types.SimpleNamespace(compute_spectra=compute_spectra),
    )
    report = lora_rank.analyze(path_of("qwen2"))
    assert not report.has_spectra
    rec = recommend(report, "spectral")
    assert calls == [report] and report.has_spectra and rec.targets
    monkeypatch.setitem(sys.modules, "lora_rank.spectral.compute", None)  # cannot be imported
    with pytest.raises(ConfigError, match="need weight spectra"):
        recommend(lora_rank.analyze(path_of("qwen2")), "spectral")


def test_auto_skips_unusable_spectra(spectral_report: Callable[[str], Report]) -> None:
    report = spectral_report("llama")
    q = report.module("model.layers.0.self_attn.q_proj")
    saved = q.spectrum
    try:
        q.spectrum = None
        rec = recommend(report, "spectral")
        assert q.name not in rec.module_ranks()
        assert any("no spectrum" in w and q.name in w for w in rec.warnings)
    finally:
        q.spectrum = saved


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1000, 1000),
        ("0.5%", 5000),
        (0.005, 5000),
        ("0.005", 5000),
        ("2M", 2_000_000),
        ("500k", 500_000),
        ("2e6", 2_000_000),
        ("1_000", 1000),
        (2000.0, 2000),
        (None, None),
    ],
)
def test_parse_budget(given: Any, expected: Any) -> None:
    assert parse_budget(given, 1_000_000) == expected


@pytest.mark.parametrize(
    "given", ["", "abc", "0%", "150%", "-5", "-0.5%", 0, -3, 1.5, True, "1e-9", [100], "5 x"]
)
def test_parse_budget_rejects(given: Any) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(given, 1_000_000)


def test_preset_with_budget_takes_largest_uniform_rank(path_of: Callable[[str], Path]) -> None:
    report = lora_rank.analyze(path_of("minilm"))
    rec = recommend(report, "attention-qv", budget="0.5%")
    budget = parse_budget("0.5%", report.total_params)
    assert budget is not None and rec.trainable_params <= budget
    assert recommend(report, "attention-qv", r=rec.r + 1).trainable_params > budget
    assert {t.rank for t in rec.targets} == {rec.r}
    stepped = recommend(report, "attention-qv", budget="0.5%", rank_multiple=4)
    assert stepped.r % 4 == 0 and stepped.r > rec.r - 4
    with pytest.raises(ConfigError, match="below"):
        recommend(report, "attention-qv", budget=100)


def test_layers_and_exclude(path_of: Callable[[str], Path], tmp_path: Path) -> None:
    """layers / exclude restrict the targets, and PEFT wraps exactly what is left."""
    path = path_of("llama")
    report = lora_rank.analyze(path)
    rec = recommend(report, "attention-mlp", layers=[1], exclude=["attn_k", "down_proj"])
    result = check_against_peft(rec, path, tmp_path)
    assert result.modules and all(".layers.1." in n for n in result.modules)
    assert not any(n.endswith(("k_proj", "down_proj")) for n in result.modules)
    assert len(result.modules) == 5  # q, v, o, gate, up of layer 1
    rec = recommend(report, "all-linear", exclude=["model.layers.0.mlp.up_proj"])
    assert rec.target_modules == "all-linear" and rec.exclude_modules
    check_against_peft(rec, path, tmp_path)
    assert any(
        "matched no target" in w for w in recommend(report, "attention", exclude=["x"]).warnings
    )


def test_bad_arguments(path_of: Callable[[str], Path]) -> None:
    report = lora_rank.analyze(path_of("llama"))
    bad: list[dict[str, Any]] = [
        {"strategy": "everything"},
        {"r": 0},
        {"r": 2.5},
        {"lora_alpha": -1},
        {"rank_multiple": 0},
        {"strategy": "spectral", "min_rank": 6},  # not a multiple of its rank_multiple 4
        {"strategy": "spectral", "max_rank": 2},
        {"strategy": "all-linear", "rank_multiple": 4, "min_rank": 6},
        {"layers": "0"},
        {"layers": [0.5]},
        {"exclude": "q_proj"},
        {"strategy": "attention", "layers": [99]},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            recommend(report, **kwargs)


def test_rank_targets(spectral_report: Callable[[str], Report]) -> None:
    report = spectral_report("minilm")
    rows = rank_targets(report)
    kinds = [r for r in rows if r["level"] == "kind"]
    modules = [r for r in rows if r["level"] == "module"]
    assert rows == kinds + modules
    # Every module PEFT's all-linear wraps is a candidate, once.
    assert sorted(r["name"] for r in modules) == sorted(m.name for m in report.lora_targets)
    for group in (kinds, modules):
        scores = [r["score"] for r in group]
        assert scores == sorted(scores, reverse=True)
    for r in modules:
        m = report.module(r["name"])
        assert m.spectrum is not None
        assert r["score"] == r["weight"] * m.spectrum.energy_rank_90
        assert r["stable_rank"] == m.spectrum.stable_rank
        assert r["params_per_rank"] == m.in_features + m.out_features
        if m.layer is not None:
            assert r["depth"] == m.layer / 5
    pooler = next(r for r in modules if r["name"] == "pooler.dense")
    assert pooler["weight"] == 0 and pooler["score"] == 0 and math.isnan(pooler["depth"])
    by_kind = {
        r["kind"]: r for r in rank_targets(report, task="classification") if r["level"] == "kind"
    }
    assert by_kind["mlp_up"]["score"] == 0 and by_kind["attn_q"]["score"] > 0


def test_rank_targets_moe_uses_expert_spectra(spectral_report: Callable[[str], Report]) -> None:
    report = spectral_report("mixtral")
    rows = {r["name"]: r for r in report.rank_targets() if r["level"] == "module"}
    m = report.module("model.layers.0.mlp.experts.gate_up_proj")
    assert m.expert_spectra is not None and len(m.expert_spectra) == 4
    row = rows[m.name]
    assert row["effective_rank"] == sum(s.energy_rank_90 for s in m.expert_spectra) / 4
    assert row["params_per_rank"] == 4 * (32 + 96) and row["via"] == "target_parameters"


# -- real sizes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_size(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Header-true, data-sparse checkpoints of real models (``benches/checkpoints.py``: true
    names, shapes, shards and config; the data are holes)."""
    import importlib.util
    import sys

    where = Path(__file__).resolve().parents[1] / "benches" / "checkpoints.py"
    spec = importlib.util.spec_from_file_location("bench_checkpoints", where)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    root = tmp_path_factory.mktemp("real-size")
    return lambda name: Path(bench.build_sparse(bench.SPARSE[name], root))


def _hand_spectra(report: Report) -> Report:
    """Varied effective ranks (the sparse files hold no data, so spectra must be made up)."""
    for i, m in enumerate(report.modules):
        if m.in_features is None or m.out_features is None or m.kind == "embedding":
            continue
        n = min(m.in_features, m.out_features)
        e90 = max(1, int(n * (0.3 + 0.05 * (i % 9))))
        s = Spectrum((1.0,), 1.0, 1.0, 10.0, e90, e90, e90, False, 3.0, 0, "hand")
        if m.num_experts:
            m.expert_spectra = (s,) * m.num_experts
        else:
            m.spectrum = s
    report.spectral_settings = {"method": "hand"}
    return report


@pytest.mark.parametrize("name", ["llama3-8b", "mixtral-8x7b"])
def test_real_size_counts_match_peft_on_meta(name: str, real_size: Callable[[str], Path]) -> None:
    """Llama-3-8B (GQA) and Mixtral-8x7B (8 fused experts, router): PEFT on the meta-device
    model counts exactly our trainable parameters and gives each target our rank."""
    import json

    import peft
    import torch
    import transformers
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = real_size(name)
    report = _hand_spectra(lora_rank.analyze(path))
    cfg = json.loads((path / "config.json").read_text())
    for strategy, budget in [
        ("all-linear", None),
        ("attention-mlp", None),
        ("spectral", "0.5%"),
        ("spectral", "0.01%"),
    ]:
        rec = recommend(report, strategy, budget=budget)
        with torch.device("meta"):
            model = getattr(transformers, cfg["architectures"][0])(
                transformers.AutoConfig.for_model(**cfg)
            )
        wrapped = peft.get_peft_model(model, rec.to_peft(), low_cpu_mem_usage=True)
        ranks = {}
        for key, mod in wrapped.named_modules():
            if isinstance(mod, BaseTunerLayer):
                key = key.removeprefix("base_model.model.").replace(".base_layer", "")
                param = getattr(mod, "parameter_name", None)
                ranks[f"{key}.{param}" if param else key] = next(iter(mod.r.values()))
        assert wrapped.get_nb_trainable_parameters()[0] == rec.trainable_params, strategy
        assert ranks == {t.key: t.rank for t in rec.targets}, strategy
        if rec.budget is not None and strategy == "spectral":
            assert BUDGET_FLOOR * rec.budget <= rec.trainable_params <= rec.budget
