"""Quantized checkpoints (FP8 block-scaled, GPTQ, AWQ, compressed-tensors): inventory,
dequantization and spectra.

Fixtures are the tiny llama's real weights quantized with each format's published packing
(``quant_packers``); the references are numpy (float32 dequantization, float64 SVD), PEFT on
the unquantized model for targets and trainable counts, transformers' ``Fp8Dequantize`` for
FP8 bit for bit, and the ``compressed-tensors`` library's own decompression for its formats.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lora_rank
import numpy as np
import pytest
import quant_packers as qp
from lora_rank import _core
from lora_rank.spectral.compute import compute_spectra
from lora_rank.spectral.jobs import Plan, shard_files

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_BLOCK = (16, 24)  # partial column blocks on the 32-wide inputs
GROUP = 16


def _load(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _save(out: Path, tensors: dict[str, Any], config: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in tensors.items()},
        str(out / "model.safetensors"),
    )
    (out / "config.json").write_text(json.dumps(config))
    return out


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in LINEARS


def quantize_checkpoint(src: Path, out: Path, method: str) -> tuple[Path, dict[str, np.ndarray]]:
    """``src`` with every decoder linear quantized by ``method``; returns the path and the
    reference-dequantized weight of each module ([out, in] float32)."""
    weights = _load(src)
    config = json.loads((src / "config.json").read_text())
    tensors: dict[str, Any] = {}
    ref: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if not _is_linear(name):
            tensors[name] = w
            continue
        p = name.removesuffix(".weight")
        w = w.astype(np.float32)
        if method == "fp8":
            q, scale = qp.fp8_block(w, FP8_BLOCK)
            tensors[name], tensors[p + ".weight_scale_inv"] = q, scale
            ref[p] = qp.fp8_reference(q, scale, FP8_BLOCK)
        elif method == "gptq":
            t = qp.gptq(w, 4, GROUP, act_order=p.endswith("down_proj"), seed=len(p))
            tensors.update({f"{p}.{k}": v for k, v in t.items()})
            ref[p] = qp.gptq_reference(t, 4)
        elif method == "ct-int4":
            t = qp.ct_pack(w, 4, GROUP)
            tensors.update({f"{p}.{k}": v for k, v in t.items()})
            ref[p] = qp.ct_pack_reference(t, 4)
        elif method.startswith("bnb-4"):
            t = qp.bnb4(w, method.split("-")[2], nested=method.endswith("nested"))
            tensors.update({f"{p}.{k}": v for k, v in t.items()})
            ref[p] = qp.bnb4_reference(t)
        elif method == "bnb-8":
            cb, scb = qp.bnb8(w)
            tensors[name], tensors[p + ".SCB"] = cb, scb
            ref[p] = (cb.numpy().astype(np.float32) * scb.numpy()[:, None]) * np.float32(
                7.874015718698502e-3
            )
        elif method == "ct-int8":
            import torch

            t = qp.ct_int(w, CT_W8A8, torch.bfloat16)
            tensors.update({f"{p}.{k}": v for k, v in t.items()})
            ref[p] = qp.ct_int_reference(t, CT_W8A8)
        elif method == "ct-fp8":
            q, scale = qp.ct_fp8_channel(w)
            tensors[name], tensors[p + ".weight_scale"] = q, scale
            ref[p] = qp.fp8_reference(q, scale, (1, w.shape[1]))
        else:
            t = qp.awq(w, GROUP)
            tensors.update({f"{p}.{k}": v for k, v in t.items()})
            ref[p] = qp.awq_reference(t, GROUP)
    config["quantization_config"] = {
        "fp8": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": list(FP8_BLOCK)},
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": True},
        "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"},
        "ct-int4": ct_config("pack-quantized", "int", 4, "group", GROUP),
        "ct-fp8": ct_config("float-quantized", "float", 8, "channel", None),
        "ct-int8": ct_scheme_config(CT_W8A8, "int-quantized"),
        "bnb-4-nf4-nested": bnb_config(4, "nf4", True),
        "bnb-4-fp4": bnb_config(4, "fp4", False),
        "bnb-8": bnb_config(8),
    }[method]
    return _save(out, tensors, config), ref


def ct_config(fmt: str, kind: str, bits: int, strategy: str, group: int | None) -> dict[str, Any]:
    """``quantization_config`` as the compressed-tensors library writes it."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    args = QuantizationArgs(
        num_bits=bits, type=kind, symmetric=True, strategy=strategy, group_size=group
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        format=fmt,
        quantization_status="compressed",
        ignore=["lm_head"],
    )
    return config.model_dump(mode="json")


def ct_scheme_config(scheme: Any, fmt: str) -> dict[str, Any]:
    """``quantization_config`` of one compressed-tensors scheme, as the library writes it."""
    from compressed_tensors.quantization import QuantizationConfig

    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        format=fmt,
        quantization_status="compressed",
        ignore=["lm_head"],
    )
    return config.model_dump(mode="json")


#: llm-compressor's W8A8 int scheme: int8 weights per channel, symmetric; int8 activations,
#: dynamic per token.
CT_W8A8 = qp.ct_int_scheme(8, "channel", None, True)


