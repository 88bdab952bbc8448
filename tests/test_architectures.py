"""The generated architecture tables against PEFT and transformers, on real checkpoints.

Every architecture of ``tests/checkpoints.py`` (``ARCHS`` + ``WIDE_ARCHS``: decoders, MoE with
dense first layers and shared experts, encoders, encoder-decoders, vision, audio/CTC,
multimodal, tied embeddings, classification heads) is saved with ``save_pretrained`` and
analysed header-only. The oracle is PEFT on the model transformers loads from the checkpoint:
the modules and parameters it wraps for ``target_modules="all-linear"``, and its trainable count
for the configs lora_rank emits; module classes come from the loaded model, element counts from
the safetensors headers. The drift test regenerates a sample of the tables from the installed
libraries and compares them by content.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lora_rank
import pytest
from checkpoints import ARCHS, WIDE_ARCHS, load_model
from lora_rank.inventory import architectures
from lora_rank.recommend.strategies import recommend
from peft_oracle import PeftResult, apply_peft

ALL = sorted({**ARCHS, **WIDE_ARCHS})
ROOT = Path(__file__).resolve().parent.parent
#: Presets checked against PEFT's trainable count on every architecture, besides all-linear.
PRESET = "attention"
#: Architectures without attention modules of their own kinds (the preset has nothing to target).
NO_ATTENTION: frozenset[str] = frozenset()
#: Modules the tables cannot know, guessed with a warning that names them: Llama-4 with
#: ``interleave_moe_layer_step=2`` (as Maverick ships) has dense MLP layers that the default
#: config (every layer MoE) never builds. The PEFT checks below still hold for them.
#: DeBERTa-v2 with ``pos_att_type=["p2c", "c2p"]`` (as DeBERTa-v3 ships; a list, not a flag
#: the generator flips) has ``pos_key_proj`` / ``pos_query_proj``, absent from the defaults.
KNOWN_GUESSED: dict[str, set[str]] = {
    "llama4": {
        f"language_model.model.layers.0.feed_forward.{p}"
        for p in ("gate_proj", "up_proj", "down_proj")
    },
    "deberta_v2": {
        f"deberta.encoder.layer.{i}.attention.self.{p}"
        for i in (0, 1)
        for p in ("pos_key_proj", "pos_query_proj")
    },
}


@functools.cache
def _all_linear(path: Path) -> PeftResult:
    import peft

    return apply_peft(path, peft.LoraConfig(target_modules="all-linear"))


@functools.cache
def _analyzed(path: Path) -> lora_rank.Report:
    return lora_rank.analyze(path)


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "np") as s:
            for k in s.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[k] = tuple(s.get_slice(k).get_shape())
    return shapes


def test_at_least_sixty_architectures() -> None:
    assert len(ALL) >= 60
    classes = {a.model_class for a in [*ARCHS.values(), *WIDE_ARCHS.values()]}
    for required in (
        "ViTForImageClassification",
        "DebertaV2ForSequenceClassification",
        "DeepseekV3ForCausalLM",
        "CLIPModel",
        "SiglipModel",
        "WhisperForConditionalGeneration",
        "Wav2Vec2ForCTC",
        "Gemma3ForConditionalGeneration",
        "Llama4ForConditionalGeneration",
    ):
        assert required in classes


@pytest.mark.parametrize("arch", ALL)
def test_resolved_through_the_table_without_guessing(
    arch: str, checkpoint: Callable[[str], Path]
) -> None:
    report = _analyzed(checkpoint(arch))
    assert report.resolution == "table"
    guessed = KNOWN_GUESSED.get(arch, set())
    warned = [w for w in report.warnings if "guessed" in w]
    assert len(warned) == (1 if guessed else 0), report.warnings
    assert all(name in warned[0] for name in guessed)
    assert {m.name for m in report.modules if m.module_class is None} == guessed


@pytest.mark.parametrize("arch", ALL)
def test_all_linear_targets_equal_peft(arch: str, checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint(arch)
    report = _analyzed(path)
    oracle = _all_linear(path)
    modules = {m.name for m in report.lora_targets if m.parameter is None}
    params = {m.parameter for m in report.lora_targets if m.parameter is not None}
    assert modules == set(oracle.modules)
    assert params == set(oracle.parameters)


@pytest.mark.parametrize("preset", ["all-linear", PRESET])
@pytest.mark.parametrize("arch", ALL)
def test_trainable_count_equals_peft(
    arch: str, preset: str, checkpoint: Callable[[str], Path]
) -> None:
    if preset == PRESET and arch in NO_ATTENTION:
        pytest.skip(f"{arch} has no attention modules")
    path = checkpoint(arch)
    rec = recommend(_analyzed(path), preset)
    result = apply_peft(path, rec.to_peft())
    assert result.trainable == rec.trainable_params
    assert result.modules == {t.key for t in rec.targets if not t.is_parameter}
    assert result.parameters == {t.key for t in rec.targets if t.is_parameter}


@pytest.mark.parametrize("arch", ALL)
def test_counts_and_classes_match_headers_and_model(
    arch: str, checkpoint: Callable[[str], Path]
) -> None:
    path = checkpoint(arch)
    report = _analyzed(path)
    headers = _header_shapes(path)
    assert report.total_params == sum(math.prod(s) for s in headers.values())
    assert sorted(k for m in report.modules for k in m.checkpoint_keys) == sorted(headers)
    model: Any = load_model(path)
    for m in report.modules:
        if m.parameter is not None or m.num_experts is not None:
            continue
        try:
            runtime = model.get_submodule(m.name)
        except AttributeError:
            continue  # a bare parameter or buffer: its owner's class is recorded
        if m.module_class is None:  # guessed, and named in a warning (tested above)
            assert m.name in KNOWN_GUESSED.get(arch, set())
            continue
        assert type(runtime).__name__ == m.module_class, m.name


def test_per_key_modules_equal_the_grouped_ones(
    checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where every key is a module of its own (no biases, converters or shared modules),
    ``build_modules`` makes the modules key by key; they equal, field by field and with the
    same warnings, what grouping the keys first gives (the path PEFT checks on every other
    architecture). Also on a class the table lacks (``lm_head`` guessed) and with no table."""
    import json

    from lora_rank.inventory import modules

    def inputs(path: Path) -> tuple[list[Any], dict[str, Any]]:
        config = json.loads((path / "config.json").read_text())
        return list(_analyzed(path).tensors), config

    cases = [inputs(checkpoint(arch)) for arch in ALL]
    tensors, config = inputs(checkpoint("llama"))
    cases += [
        (tensors, {**config, "architectures": ["NoSuchLlamaHead"]}),
        (tensors, {**config, "architectures": ["NoSuchModel"], "model_type": "no-such-type"}),
    ]
    per_key = modules._one_module_per_key
    taken: list[bool] = []

    def spy(*args: Any) -> Any:
        made = per_key(*args)
        taken.append(made is not None)
        return made

    for tensors, config in cases:
        with monkeypatch.context() as m:
            m.setattr(modules, "_one_module_per_key", spy)
            fast = modules.build_modules(tensors, config)
        with monkeypatch.context() as m:
            m.setattr(modules, "_one_module_per_key", lambda *a: None)
            grouped = modules.build_modules(tensors, config)
        assert fast == grouped, config.get("architectures")
    # The per-key path is not vacuous here: a good part of the architectures take it.
    assert len(taken) == len(cases) and sum(taken) >= 10, sum(taken)
    assert taken[-2:] == [True, False]  # the guessed lm_head per key; no table: grouped


