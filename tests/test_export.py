"""Trainer exports and Spectrum's selection, checked by the consumers or from their source.

- Each exported config is turned into a ``peft.LoraConfig`` the way its tool does (the code
  paths quoted below, read from each release's source), applied with PEFT to the real model,
  and PEFT's trainable count and wrapped modules must equal the recommendation's. TRL 1.16.0
  is imported and does it itself (``ModelConfig`` → ``get_peft_config``) when installed.
- Key sets are those of each tool's release (read from its source; axolotl 0.19.0 and
  LLaMA-Factory 0.9.5 pin other transformers/peft releases than this project, unsloth needs a
  GPU, so none of them is installed here).
- Spectrum: an independent implementation of spectrum.py's SNR and selection (torch
  ``svdvals`` and ``quantile`` on the loaded model's ``named_modules``, as Spectrum does)
  against ``select_unfrozen`` on MiniLM and a tiny Llama.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lora_rank
import numpy as np
import pytest
import torch
import yaml
from checkpoints import load_model
from lora_rank.cli import main
from lora_rank.errors import ConfigError
from peft_oracle import apply_peft

# -- the tools' keys, from their sources ---------------------------------------------------

#: axolotl 0.19.0, axolotl/utils/schemas/peft.py ``LoraConfig`` fields (+ ``base_model``).
AXOLOTL_KEYS = {
    "base_model", "adapter", "bnb_config_kwargs", "gptq", "load_in_4bit", "load_in_8bit",
    "lora_alpha", "lora_alpha_pattern", "lora_dropout", "lora_fan_in_fan_out",
    "lora_model_dir", "lora_modules_to_save", "lora_on_cpu", "lora_r", "lora_rank_pattern",
    "lora_target_linear", "lora_target_modules", "lora_target_parameters",
    "loraplus_lr_embedding", "loraplus_lr_ratio", "merge_lora", "merge_method", "peft",
    "peft_autocast_adapter_dtype", "peft_ensure_weight_tying", "peft_init_lora_weights",
    "peft_layer_replication", "peft_layers_pattern", "peft_layers_to_transform",
    "peft_trainable_token_indices", "peft_use_dora", "peft_use_rslora",
    "qlora_sharded_model_loading",
}  # fmt: skip
#: LLaMA-Factory 0.9.5: hparams/finetuning_args.py ``LoraArguments`` + ``finetuning_type``,
#: hparams/model_args.py ``model_name_or_path``.
LLAMA_FACTORY_KEYS = {
    "model_name_or_path", "finetuning_type", "additional_target", "create_new_adapter",
    "lora_alpha", "lora_dropout", "lora_rank", "lora_target", "loraplus_lr_embedding",
    "loraplus_lr_ratio", "pissa_convert", "pissa_init", "pissa_iter", "use_dora", "use_rslora",
}  # fmt: skip
#: unsloth 2026.10.9, unsloth/models/llama.py ``FastLlamaModel.get_peft_model`` parameters
#: (``**kwargs`` goes on to ``peft.LoraConfig``).
UNSLOTH_SIGNATURE = (
    "model", "r", "target_modules", "lora_alpha", "lora_dropout", "bias", "layers_to_transform",
    "layers_pattern", "finetune_last_n_layers", "use_gradient_checkpointing", "random_state",
    "max_seq_length", "use_rslora", "modules_to_save", "init_lora_weights", "loftq_config",
    "temporary_location", "qat_scheme", "target_parameters", "ensure_weight_tying",
    "offload_layers", "checkpoint_skip_layers",
)  # fmt: skip


def axolotl_lora_config(cfg: dict[str, Any]) -> Any:
    """axolotl 0.19.0 loaders/adapter.py ``_build_peft_lora_config`` (LoRA fields)."""
    from peft import LoraConfig

    kw: dict[str, Any] = {}
    if cfg.get("lora_rank_pattern"):
        kw["rank_pattern"] = cfg["lora_rank_pattern"]
    if cfg.get("lora_alpha_pattern"):
        kw["alpha_pattern"] = cfg["lora_alpha_pattern"]
    return LoraConfig(
        r=cfg.get("lora_r"),
        lora_alpha=cfg.get("lora_alpha"),
        target_modules=cfg.get("lora_target_modules") or [],
        target_parameters=cfg.get("lora_target_parameters") or [],
        layers_to_transform=cfg.get("peft_layers_to_transform"),
        layers_pattern=cfg.get("peft_layers_pattern"),
        lora_dropout=cfg.get("lora_dropout", 0.0),
        fan_in_fan_out=cfg.get("lora_fan_in_fan_out") or False,
        modules_to_save=cfg.get("lora_modules_to_save") or None,
        bias="none",
        **kw,
    )


def llama_factory_lora_config(args: dict[str, Any]) -> Any:
    """LLaMA-Factory 0.9.5: ``FinetuningArguments.__post_init__`` (split_arg, alpha default)
    and model/adapter.py ``_setup_lora_tuning``'s ``peft_kwargs``."""
    from peft import LoraConfig

    rank = args.get("lora_rank", 8)
    return LoraConfig(
        r=rank,
        target_modules=[item.strip() for item in args.get("lora_target", "all").split(",")],
        lora_alpha=args.get("lora_alpha") or rank * 2,
        lora_dropout=args.get("lora_dropout", 0.0),
        use_rslora=False,
        use_dora=False,
        modules_to_save=None,
    )