def bnb_config(
    bits: int, quant_type: str = "nf4", nested: bool = False, storage: str = "uint8"
) -> dict[str, Any]:
    """``quantization_config`` as transformers writes it for bitsandbytes."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=nested,
        bnb_4bit_quant_storage=storage,
    )
    return config.to_dict()


@pytest.fixture(scope="module")
def quantized(
    checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], tuple[Path, dict[str, np.ndarray]]]:
    cache: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}

    def get(method: str) -> tuple[Path, dict[str, np.ndarray]]:
        if method not in cache:
            out = tmp_path_factory.mktemp(f"quant-{method}")
            cache[method] = quantize_checkpoint(checkpoint("llama"), out, method)
        return cache[method]

    return get


def _dequantized(report: lora_rank.Report) -> dict[str, np.ndarray]:
    """Every quantized module's matrix as the engine decodes it, in the streamed orientation
    made [out, in] again."""
    plan = Plan(report)
    shards = shard_files(report)
    out = {}
    for (module, _), job, quant in zip(plan.targets, plan.jobs, plan.quant):
        if quant is None:
            continue
        rows, cols = sum(s[2] for s in job[1]), job[2]
        m = np.frombuffer(_core.read_matrix(shards, job, quant), np.float32).reshape(rows, cols)
        out[module.name] = m.T if quant[0][0] in ("gptq", "awq") else m
    return out


METHODS = (
    "fp8",
    "gptq",
    "awq",
    "ct-int4",
    "ct-fp8",
    "ct-int8",
    "bnb-4-nf4-nested",
    "bnb-4-fp4",
    "bnb-8",
)
#: ``Quantization.method`` of each fixture method.
METHOD_NAME = {
    "ct-int4": "compressed-tensors",
    "ct-fp8": "compressed-tensors",
    "ct-int8": "compressed-tensors",
    "bnb-4-nf4-nested": "bitsandbytes",
    "bnb-4-fp4": "bitsandbytes",
    "bnb-8": "bitsandbytes",
}


@pytest.mark.parametrize("method", METHODS)
def test_inventory_is_the_logical_model(
    method: str, quantized: Any, checkpoint: Callable[[str], Path]
) -> None:
    path, ref = quantized(method)
    plain = lora_rank.analyze(checkpoint("llama"))
    report = lora_rank.analyze(path)
    summary = lambda r: [  # noqa: E731
        (m.name, m.kind, m.in_features, m.out_features, m.params, m.is_lora_target)
        for m in r.modules
    ]
    assert summary(report) == summary(plain)
    assert report.total_params == plain.total_params
    assert report.stored_elements == sum(t.numel for t in report.tensors)
    assert report.stored_elements != report.total_params
    quantized_mods = [m for m in report.modules if m.quantization is not None]
    assert {m.name for m in quantized_mods} == set(ref)
    for m in quantized_mods:
        q = m.quantization
        assert q is not None and q.method == METHOD_NAME.get(method, method)
        assert all(k.startswith(m.name + ".") for k in m.checkpoint_keys)
        roles = dict(q.aux)
        if method == "fp8":
            assert (q.bits, q.block_size, m.dtype) == (8, FP8_BLOCK, "F8_E4M3")
            assert roles == {"scales": m.name + ".weight_scale_inv"}
        elif method == "ct-int4":
            assert (q.bits, q.group_size, q.checkpoint_format) == (4, GROUP, "pack-quantized")
            assert roles == {"scales": m.name + ".weight_scale", "shape": m.name + ".weight_shape"}
            assert q.weight_key == m.name + ".weight_packed"
        elif method.startswith("bnb-4"):
            nested = method.endswith("nested")
            assert (q.bits, q.block_size, m.dtype) == (4, (64, 256 if nested else 0), "U8")
            assert q.checkpoint_format == method.split("-")[2]
            assert {"absmax", "quant_map", "quant_state"} <= set(roles)
            assert ("nested_absmax" in roles) == nested == (q.absmax_offset is not None)
        elif method == "bnb-8":
            assert (q.bits, m.dtype, roles) == (8, "I8", {"scales": m.name + ".SCB"})
        elif method == "ct-int8":
            assert (q.bits, q.group_size, q.block_size) == (8, -1, (1, m.in_features))
            assert (q.checkpoint_format, m.dtype) == ("int-quantized", "I8")
            assert roles == {"scales": m.name + ".weight_scale"}
        elif method == "ct-fp8":
            assert (q.bits, q.block_size) == (8, (1, m.in_features))
            assert (q.checkpoint_format, m.dtype) == ("float-quantized", "F8_E4M3")
            assert roles == {"scales": m.name + ".weight_scale"}
        else:
            assert (q.bits, q.group_size, m.dtype) == (4, GROUP, "I32")
            assert roles["zeros"] == m.name + ".qzeros"
            assert ("g_idx" in roles) == (method == "gptq")
        assert m.to_dict()["quantization"]["method"] == METHOD_NAME.get(method, method)


@pytest.mark.parametrize("method", METHODS)
def test_trainable_count_equals_peft(
    method: str, quantized: Any, checkpoint: Callable[[str], Path]
) -> None:
    from peft import LoraConfig
    from peft_oracle import apply_peft

    path, _ = quantized(method)
    report = lora_rank.analyze(path)
    r = 4
    names = sorted({m.short_name for m in report.lora_targets})
    peft = apply_peft(checkpoint("llama"), LoraConfig(r=r, target_modules=names))
    assert peft.modules == {m.name for m in report.lora_targets}
    assert peft.trainable == sum(
        r * (m.in_features or 0) + r * (m.out_features or 0) for m in report.lora_targets
    )


@pytest.mark.parametrize("method", METHODS)
def test_dequantization_is_bit_exact_against_numpy(method: str, quantized: Any) -> None:
    path, ref = quantized(method)
    got = _dequantized(lora_rank.analyze(path))
    assert set(got) == set(ref)
    for name, w in ref.items():
        assert got[name].shape == w.shape, name
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_spectra_are_of_the_dequantized_weights(method: str, quantized: Any) -> None:
    path, ref = quantized(method)
    report = lora_rank.analyze(path, spectral=True, method="exact", top_k=8, progress=False)
    for name, w in ref.items():
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        sp = report.module(name).spectrum
        assert sp is not None
        np.testing.assert_allclose(sp.singular_values, s[:8], rtol=1e-4, err_msg=name)
        assert sp.frobenius_norm == pytest.approx(np.linalg.norm(w.astype(np.float64)), rel=1e-6)


def _spectral_matrix(m: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = min(64, m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = 3.0 * np.arange(1, k + 1) ** -0.7
    noise = 0.01 * rng.standard_normal((m, n))
    return ((u * s) @ v.T + noise).astype(np.float32)


def _single_linear(tmp: Path, tensors: dict[str, Any], qc: dict[str, Any]) -> Path:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": qc,
    }
    return _save(tmp, tensors, config)


@pytest.mark.parametrize("method", ["gptq", "fp8"])
def test_large_matrix_streams_in_panels(method: str, tmp_path: Path) -> None:
    """1024 × 2048 (GPTQ act-order, 4 panels of 512 streamed rows; FP8 128×128): bit-exact
    dequantization and randomized spectra within the bf16 bounds of numpy's float64 SVD."""
    w = _spectral_matrix(1024, 2048, 3)
    p = "model.layers.0.mlp.down_proj"
    if method == "gptq":
        t = qp.gptq(w, 4, 128, act_order=True)
        ref = qp.gptq_reference(t, 4)
        qc = {"quant_method": "gptq", "bits": 4, "group_size": 128}
        tensors: dict[str, Any] = {f"{p}.{k}": v for k, v in t.items()}
    else:
        q, scale = qp.fp8_block(w, (128, 128))
        ref = qp.fp8_reference(q, scale, (128, 128))
        qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
        tensors = {f"{p}.weight": q, f"{p}.weight_scale_inv": scale}
    report = lora_rank.analyze(_single_linear(tmp_path, tensors, qc))
    np.testing.assert_array_equal(_dequantized(report)[p], ref)
    compute_spectra(report, method="randomized", progress=False)
    s = np.linalg.svd(ref.astype(np.float64), compute_uv=False)
    sp = report.module(p).spectrum
    assert sp is not None
    rel = np.abs(np.array(sp.singular_values) - s[:32]) / s[:32]
    assert rel[0] <= 5e-3 and rel.max() <= 1e-2, rel