def test_the_three_reported_failures(checkpoint: Callable[[str], Path]) -> None:
    """ViT head names are transformers 5's, DeBERTa-v2's rel_embeddings is an embedding, and
    DeepSeek-V3's dense first-layer MLP is not an all-linear target (PEFT is the oracle above;
    these pin the names)."""
    vit = _analyzed(checkpoint("vit"))
    assert vit.module("vit.layers.0.attention.q_proj").is_lora_target
    deberta = _analyzed(checkpoint("deberta_v2"))
    rel = deberta.module("deberta.encoder.rel_embeddings")
    assert (rel.kind, rel.is_lora_target, rel.module_class) == ("embedding", False, "Embedding")
    deepseek = _analyzed(checkpoint("deepseek_v3"))
    dense = deepseek.module("model.layers.0.mlp.gate_proj")
    assert dense.module_class == "Linear" and not dense.is_lora_target


def test_fallbacks_are_named(tmp_path: Path, checkpoint: Callable[[str], Path]) -> None:
    """A class the tables do not know falls back to its model type's base class (LlamaModel:
    ``lm_head`` is not in it, so it is guessed and named); with neither, the report says
    heuristic. Both warnings point to resolve='transformers'."""
    import json
    import shutil

    src = checkpoint("llama")
    for name, arch, model_type, want, named in [
        ("base", "NoSuchLlamaHead", "llama", "table", "lm_head"),
        ("none", "NoSuchModel", "no-such-type", "heuristic", "NoSuchModel"),
    ]:
        out = tmp_path / name
        shutil.copytree(src, out)
        cfg = json.loads((out / "config.json").read_text())
        cfg.update(architectures=[arch], model_type=model_type)
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.warns(UserWarning, match="resolve='transformers'"):
            report = lora_rank.analyze(out)
        assert report.resolution == want
        warned = [w for w in report.warnings if "guessed" in w]
        assert len(warned) == 1 and named in warned[0] and "resolve='transformers'" in warned[0]
        guessed = {m.name for m in report.modules if m.module_class is None}
        assert guessed == ({"lm_head"} if want == "table" else {m.name for m in report.modules})