def unsloth_lora_config(kw: dict[str, Any]) -> Any:
    """unsloth 2026.10.9 ``get_peft_model``'s ``arguments`` dict passed to ``LoraConfig``."""
    from peft import LoraConfig

    named = {k: kw[k] for k in kw if k in UNSLOTH_SIGNATURE}
    extra = {k: kw[k] for k in kw if k not in UNSLOTH_SIGNATURE}
    return LoraConfig(
        r=named.get("r", 16),
        lora_alpha=named.get("lora_alpha", 16),
        target_modules=named.get("target_modules"),
        lora_dropout=0.0,
        bias="none",
        layers_to_transform=named.get("layers_to_transform"),
        target_parameters=named.get("target_parameters"),
        **extra,
    )


def trl_lora_config(keys: dict[str, Any]) -> Any:
    """TRL itself: ``ModelConfig(**keys)`` → ``trl.get_peft_config``."""
    trl = pytest.importorskip("trl")
    return trl.get_peft_config(trl.ModelConfig(**keys))


# -- recommendations -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_report(minilm: Path) -> lora_rank.Report:
    return lora_rank.analyze(minilm)


@pytest.fixture(scope="module")
def llama_report(checkpoint: Callable[[str], Path]) -> lora_rank.Report:
    return lora_rank.analyze(checkpoint("llama"))


def _check_with_peft(path: Path, rec: Any, config: Any) -> None:
    """PEFT applied to the real model with ``config`` wraps exactly ``rec``'s targets at their
    ranks and trains ``rec.trainable_params``."""
    got = apply_peft(path, config)
    assert got.trainable == rec.trainable_params
    assert dict(got.ranks) == {t.key: t.rank for t in rec.targets}


CASES = [
    # (model, strategy, kwargs)
    ("minilm", "attention-qv", {}),
    ("minilm", "all-linear", {}),
    ("minilm", "spectral", {"budget": "1%"}),
    ("minilm", "attention-qv", {"exclude": ["value"]}),
    ("llama", "all-linear", {"exclude": ["model.layers.0.mlp.up_proj"]}),
    ("llama", "attention-qv", {"r": 4}),
]


def _case(request: Any, model: str) -> tuple[Path, lora_rank.Report]:
    report = request.getfixturevalue(f"{model}_report")
    return Path(report.path), report


@pytest.mark.parametrize("model,strategy,kwargs", CASES)
def test_axolotl_config_trains_what_peft_counts(
    request: Any, model: str, strategy: str, kwargs: dict[str, Any]
) -> None:
    path, report = _case(request, model)
    rec = report.recommend(strategy, **kwargs)
    text = rec.export("axolotl", report=report)
    assert isinstance(text, str)
    assert f"# trainable parameters: {rec.trainable_params:,} " in text
    keys = yaml.safe_load(text)
    assert set(keys) <= AXOLOTL_KEYS
    assert keys["adapter"] == "lora" and isinstance(keys["lora_alpha"], int)
    _check_with_peft(path, rec, axolotl_lora_config(keys))