def test_fp8_matches_transformers_dequantize_bit_for_bit(tmp_path: Path) -> None:
    import torch
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    w = _spectral_matrix(384, 256, 5)
    q, scale = qp.fp8_block(w, (128, 128))
    theirs = Fp8Dequantize(None)._dequantize_one(
        q, torch.from_numpy(scale), output_dtype=torch.float32
    )
    p = "model.layers.0.self_attn.o_proj"
    tensors = {f"{p}.weight": q, f"{p}.weight_scale_inv": scale}
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    report = lora_rank.analyze(_single_linear(tmp_path, tensors, qc))
    np.testing.assert_array_equal(_dequantized(report)[p], theirs.numpy())


def _gptq_tensors() -> dict[str, Any]:
    t = qp.gptq(_spectral_matrix(64, 32, 1), 4, 16, act_order=False)
    return {f"l.{k}": v for k, v in t.items()}


GPTQ_QC = {"quant_method": "gptq", "bits": 4, "group_size": 16}
FP8_QC = {"quant_method": "fp8", "weight_block_size": [16, 16]}


def _fp8_tensors() -> dict[str, Any]:
    q, scale = qp.fp8_block(_spectral_matrix(40, 32, 2), (16, 16))
    return {"l.weight": q, "l.weight_scale_inv": scale}


MALFORMED: list[tuple[str, Callable[[], dict[str, Any]], dict[str, Any], type, str]] = [
    (
        "fp8 scale shape",
        lambda: {**_fp8_tensors(), "l.weight_scale_inv": np.ones((2, 2), np.float32)},
        FP8_QC,
        lora_rank.HeaderError,
        "'l.weight_scale_inv': shape [2, 2], but the scales of a [40, 32]",
    ),
    (
        "fp8 scales missing",
        lambda: {"l.weight": _fp8_tensors()["l.weight"]},
        FP8_QC,
        lora_rank.HeaderError,
        "'l.weight': an FP8 weight without its block scales",
    ),
    (
        "fp8 per-tensor",
        _fp8_tensors,
        {"quant_method": "fp8"},
        lora_rank.UnsupportedFormatError,
        "per-tensor FP8",
    ),
    (
        "gptq 3 bits",
        _gptq_tensors,
        {**GPTQ_QC, "bits": 3},
        lora_rank.UnsupportedFormatError,
        "3-bit weights are not supported",
    ),
    (
        "gptq zeros missing",
        lambda: {k: v for k, v in _gptq_tensors().items() if k != "l.qzeros"},
        GPTQ_QC,
        lora_rank.HeaderError,
        "'l.qweight': packed weights without l.qzeros",
    ),
    (
        "gptq packed size vs scales",
        lambda: {**_gptq_tensors(), "l.scales": np.ones((2, 40), np.float16)},
        GPTQ_QC,
        lora_rank.HeaderError,
        "'l.scales': shape [2, 40], but the scales of a [64, 32]",
    ),
    (
        "gptq groups",
        lambda: {**_gptq_tensors(), "l.scales": np.ones((3, 64), np.float16)},
        GPTQ_QC,
        lora_rank.HeaderError,
        "'l.qzeros': shape [2, 8], but the packed zero points of 3",
    ),
    (
        "gptq g_idx length",
        lambda: {**_gptq_tensors(), "l.g_idx": np.zeros(10, np.int32)},
        GPTQ_QC,
        lora_rank.HeaderError,
        "'l.g_idx': shape [10], but g_idx of the input features",
    ),
    (
        "gptq marlin",
        _gptq_tensors,
        {**GPTQ_QC, "checkpoint_format": "marlin"},
        lora_rank.UnsupportedFormatError,
        "checkpoint_format 'marlin' is not supported",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "qc", "error", "message"), MALFORMED, ids=[c[0] for c in MALFORMED]
)
def test_malformed_quantized_checkpoints(
    case: str,
    make: Callable[[], dict[str, Any]],
    qc: dict[str, Any],
    error: type,
    message: str,
    tmp_path: Path,
) -> None:
    path = _single_linear(tmp_path, make(), qc)
    with pytest.raises(error) as info:
        lora_rank.analyze(path)
    assert message in str(info.value)