def test_tables_cover_the_auto_mappings() -> None:
    """Every auto-mapping class has a table or a recorded reason."""
    from transformers.models.auto import modeling_auto

    classes: set[str] = set()
    for attr in dir(modeling_auto):
        if attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES"):
            for names in getattr(modeling_auto, attr).values():
                classes.update([names] if isinstance(names, str) else names)
    covered = set(architectures.table_classes()) | set(architectures.failed_classes())
    assert classes == covered
    assert len(architectures.table_classes()) > 0.8 * len(classes)


def test_import_reads_no_table() -> None:
    code = (
        "import lora_rank, sys\n"
        "from lora_rank.inventory import architectures as a\n"
        "assert a._index.cache_info().currsize == 0\n"
        "assert a._model_type_file.cache_info().currsize == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generated_sample_matches_the_shipped_tables() -> None:
    """Drift: regenerate a seeded sample of classes (plus the three of issue 13) from the
    installed transformers and PEFT and compare by content (versions are not compared)."""
    named = "ViTForImageClassification,DebertaV2ForSequenceClassification,DeepseekV3ForCausalLM"
    sample = os.environ.get("LORA_RANK_TABLE_SAMPLE", "8")
    script = ROOT / "scripts/generate_architectures.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quiet", "--classes", named, "--sample", sample],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.strip() == "up to date"


def test_fused_keys_renamed_per_pattern_equal_per_key(
    checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys that a converter fuses (per-expert weights → one stacked parameter) are renamed
    once per pattern, the kept indices traced with one placeholder per index; the modules
    equal, field by field and with the same warnings, those made when every such key is
    renamed on its own (the path PEFT checks above). Not vacuous: MoE architectures whose
    rules spell no digit (DeepSeek, Qwen-MoE, ...; Mixtral's ``w1``/``w3`` rules keep it per
    key) take the pattern path."""
    import json

    from lora_rank.inventory import modules

    traced: list[str] = []
    real = architectures.Table._kept_slots

    def spy(self: architectures.Table, *args: Any) -> Any:
        kept = real(self, *args)
        if kept is not None:
            traced.append(self.class_name)
        return kept

    for arch in ALL:
        path = checkpoint(arch)
        config = json.loads((path / "config.json").read_text())
        tensors = list(_analyzed(path).tensors)
        architectures.table.cache_clear()
        with monkeypatch.context() as m:
            m.setattr(architectures.Table, "_kept_slots", spy)
            fast = modules.build_modules(tensors, config)
        architectures.table.cache_clear()
        with monkeypatch.context() as m:
            m.setattr(architectures.Table, "_kept_slots", lambda *a: None)
            per_key = modules.build_modules(tensors, config)
        architectures.table.cache_clear()
        assert fast == per_key, arch
    assert {"DeepseekV3ForCausalLM", "Qwen2MoeForCausalLM"} <= set(traced), sorted(set(traced))