@pytest.mark.parametrize("model,strategy,kwargs", CASES)
def test_llama_factory_config_trains_what_peft_counts_or_refuses(
    request: Any, model: str, strategy: str, kwargs: dict[str, Any]
) -> None:
    path, report = _case(request, model)
    rec = report.recommend(strategy, **kwargs)
    if rec.rank_pattern or rec.alpha_pattern:
        with pytest.raises(ConfigError, match=r"^LLaMA-Factory 0\.9\.5 cannot express per-module"):
            rec.export("llama-factory", report=report)
        return
    keys = yaml.safe_load(rec.export("llama-factory", report=report))
    assert set(keys) <= LLAMA_FACTORY_KEYS and keys["finetuning_type"] == "lora"
    _check_with_peft(path, rec, llama_factory_lora_config(keys))


@pytest.mark.parametrize("model,strategy,kwargs", CASES)
def test_unsloth_keywords_match_its_signature_and_train_what_peft_counts(
    request: Any, model: str, strategy: str, kwargs: dict[str, Any]
) -> None:
    import inspect

    from peft import LoraConfig

    path, report = _case(request, model)
    rec = report.recommend(strategy, **kwargs)
    kw = rec.export("unsloth")
    assert isinstance(kw, dict)
    lora_fields = set(inspect.signature(LoraConfig).parameters)
    # Named parameters of get_peft_model, or LoraConfig fields through its **kwargs.
    assert set(kw) <= set(UNSLOTH_SIGNATURE) | lora_fields
    assert "model" not in kw
    assert isinstance(kw["target_parameters"], list)  # None would let unsloth add its own
    _check_with_peft(path, rec, unsloth_lora_config(kw))


@pytest.mark.parametrize("model,strategy,kwargs", CASES)
def test_trl_model_config_builds_the_lora_config_peft_counts(
    request: Any, model: str, strategy: str, kwargs: dict[str, Any]
) -> None:
    path, report = _case(request, model)
    rec = report.recommend(strategy, **kwargs)
    if rec.rank_pattern or rec.alpha_pattern:
        with pytest.raises(ConfigError, match=r"^TRL 1\.16\.0 cannot express per-module"):
            rec.export("trl", report=report)
        return
    keys = yaml.safe_load(rec.export("trl", report=report))
    config = trl_lora_config(keys)
    config.task_type = None  # TRL's default CAUSAL_LM; MiniLM is an encoder
    _check_with_peft(path, rec, config)


def test_consumers_own_schemas_accept_the_keys_when_installed(
    minilm_report: lora_rank.Report, monkeypatch: pytest.MonkeyPatch
) -> None:
    """axolotl's pydantic ``LoraConfig`` and LLaMA-Factory's ``FinetuningArguments`` read the
    exported keys without dropping any (neither is in the test pins: they pin other
    transformers/peft releases; this runs where they are installed, e.g. a scratch venv)."""
    recs = [minilm_report.recommend(strategy, **kw) for _, strategy, kw in CASES[:3]]
    schema = pytest.importorskip("axolotl.utils.schemas.peft")
    for rec in recs:
        keys = yaml.safe_load(rec.export("axolotl", report=minilm_report))
        keys.pop("base_model")
        dumped = schema.LoraConfig(**keys).model_dump(exclude_none=True)
        assert {k: dumped[k] for k in keys} == keys
    monkeypatch.setenv("DISABLE_VERSION_CHECK", "1")  # it pins transformers<=5.6
    args = pytest.importorskip("llamafactory.hparams.finetuning_args")
    for rec in recs[:2]:
        keys = yaml.safe_load(rec.export("llama-factory", report=minilm_report))
        keys.pop("model_name_or_path")
        fa = args.FinetuningArguments(**keys)
        assert (fa.finetuning_type, fa.lora_rank, fa.lora_alpha) == ("lora", rec.r, rec.lora_alpha)
        assert fa.lora_target == keys["lora_target"].split(",")