def test_unsupported_method_and_unconfirmed_format_warn(tmp_path: Path) -> None:
    tensors = _gptq_tensors()
    path = _single_linear(tmp_path / "hqq", tensors, {"quant_method": "hqq"})
    with pytest.warns(UserWarning, match="'hqq' is not supported by lora_rank yet"):
        report = lora_rank.analyze(path)
    assert all(m.quantization is None for m in report.modules)
    path = _save(tmp_path / "noconfig", tensors, {"model_type": "llama"})
    with pytest.warns(UserWarning, match="looks GPTQ/AWQ-quantized"):
        lora_rank.analyze(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = lora_rank.analyze(_single_linear(tmp_path / "ok", tensors, GPTQ_QC))
    assert not [w for w in seen if "quantiz" in str(w.message)]
    assert report.module("l").quantization is not None


@pytest.mark.parametrize(
    ("bits", "strategy", "group", "shape"),
    [
        (4, "group", 16, (24, 64)),
        (8, "channel", None, (16, 40)),
        (3, "group", 32, (8, 96)),  # values straddle words
        (2, "tensor", None, (8, 48)),
        (5, "group", 4, (4, 20)),  # in_features × bits not a multiple of 32
    ],
)
def test_compressed_tensors_pack_quantized_matches_the_library(
    bits: int, strategy: str, group: int | None, shape: tuple[int, int], tmp_path: Path
) -> None:
    """The engine's dequantization of ``pack-quantized`` weights equals the compressed-tensors
    library's own ``PackedQuantizationCompressor.decompress`` (scales given as float32, so the
    library computes in float32 as the engine does), value for value."""
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    w = _spectral_matrix(*shape, seed=bits).astype(np.float32)
    t = qp.ct_pack(w, bits, group)
    if strategy == "tensor":
        t["weight_scale"] = np.array([float(t["weight_scale"].max())], np.float32)
    path = _single_linear(
        tmp_path,
        {f"l.{k}": v for k, v in t.items()},
        ct_config("pack-quantized", "int", bits, strategy, group),
    )
    report = lora_rank.analyze(path)
    m = report.module("l")
    assert (m.out_features, m.in_features, m.params) == (*shape, shape[0] * shape[1])
    got = _dequantized(report)["l"]
    args = QuantizationArgs(
        num_bits=bits, type="int", symmetric=True, strategy=strategy, group_size=group
    )
    state = {k: torch.from_numpy(v) for k, v in t.items()}
    if strategy == "tensor":
        state["weight_scale"] = state["weight_scale"].reshape(1, 1)
    want = PackedQuantizationCompressor.decompress(
        state, QuantizationScheme(targets=["Linear"], weights=args)
    )["weight"]
    assert want.dtype == torch.float32
    np.testing.assert_array_equal(got, want.numpy())
    if strategy != "tensor":
        np.testing.assert_array_equal(got, qp.ct_pack_reference(t, bits))


def test_compressed_tensors_fp8_matches_the_library(tmp_path: Path) -> None:
    """``float-quantized`` FP8 (channel strategy): the engine equals the library's
    ``dequantize`` in float32."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    w = _spectral_matrix(24, 40, seed=5).astype(np.float32)
    q, scale = qp.ct_fp8_channel(w)
    path = _single_linear(
        tmp_path,
        {"l.weight": q, "l.weight_scale": scale},
        ct_config("float-quantized", "float", 8, "channel", None),
    )
    got = _dequantized(lora_rank.analyze(path))["l"]
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel")
    want = dequantize(q, torch.from_numpy(scale), args=args, dtype=torch.float32)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("l.weight_scale"), "without l.weight_scale"),
        (lambda t: t.pop("l.weight_shape"), "without l.weight_shape"),
        (lambda t: t.update({"l.weight_scale": np.ones((8, 3), np.float32)}), "must be \\[8, 2\\]"),
        (
            lambda t: t.update({"l.weight_packed": t["l.weight_packed"][:, :-1].copy()}),
            "values \\[8, 64\\]",
        ),
        (lambda t: t.update({"l.weight_zero_point": np.zeros((1, 2), np.int32)}), "zero points"),
    ],
)
def test_malformed_compressed_tensors_name_tensor_and_rule(
    change: Callable[[dict[str, Any]], Any], match: str, tmp_path: Path
) -> None:
    w = _spectral_matrix(8, 64, seed=1).astype(np.float32)
    t = {f"l.{k}": v for k, v in qp.ct_pack(w, 4, 32).items()}
    change(t)
    path = _single_linear(tmp_path, t, ct_config("pack-quantized", "int", 4, "group", 32))
    with pytest.raises(lora_rank.HeaderError, match=match) as e:
        lora_rank.analyze(path)
    assert "model.safetensors" in str(e.value) and "'l." in str(e.value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"format": "nvfp4-pack-quantized"}, "format 'nvfp4-pack-quantized' is not supported"),
        ({"quantization_status": "frozen"}, "quantization_status 'frozen'"),
        ({"weights": {"symmetric": False}}, "asymmetric"),
        ({"weights": {"num_bits": 1}}, "1-bit int weights are not supported"),
    ],
)
def test_unsupported_compressed_tensors_variants_are_refused(
    edit: dict[str, Any], match: str, tmp_path: Path
) -> None:
    w = _spectral_matrix(8, 64, seed=1).astype(np.float32)
    t = {f"l.{k}": v for k, v in qp.ct_pack(w, 4, 32).items()}
    qc = ct_config("pack-quantized", "int", 4, "group", 32)
    if "weights" in edit:
        qc["config_groups"]["group_0"]["weights"].update(edit["weights"])
    else:
        qc.update(edit)
    with pytest.raises(lora_rank.UnsupportedFormatError, match=match):
        lora_rank.analyze(_single_linear(tmp_path, t, qc))


@pytest.mark.parametrize(
    ("bits", "strategy", "group", "symmetric", "scale_dtype"),
    [
        (8, "channel", None, True, "float32"),  # llm-compressor's W8A8
        (8, "channel", None, True, "bfloat16"),  # ... as a bf16 model saves it
        (8, "tensor", None, True, "float16"),
        (8, "group", 8, True, "float32"),
        (8, "channel", None, False, "float32"),  # asymmetric: zero points
        (8, "tensor", None, False, "bfloat16"),
        (8, "group", 8, False, "float32"),
        (4, "group", 16, False, "float32"),  # W4 ints, one per byte
    ],
)
def test_compressed_tensors_int_quantized_matches_the_library(
    bits: int,
    strategy: str,
    group: int | None,
    symmetric: bool,
    scale_dtype: str,
    tmp_path: Path,
) -> None:
    """``int-quantized`` (W8A8) made by compressed-tensors' own compressor: the inventory shows
    the logical [out, in] weight, the engine's dequantization equals the library's
    ``IntQuantizationCompressor.decompress`` value for value (scales as float32; with bf16/f16
    scales the library's own half-precision result is ours rounded once), and the spectra are
    those of that matrix."""
    import torch
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor

    shape = (24, 48)
    w = _spectral_matrix(*shape, seed=bits + len(strategy))
    static = not symmetric  # static activation scales and zero points, attached
    scheme = qp.ct_int_scheme(bits, strategy, group, symmetric, static_input=static)
    t = qp.ct_int(w, scheme, getattr(torch, scale_dtype))
    assert t["weight"].dtype == torch.int8 and ("weight_zero_point" in t) == (not symmetric)
    tensors = {f"l.{k}": v for k, v in t.items()}
    if static:
        tensors["l.input_scale"] = torch.tensor([0.02], dtype=torch.float32)
        tensors["l.input_zero_point"] = torch.tensor([3], dtype=torch.int8)
    path = _single_linear(tmp_path, tensors, ct_scheme_config(scheme, "int-quantized"))
    report = lora_rank.analyze(path)
    assert [m.name for m in report.modules] == ["l"]
    m = report.module("l")
    assert (m.out_features, m.in_features, m.params, m.dtype) == (*shape, 24 * 48, "I8")
    q = m.quantization
    assert q is not None and (q.method, q.checkpoint_format, q.bits) == (
        "compressed-tensors",
        "int-quantized",
        bits,
    )
    assert set(dict(q.aux)) == {"scales"} | (
        {"zeros", "input_scale", "input_zero_point"} if static else set()
    )
    got = _dequantized(report)["l"]
    want = qp.ct_int_reference(t, scheme)
    np.testing.assert_array_equal(got, want)
    theirs = IntQuantizationCompressor.decompress(dict(t), scheme)["weight"]
    assert theirs.dtype == getattr(torch, scale_dtype)
    np.testing.assert_array_equal(torch.from_numpy(got).to(theirs.dtype).float(), theirs.float())
    compute_spectra(report, method="exact", top_k=8, progress=False)
    sv = np.linalg.svd(want.astype(np.float64), compute_uv=False)
    sp = report.module("l").spectrum
    assert sp is not None
    np.testing.assert_allclose(sp.singular_values, sv[:8], rtol=1e-4)


def test_int_quantized_model_saved_by_model_compressor(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """The tiny llama quantized W8 (asymmetric groups of 16) and saved the way llm-compressor
    does it: ``apply_quantization_config``, scales from the library's ``calculate_qparams``,
    ``ModelCompressor.compress_model``, ``save_pretrained`` and ``update_config``. The
    inventory is the plain model's; every module dequantizes to what the library's
    ``decompress_model`` gives, value for value."""
    import torch
    from checkpoints import load_model
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams

    src = checkpoint("llama")
    model = load_model(src)
    scheme = qp.ct_int_scheme(8, "group", GROUP, False)
    config = QuantizationConfig(
        config_groups={"group_0": scheme}, ignore=["lm_head"], quantization_status="frozen"
    )
    apply_quantization_config(model, config)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight_scale"):
                g = m.weight.reshape(m.weight.shape[0], -1, GROUP)
                scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights)
                m.weight_scale.copy_(scale)
                m.weight_zero_point.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    assert compressor is not None
    compressor.compress_model(model)
    model.save_pretrained(tmp_path)
    compressor.update_config(str(tmp_path))
    report = lora_rank.analyze(tmp_path)
    plain = lora_rank.analyze(src)
    summary = lambda r: [  # noqa: E731
        (m.name, m.kind, m.in_features, m.out_features, m.params, m.is_lora_target)
        for m in r.modules
    ]
    assert summary(report) == summary(plain)
    got = _dequantized(report)
    assert len(got) == 14
    compressor.decompress_model(model)
    weights = dict(model.named_parameters())
    for name, mat in got.items():
        want = weights[name + ".weight"].detach().float().numpy()
        np.testing.assert_array_equal(mat, want, err_msg=name)
    # Spectra of those weights.
    compute_spectra(report, method="exact", top_k=4, progress=False)
    for name, mat in got.items():
        sv = np.linalg.svd(mat.astype(np.float64), compute_uv=False)
        sp = report.module(name).spectrum
        assert sp is not None
        np.testing.assert_allclose(sp.singular_values, sv[:4], rtol=1e-4, err_msg=name)


def _ct_int_tensors(symmetric: bool) -> dict[str, Any]:
    scheme = qp.ct_int_scheme(8, "group", 16, symmetric)
    t = qp.ct_int(_spectral_matrix(8, 64, seed=1), scheme)
    return {f"l.{k}": v for k, v in t.items()}


@pytest.mark.parametrize(
    ("symmetric", "change", "match"),
    [
        (True, lambda t: t.pop("l.weight_scale"), "'l.weight': an int8 weight without its scales"),
        (
            True,
            lambda t: t.update({"l.weight_scale": np.ones((8, 3), np.float32)}),
            r"'l.weight_scale': dtype F32 shape \[8, 3\], but the group scales of a \[8, 64\] "
            r"int8 weight must be \[8, 4\]",
        ),
        (
            True,
            lambda t: t.update({"l.weight": t["l.weight"].to(torch_int16())}),
            r"'l.weight_scale': scales of a weight that is I16 \[8, 64\], not an I8 or FP8",
        ),
        (
            False,
            lambda t: t.pop("l.weight_zero_point"),
            "'l.weight': asymmetric int8 weights without their zero points",
        ),
        (
            False,
            lambda t: t.update({"l.weight_zero_point": np.zeros((8, 2), np.int8)}),
            r"'l.weight_zero_point': shape \[8, 2\], but the zero points of its scales needs "
            r"\[8, 4\]",
        ),
        (
            True,
            lambda t: t.update({"l.weight_g_idx": np.zeros(64, np.int32)}),
            "activation-ordered int-quantized weights",
        ),
    ],
)
def test_malformed_int_quantized_names_tensor_and_rule(
    symmetric: bool, change: Callable[[dict[str, Any]], Any], match: str, tmp_path: Path
) -> None:
    t = _ct_int_tensors(symmetric)
    change(t)
    scheme = qp.ct_int_scheme(8, "group", 16, symmetric)
    path = _single_linear(tmp_path, t, ct_scheme_config(scheme, "int-quantized"))
    with pytest.raises(lora_rank.HeaderError, match=match) as e:
        _dequantized(lora_rank.analyze(path))
    assert "model.safetensors" in str(e.value)


def torch_int16() -> Any:
    import torch

    return torch.int16


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"strategy": "block", "block_structure": [8, 8]}, "strategy 'block'"),
        ({"type": "float"}, "8-bit float weights are not supported by int-quantized"),
        ({"num_bits": 16}, "16-bit int weights"),
    ],
)
def test_unsupported_int_quantized_variants_are_refused(
    edit: dict[str, Any], match: str, tmp_path: Path
) -> None:
    qc = ct_scheme_config(qp.ct_int_scheme(8, "group", 16, True), "int-quantized")
    qc["config_groups"]["group_0"]["weights"].update(edit)
    with pytest.raises(lora_rank.UnsupportedFormatError, match=match):
        lora_rank.analyze(_single_linear(tmp_path, _ct_int_tensors(True), qc))


#: torch dtype name → safetensors dtype name.
SAFETENSORS_DTYPE = {
    "uint8": "U8",
    "int8": "I8",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
}


@pytest.mark.parametrize(
    ("quant_type", "nested", "storage"),
    [
        ("nf4", False, "uint8"),
        ("nf4", True, "uint8"),
        ("fp4", False, "uint8"),
        ("fp4", True, "uint8"),
        ("nf4", True, "bfloat16"),  # bnb_4bit_quant_storage: the same bytes as another dtype
        ("nf4", False, "float16"),
        ("fp4", True, "float32"),
        ("nf4", False, "int8"),
    ],
)
def test_bitsandbytes_4bit_matches_the_library(
    quant_type: str, nested: bool, storage: str, tmp_path: Path
) -> None:
    """The engine's 4-bit dequantization equals bitsandbytes' own ``dequantize_4bit`` (CPU,
    float32), value for value, including a last partial block, whatever dtype the packed
    bytes are stored as."""
    import bitsandbytes.functional as F
    import torch

    w = _spectral_matrix(24, 40, seed=3).astype(np.float32)  # 960 = 15 blocks of 64
    t = qp.bnb4(w, quant_type, nested, storage)
    tensors = {f"l.{k}": v for k, v in t.items()}
    qc = bnb_config(4, quant_type, nested, storage)
    assert qc["bnb_4bit_quant_storage"] == storage
    report = lora_rank.analyze(_single_linear(tmp_path, tensors, qc))
    m = report.module("l")
    assert (m.out_features, m.in_features, m.params) == (24, 40, 960)
    assert m.quantization is not None
    assert m.quantization.storage_dtype == SAFETENSORS_DTYPE[storage] == m.dtype
    got = _dequantized(report)["l"]
    _, state = F.quantize_4bit(
        torch.from_numpy(w),
        blocksize=64,
        quant_type=quant_type,
        compress_statistics=nested,
        quant_storage=getattr(torch, storage),
    )
    want = F.dequantize_4bit(t["weight"], state).numpy()
    assert want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, qp.bnb4_reference(t))


def test_bitsandbytes_int8_matches_the_library(tmp_path: Path) -> None:
    import bitsandbytes.functional as F

    w = _spectral_matrix(16, 48, seed=4).astype(np.float32)
    cb, scb = qp.bnb8(w)
    path = _single_linear(tmp_path, {"l.weight": cb, "l.SCB": scb}, bnb_config(8))
    got = _dequantized(lora_rank.analyze(path))["l"]
    np.testing.assert_array_equal(got, F.int8_vectorwise_dequant(cb, scb).numpy())


def test_bitsandbytes_4bit_storage_checks_name_tensor_and_rule(tmp_path: Path) -> None:
    """The stored dtype must be the config's ``bnb_4bit_quant_storage``, and the element count
    that of the packed bytes in that dtype."""
    w = _spectral_matrix(24, 40, seed=3).astype(np.float32)
    t = {f"l.{k}": v for k, v in qp.bnb4(w, "nf4", False, "bfloat16").items()}
    path = _single_linear(tmp_path / "a", t, bnb_config(4, storage="float32"))
    with pytest.raises(lora_rank.HeaderError, match=r"weight that is BF16 \[240, 1\], not F32"):
        lora_rank.analyze(path)
    t["l.weight"] = t["l.weight"][:-1].clone()
    path = _single_linear(tmp_path / "b", t, bnb_config(4, storage="bfloat16"))
    with pytest.raises(
        lora_rank.HeaderError, match=r"take \[240, 1\] BF16 elements \(480 bytes\)"
    ) as e:
        lora_rank.analyze(path)
    assert "model.safetensors" in str(e.value) and "'l.weight'" in str(e.value)
    qc = {**bnb_config(4), "bnb_4bit_quant_storage": "int4"}
    with pytest.raises(lora_rank.UnsupportedFormatError, match="bnb_4bit_quant_storage 'int4'"):
        lora_rank.analyze(_single_linear(tmp_path / "c", t, qc))


def test_bitsandbytes_4bit_bf16_storage_saved_by_transformers(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """The tiny llama loaded in 4 bits with ``bnb_4bit_quant_storage=torch.bfloat16`` and saved
    by transformers (BF16 weights of packed bytes): the inventory is the plain model's, and
    every module dequantizes to what bitsandbytes' own ``dequantize_4bit`` gives from the
    saved tensors."""
    import bitsandbytes.functional as F
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    src = checkpoint("llama")
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_storage=torch.bfloat16, bnb_4bit_use_double_quant=True
    )
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=config, device_map="cpu")
    model.save_pretrained(tmp_path)
    plain = lora_rank.analyze(src)
    report = lora_rank.analyze(tmp_path)
    summary = lambda r: [  # noqa: E731
        (m.name, m.kind, m.in_features, m.out_features, m.params) for m in r.modules
    ]
    assert summary(report) == summary(plain)
    stored = _load_torch(tmp_path)
    got = _dequantized(report)
    assert set(got) == {m.name for m in report.modules if m.quantization is not None}
    assert len(got) == 14
    for name, mat in got.items():
        assert stored[name + ".weight"].dtype == torch.bfloat16
        parts = {
            k[len(name) + 8 :]: v for k, v in stored.items() if k.startswith(name + ".weight.")
        }
        state = F.QuantState.from_dict(parts, device=torch.device("cpu"))
        # bitsandbytes' blocks run over the flattened tensor; its CPU kernel for a 2-D shape
        # takes an AVX-512 path (0.50.2, on an Intel Xeon) that misplaces the scales of blocks
        # crossing rows of 48 (its values 2-3x farther from the original weights than the
        # generic path's), so the oracle dequantizes the flat tensor, as the format defines.
        shape, state.shape = state.shape, torch.Size([state.shape.numel()])
        want = F.dequantize_4bit(stored[name + ".weight"], state).float().numpy()
        np.testing.assert_array_equal(mat, want.reshape(tuple(shape)), err_msg=name)


def _load_torch(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("l.weight.quant_map"), "without l.weight.quant_map"),
        (lambda t: t.update({"l.weight": t["l.weight"][:-1].clone()}), r"take \[480, 1\] bytes"),
        (lambda t: t.update({"l.weight.absmax": t["l.weight.absmax"][:-1].clone()}), "absmax"),
    ],
)
def test_malformed_bitsandbytes_name_tensor_and_rule(
    change: Callable[[dict[str, Any]], Any], match: str, tmp_path: Path
) -> None:
    w = _spectral_matrix(24, 40, seed=3).astype(np.float32)
    t = {f"l.{k}": v for k, v in qp.bnb4(w, "nf4", False).items()}
    change(t)
    path = _single_linear(tmp_path, t, bnb_config(4))
    with pytest.raises(lora_rank.HeaderError, match=match) as e:
        _dequantized(lora_rank.analyze(path))
    assert "model.safetensors" in str(e.value) and "l.weight" in str(e.value)


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A tiny random gpt-oss saved by ``save_pretrained`` (sharded), and the same checkpoint
    with its expert parameters MXFP4-quantized as the hub release stores them."""
    import torch
    from safetensors.torch import save_file
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=128,
        layer_types=["sliding_attention", "full_attention"],
    )
    torch.manual_seed(0)
    plain = tmp_path_factory.mktemp("gpt-oss")
    GptOssForCausalLM(config).save_pretrained(plain, max_shard_size="200KB")
    weights = _load(plain)
    out = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    tensors: dict[str, Any] = {}
    packed: dict[str, Any] = {}
    for name, w in weights.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            t = qp.mxfp4(w)
            tensors[name + "_blocks"], tensors[name + "_scales"] = t["blocks"], t["scales"]
            packed[name] = t
        else:
            tensors[name] = w
    save_file(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
        str(out / "model.safetensors"),
    )
    cfg = json.loads((plain / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": None}
    (out / "config.json").write_text(json.dumps(cfg))
    return plain, out, packed


def test_mxfp4_inventory_is_the_logical_model(gpt_oss: tuple[Path, Path, dict[str, Any]]) -> None:
    plain_path, path, packed = gpt_oss
    plain, report = lora_rank.analyze(plain_path), lora_rank.analyze(path)
    summary = lambda r: [  # noqa: E731
        (m.name, m.kind, m.shape, m.params, m.is_lora_target, m.in_features) for m in r.modules
    ]
    assert summary(report) == summary(plain)
    assert report.total_params == plain.total_params
    quantized = {m.name: m.quantization for m in report.modules if m.quantization is not None}
    assert set(quantized) == set(packed)
    for name, q in quantized.items():
        assert q is not None and (q.method, q.bits, q.group_size) == ("mxfp4", 4, 32)
        assert q.weight_key == name + "_blocks" and dict(q.aux) == {"scales": name + "_scales"}


def test_mxfp4_matches_transformers_dequantization(
    gpt_oss: tuple[Path, Path, dict[str, Any]],
) -> None:
    """Each expert's matrix as the engine decodes it equals transformers' own
    ``convert_moe_packed_tensors`` (float32), value for value, and the numpy reference; the
    expert spectra are those of the dequantized matrices."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    _, path, packed = gpt_oss
    report = lora_rank.analyze(path)
    plan = Plan(report)
    shards = shard_files(report)
    seen = set()
    for (module, expert), job, quant in zip(plan.targets, plan.jobs, plan.quant):
        if module.name not in packed:
            continue
        t = packed[module.name]
        want = convert_moe_packed_tensors(
            torch.from_numpy(t["blocks"]), torch.from_numpy(t["scales"]), dtype=torch.float32
        ).numpy()
        assert expert is not None and quant is not None
        rows, cols = job[1][0][2], job[2]
        got = np.frombuffer(_core.read_matrix(shards, job, quant), np.float32).reshape(rows, cols)
        np.testing.assert_array_equal(got.T, want[expert], err_msg=job[0])
        np.testing.assert_array_equal(got.T, qp.mxfp4_reference(t)[expert], err_msg=job[0])
        seen.add((module.name, expert))
    assert len(seen) == 4 * len(packed)
    report = lora_rank.analyze(path, spectral=True, method="exact", top_k=8, progress=False)
    name = next(iter(packed))
    ref = qp.mxfp4_reference(packed[name])
    spectra = report.module(name).expert_spectra
    assert spectra is not None and len(spectra) == 4
    for e, sp in enumerate(spectra):
        s = np.linalg.svd(ref[e].astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(sp.singular_values, s[:8], rtol=1e-4)


def test_malformed_mxfp4_names_tensor_and_rule(
    gpt_oss: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, path, _ = gpt_oss
    tensors = _load(path)
    name = "model.layers.0.mlp.experts.down_proj"
    config = json.loads((path / "config.json").read_text())
    for change, match in [
        (lambda t: t.pop(name + "_scales"), "without their scales"),
        (lambda t: t.update({name + "_scales": t[name + "_scales"][:, :-1].copy()}), "E8M0 scales"),
    ]:
        t = dict(tensors)
        change(t)
        out = _save(tmp_path / str(len(match)), t, config)
        with pytest.raises(lora_rank.HeaderError, match=match) as e:
            lora_rank.analyze(out)
        assert "model.safetensors" in str(e.value) and name in str(e.value)


def test_fp8_moe_one_pass_equals_the_per_module_loop(
    checkpoint: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DeepSeek-V3 (MoE: shared and routed experts, fused on load) stored FP8 block-scaled:
    the one-pass pairing of weights and scales gives the modules of the unquantized checkpoint
    (the oracle: the same model, analysed as saved) with every FP8 weight's scales attached,
    and exactly what the per-module loop gives (the path that names faults) when it is
    switched off."""
    from lora_rank.inventory import quantization

    src = checkpoint("deepseek_v3")
    path, ref = quantize_checkpoint(src, tmp_path / "fp8", "fp8")
    assert any(".experts." in p for p in ref)  # routed experts are quantized too
    plain = lora_rank.analyze(src)
    fast = lora_rank.analyze(path)
    summary = lambda r: [  # noqa: E731
        (m.name, m.kind, m.in_features, m.out_features, m.params, m.is_lora_target, m.shape)
        for m in r.modules
    ]
    assert summary(fast) == summary(plain)
    assert fast.total_params == plain.total_params
    for m in fast.modules:
        stored = [k for k in m.checkpoint_keys if not k.endswith("_scale_inv")]
        scales = [k for k in m.checkpoint_keys if k.endswith("_scale_inv")]
        assert [k + "_scale_inv" for k in stored if k.removesuffix(".weight") in ref] == scales
        assert (m.quantization is not None) == bool(scales), m.name
        if m.quantization is not None:
            assert m.quantization.weight_key == stored[0]
            assert m.quantization.aux == (("scales", scales[0]),)
    with monkeypatch.context() as mp:
        mp.setattr(quantization, "_fp8_pairs", lambda *a: None)
        loop = lora_rank.analyze(path)
    assert fast.modules == loop.modules
    assert (fast.total_params, fast.stored_elements, fast.warnings) == (
        loop.total_params,
        loop.stored_elements,
        loop.warnings,
    )


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("scales", "an FP8 weight without its block scales"),
        ("weight", "block scales without their weight"),
    ],
)
def test_fp8_moe_fault_named_as_by_the_loop(
    checkpoint: Callable[[str], Path], tmp_path: Path, drop: str, message: str
) -> None:
    """One expert's scales (or its weight) missing among hundreds of good pairs: the error
    names the file and that tensor, as the per-module loop reports it."""
    from lora_rank.errors import HeaderError
    from safetensors.torch import load_file

    path, _ = quantize_checkpoint(checkpoint("deepseek_v3"), tmp_path / "fp8", "fp8")
    tensors = load_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    victim = sorted(k for k in tensors if ".experts.1." in k and k.endswith("up_proj.weight"))[0]
    if drop == "scales":
        del tensors[victim + "_scale_inv"]
        named = victim
    else:
        del tensors[victim]
        named = victim + "_scale_inv"
    bad = _save(tmp_path / "bad", tensors, config)
    with pytest.raises(HeaderError, match=message) as e:
        lora_rank.analyze(bad)
    assert str(e.value).startswith(str(bad / "model.safetensors"))
    assert repr(named) in str(e.value)