def test_refusals_are_one_line_and_name_what_is_lost(
    minilm_report: lora_rank.Report, llama_report: lora_rank.Report
) -> None:
    rec = minilm_report.recommend("spectral", budget="1%")
    for fmt in ("llama-factory", "trl"):
        with pytest.raises(ConfigError) as e:
            rec.export(fmt, report=minilm_report)
        assert "\n" not in str(e.value) and "per-module ranks [4, 8]" in str(e.value)
    # A translation needs the report to be checked; without it, it is refused.
    rec = llama_report.recommend("all-linear", exclude=["model.layers.0.mlp.up_proj"])
    with pytest.raises(ConfigError, match="needs the report"):
        rec.export("llama-factory")
    with pytest.raises(ConfigError, match="format must be one of"):
        rec.export("nope")
    # layers_to_transform has no LLaMA-Factory or TRL key.
    rec.layers_to_transform = [0]
    with pytest.raises(ConfigError, match=r"cannot express layers_to_transform \[0\]"):
        rec.export("llama-factory", report=llama_report)
    # Non-integer alphas: the tools' alpha fields are ints.
    rec = minilm_report.recommend("attention-qv")
    rec.lora_alpha = 12.5
    with pytest.raises(ConfigError, match=r"non-integer lora_alpha 12\.5"):
        rec.export("axolotl")


def test_trl_one_element_target_list_becomes_the_equivalent_regex(
    minilm_report: lora_rank.Report,
) -> None:
    rec = minilm_report.recommend("attention-qv", exclude=["value"])
    assert rec.target_modules == ["query"]
    keys = yaml.safe_load(rec.export("trl"))
    assert keys["lora_target_modules"] == r"(?:.*\.)?query"


def test_save_formats_and_cli(minilm_report: lora_rank.Report, tmp_path: Path) -> None:
    rec = minilm_report.recommend("attention-qv")
    assert rec.save(tmp_path / "a", format="llama-factory").name == "llama_factory_lora.yaml"
    assert rec.save(tmp_path / "a").name == "adapter_config.json"
    assert main(["recommend", "--demo", "--export", "axolotl", "--out", str(tmp_path), "-q"]) == 0
    keys = yaml.safe_load((tmp_path / "axolotl_lora.yaml").read_text())
    assert keys["lora_target_modules"] == "all-linear"
    argv = ["recommend", "--demo", "--strategy", "spectral", "--budget", "1%", "--export", "trl"]
    code = main([*argv, "--out", str(tmp_path / "t")])
    assert code == 2 and not (tmp_path / "t").exists()


# -- Spectrum -------------------------------------------------------------------------------


def spectrum_snr_results(model: Any, dtype: torch.dtype) -> dict[str, dict[str, Any]]:
    """spectrum.py (cognitivecomputations/spectrum 0ed1756) on a loaded model: weight types,
    their order and ``calculate_snr_for_layer``; its ``snr_results`` dict."""
    weight_types = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(hasattr(module, attr) for attr in ["weight", "bias", "inv_freq"]):
            layer_index = next((i for i, part in enumerate(parts) if part.isdigit()), -1)
            weight_types.add(".".join(parts[layer_index + 1 :]) if layer_index != -1 else name)
    categories: dict[str, list[str]] = {}
    for wt in weight_types:
        categories.setdefault(wt.split(".")[0], []).append(wt)
    order = [wt for c in sorted(categories) for wt in sorted(categories[c])]
    layer_snr: dict[str, dict[str, Any]] = {}
    for layer_type in order:
        for name, module in model.named_modules():
            if layer_type not in name or not hasattr(module, "weight"):
                continue
            weights = module.weight.detach().to(dtype)
            if weights.ndim < 2:
                weights = weights.unsqueeze(0)
            S = torch.linalg.svdvals(weights)
            sigma = (torch.quantile(S, 0.75) - torch.quantile(S, 0.25)) / 1.349
            n, m = weights.shape[-2:]
            beta = n / m if n < m else m / n
            threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
            signal_mask = S > threshold  # noqa: SIM300 (as spectrum.py writes it)
            noise_mask = ~signal_mask
            signal = S[signal_mask].sum() if signal_mask.any() else torch.tensor(0.0, dtype=dtype)
            noise = S[noise_mask].sum() if noise_mask.any() else torch.tensor(1.0, dtype=dtype)
            snr = signal / noise if noise != 0 else float("inf")
            layer_snr[name] = {"type": layer_type, "snr": (snr / S[0]).item()}
    return {name: {"snr": i["snr"], "type": i["type"]} for name, i in layer_snr.items()}


def spectrum_selection(results: dict[str, dict[str, Any]], top_percent: float) -> dict[str, Any]:
    """spectrum.py's ``generate_unfrozen_params_yaml``: the selection and the YAML text."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for layer_name, info in results.items():
        by_type.setdefault(info["type"], []).append((layer_name, info["snr"]))
    top = {}
    for layer_type, layers in by_type.items():
        ranked = sorted(layers, key=lambda x: x[1], reverse=True)
        top[layer_type] = [layer[0] for layer in ranked[: int(len(layers) * top_percent / 100)]]
    text = "unfrozen_parameters:\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n"
    for layer_type, names in top.items():
        text += f"# {layer_type} layers\n" + "".join(f"- {n}\n" for n in names)
    return {"snr": results, "top": top, "yaml": text}


def axolotl_unfrozen_count(model: Any, patterns: list[str]) -> int:
    """axolotl 0.19.0 utils/freeze.py ``freeze_layers_except``: ``LayerNamePattern`` (dots
    literal) ``re.match``-ed against ``named_parameters``."""
    rx = [re.compile(re.sub(r"\.(?!\+)", "\\.", p)) for p in patterns]
    return sum(p.numel() for n, p in model.named_parameters() if any(r.match(n) for r in rx))


@pytest.mark.parametrize("which", ["minilm", "llama"])
def test_spectrum_selection_equals_spectrum_side_by_side(request: Any, which: str) -> None:
    report = request.getfixturevalue(f"{which}_report")
    model = load_model(Path(report.path))
    # Spectrum's own float32 run, and the same in float64 (the exact values).
    snr32 = spectrum_snr_results(model, torch.float32)
    snr64 = spectrum_snr_results(model, torch.float64)
    for top_percent in (25, 50):
        sel = report.select_unfrozen(top_percent, progress=False)
        exact = {"snr": snr64, **spectrum_selection(snr64, top_percent)}
        as_spectrum = {"snr": snr32, **spectrum_selection(snr32, top_percent)}
        # Same layers, types and order of Spectrum's snr_results; same selection and YAML.
        assert [(n, i["type"]) for n, i in sel.snr.items()] == [
            (n, i["type"]) for n, i in as_spectrum["snr"].items()
        ]
        assert sel.selected == as_spectrum["top"] == exact["top"]
        assert sel.yaml() == as_spectrum["yaml"]
        for name, info in sel.snr.items():
            assert info["snr"] == pytest.approx(exact["snr"][name]["snr"], rel=1e-9)
            assert info["snr"] == pytest.approx(as_spectrum["snr"][name]["snr"], rel=1e-3)
        assert sel.trainable_params == axolotl_unfrozen_count(model, sel.unfrozen_parameters)
    # The files, as Spectrum names and writes them.
    files = sel.save(request.getfixturevalue("tmp_path"))
    assert [p.name for p in files] == [
        f"snr_results_{sel.slug}.json",
        f"snr_results_{sel.slug}_sorted.json",
        f"snr_results_{sel.slug}_unfrozenparameters_50percent.yaml",
    ]
    assert files[0].parent.name == "model_snr_results"
    assert json.loads(files[0].read_text()) == sel.snr
    assert yaml.safe_load(files[2].read_text())["unfrozen_parameters"] == sel.unfrozen_parameters


def test_unfreeze_cli(tmp_path: Path) -> None:
    out = tmp_path / "u"
    assert main(["unfreeze", "--demo", "--top-percent", "25", "--out", str(out), "-q"]) == 0
    assert (out / "snr_results_model_unfrozenparameters_25percent.yaml").exists()
    assert main(["unfreeze", "--demo", "--format", "axolotl", "--out", str(out), "-q"]) == 0
    text = (out / "axolotl_unfrozen.yaml").read_text()
    assert "# trainable parameters: 2,807,808 of 22,713,216" in text
    assert main(["unfreeze", "--demo", "--top-percent", "0"]) == 2
