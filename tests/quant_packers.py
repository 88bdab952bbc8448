"""Quantize known weights with each format's published packing, and dequantize them again
with numpy: the fixtures and the reference of the quantization tests.

- FP8 block-scaled (DeepSeek-V3 / transformers ``FineGrainedFP8``): per block
  scale_inv = amax / 448, q = e4m3(W / scale_inv); W ≈ q · scale_inv.
- GPTQ (AutoGPTQ / GPTQModel ``pack``): asymmetric min/max per group and output;
  ``qweight[i // 8, j] |= q[j, i] << 4·(i % 8)``, ``qzeros[g, j // 8] |= (z − 1) << 4·(j % 8)``
  for v1 checkpoints (``z`` for v2), act-order groups through ``g_idx``.
- AWQ (AutoAWQ ``WQLinear_GEMM``): ``qweight[i, j // 8]`` holds column 8k + order[n] in
  nibble n, order = [0, 2, 4, 6, 1, 3, 5, 7]; the same for ``qzeros``; no −1.
- compressed-tensors ``pack-quantized`` (``pack_to_int32``): symmetric q in
  [−2^(b−1), 2^(b−1) − 1] per group of ``in`` and output, stored as q + 2^(b−1) in a dense
  little-endian bit stream per row (value j at bit j·b), ``weight_shape`` = [out, in];
  ``float-quantized``: e4m3(W / s) with s = amax / 448 per output row (channel strategy).
- compressed-tensors ``int-quantized`` (W8A8): the library itself, ``calculate_qparams`` on
  min/max per tensor, row or group and ``IntQuantizationCompressor.compress`` (int8 weight,
  scales, zero points when asymmetric); its ``decompress`` is the reference.
- bitsandbytes: the library's own ``quantize_4bit`` (NF4/FP4, nested absmax or not) and
  ``int8_vectorwise_quant``, serialised as ``Params4bit``/``Int8Params`` are
  (``quant_state.as_dict(packed=True)`` under ``weight.``); the numpy reference re-implements
  the dequantization from the stored tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def fp8_block(w: np.ndarray, block: tuple[int, int]) -> tuple[Any, np.ndarray]:
    """(torch float8_e4m3fn weight, float32 scale_inv) of ``w`` [out, in]."""
    import torch

    out_f, in_f = w.shape
    b0, b1 = block
    gr, gc = -(-out_f // b0), -(-in_f // b1)
    scale = np.zeros((gr, gc), np.float32)
    q = np.zeros_like(w, dtype=np.float32)
    for r in range(gr):
        for c in range(gc):
            blk = w[r * b0 : (r + 1) * b0, c * b1 : (c + 1) * b1]
            s = np.float32(max(np.abs(blk).max(), 1e-12) / 448.0)
            scale[r, c] = s
            q[r * b0 : (r + 1) * b0, c * b1 : (c + 1) * b1] = blk / s
    return torch.from_numpy(q).to(torch.float8_e4m3fn), scale


def fp8_reference(q: Any, scale: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Dequantized float32 matrix (f32 product, as transformers computes it)."""
    vals = q.float().numpy()
    s = np.repeat(np.repeat(scale, block[0], axis=0), block[1], axis=1)
    return (vals * s[: vals.shape[0], : vals.shape[1]]).astype(np.float32)


def _int_quantize(
    w: np.ndarray, bits: int, group: int, g_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q [out, in] ints, zeros [groups, out] ints and float16 scales [groups, out]."""
    out_f = w.shape[0]
    groups = int(g_idx.max()) + 1
    maxq = 2**bits - 1
    scales = np.zeros((groups, out_f), np.float16)
    zeros = np.zeros((groups, out_f), np.int64)
    for g in range(groups):
        cols = w[:, g_idx == g]
        lo, hi = np.minimum(cols.min(axis=1), 0), np.maximum(cols.max(axis=1), 0)
        s = np.maximum((hi - lo) / maxq, 1e-8)
        scales[g] = s.astype(np.float16)
        # Zero points in 1..maxq so that v1's stored z − 1 never wraps.
        zeros[g] = np.clip(np.round(-lo / scales[g].astype(np.float64)), 1, maxq)
    s_full = scales[g_idx].T.astype(np.float64)
    z_full = zeros[g_idx].T
    q = np.clip(np.round(w / s_full) + z_full, 0, maxq).astype(np.int64)
    return q, zeros, scales


def _pack_rows(vals: np.ndarray, bits: int) -> np.ndarray:
    """Pack along axis 0: word r holds rows r·(32/bits) … (lowest bits first)."""
    per = 32 // bits
    out = np.zeros((vals.shape[0] // per, vals.shape[1]), np.uint32)
    for k in range(per):
        out |= (vals[k::per].astype(np.uint32) & (2**bits - 1)) << np.uint32(bits * k)
    return out.view(np.int32)


def gptq(
    w: np.ndarray, bits: int, group: int, act_order: bool, v1: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """GPTQ tensors (qweight, qzeros, scales, g_idx) of ``w`` [out, in]."""
    in_f = w.shape[1]
    g_idx = np.arange(in_f) // group
    if act_order:
        perm = np.random.default_rng(seed).permutation(in_f)
        g_idx = np.empty(in_f, np.int64)
        g_idx[perm] = np.arange(in_f) // group
    q, zeros, scales = _int_quantize(w, bits, group, g_idx)
    stored_z = zeros - 1 if v1 else zeros
    return {
        "qweight": np.ascontiguousarray(_pack_rows(q.T, bits)),
        "qzeros": np.ascontiguousarray(_pack_rows(stored_z.T, bits).T),
        "scales": scales,
        "g_idx": g_idx.astype(np.int32),
    }


def gptq_reference(t: dict[str, np.ndarray], bits: int, v1: bool = True) -> np.ndarray:
    """Dequantized float32 W [out, in] from GPTQ tensors (numpy, AutoGPTQ's formula)."""
    per, mask = 32 // bits, 2**bits - 1
    qw = t["qweight"].view(np.uint32)
    q = np.stack([(qw >> np.uint32(bits * k)) & mask for k in range(per)], axis=1)
    q = q.reshape(-1, qw.shape[1])  # [in, out]
    qz = t["qzeros"].view(np.uint32)
    z = np.stack([(qz >> np.uint32(bits * k)) & mask for k in range(per)], axis=2)
    z = z.reshape(qz.shape[0], -1).astype(np.int64) + int(v1)  # [groups, out]
    g = t["g_idx"]
    s = t["scales"].astype(np.float32)
    return (s[g] * (q.astype(np.float32) - z[g].astype(np.float32))).T.copy()


def awq(w: np.ndarray, group: int) -> dict[str, np.ndarray]:
    """AWQ GEMM tensors (qweight, qzeros, scales) of ``w`` [out, in], 4 bits."""
    in_f = w.shape[1]
    q, zeros, scales = _int_quantize(w, 4, group, np.arange(in_f) // group)

    def pack_cols(v: np.ndarray) -> np.ndarray:
        out = np.zeros((v.shape[0], v.shape[1] // 8), np.uint32)
        for n, c in enumerate(AWQ_ORDER):
            out |= v[:, c::8].astype(np.uint32) << np.uint32(4 * n)
        return out.view(np.int32)

    return {
        "qweight": np.ascontiguousarray(pack_cols(q.T)),
        "qzeros": np.ascontiguousarray(pack_cols(zeros)),
        "scales": scales,
    }


def awq_reference(t: dict[str, np.ndarray], group: int) -> np.ndarray:
    """Dequantized float32 W [out, in] from AWQ tensors."""

    def unpack_cols(p: np.ndarray) -> np.ndarray:
        p = p.view(np.uint32)
        out = np.zeros((p.shape[0], p.shape[1] * 8), np.int64)
        for n, c in enumerate(AWQ_ORDER):
            out[:, c::8] = (p >> np.uint32(4 * n)) & 15
        return out

    q, z = unpack_cols(t["qweight"]), unpack_cols(t["qzeros"])
    g = np.arange(q.shape[0]) // group
    s = t["scales"].astype(np.float32)
    return (s[g] * (q.astype(np.float32) - z[g].astype(np.float32))).T.copy()


def ct_pack(w: np.ndarray, bits: int, group: int | None) -> dict[str, np.ndarray]:
    """compressed-tensors ``pack-quantized`` tensors of ``w`` [out, in] (symmetric; ``group``
    None: one scale per output row)."""
    out_f, in_f = w.shape
    size = group or in_f
    groups = -(-in_f // size)
    qmax = (1 << (bits - 1)) - 1
    scale = np.zeros((out_f, groups), np.float32)
    q = np.zeros((out_f, in_f), np.int64)
    for g in range(groups):
        blk = w[:, g * size : (g + 1) * size]
        s = np.maximum(np.abs(blk).max(axis=1), 1e-12) / (qmax + 0.5)
        scale[:, g] = s
        q[:, g * size : (g + 1) * size] = np.clip(np.round(blk / s[:, None]), -qmax - 1, qmax)
    unsigned = (q + (1 << (bits - 1))).astype(np.uint64)
    words = -(-in_f * bits // 32)
    packed = np.zeros((out_f, words + 1), np.uint64)
    for j in range(in_f):
        bit = j * bits
        packed[:, bit // 32] |= (unsigned[:, j] << np.uint64(bit % 32)) & np.uint64(0xFFFFFFFF)
        if bit % 32 + bits > 32:
            packed[:, bit // 32 + 1] |= unsigned[:, j] >> np.uint64(32 - bit % 32)
    return {
        "weight_packed": packed[:, :words].astype(np.uint32).view(np.int32),
        "weight_scale": scale,
        "weight_shape": np.array([out_f, in_f], np.int64),
    }


def ct_pack_reference(t: dict[str, np.ndarray], bits: int) -> np.ndarray:
    """Dequantized float32 matrix of :func:`ct_pack`'s tensors: s · q, unpacked bit by bit."""
    out_f, in_f = (int(x) for x in t["weight_shape"])
    words = t["weight_packed"].view(np.uint32).astype(np.uint64)
    q = np.zeros((out_f, in_f), np.int64)
    for j in range(in_f):
        bit = j * bits
        v = words[:, bit // 32] >> np.uint64(bit % 32)
        if bit % 32 + bits > 32:
            v |= words[:, bit // 32 + 1] << np.uint64(32 - bit % 32)
        q[:, j] = (v & np.uint64((1 << bits) - 1)).astype(np.int64) - (1 << (bits - 1))
    scale = t["weight_scale"].astype(np.float32)
    size = -(-in_f // scale.shape[1])
    s = np.repeat(scale, size, axis=1)[:, :in_f]
    return (q.astype(np.float32) * s).astype(np.float32)


def ct_fp8_channel(w: np.ndarray) -> tuple[Any, np.ndarray]:
    """(torch float8_e4m3fn weight, float32 [out, 1] scales): ``float-quantized``, channel."""
    import torch

    s = (np.maximum(np.abs(w).max(axis=1), 1e-12) / 448.0).astype(np.float32)[:, None]
    return torch.from_numpy((w / s).astype(np.float32)).to(torch.float8_e4m3fn), s


def ct_int_scheme(
    bits: int, strategy: str, group: int | None, symmetric: bool, static_input: bool = False
) -> Any:
    """The compressed-tensors ``QuantizationScheme`` of int weights (llm-compressor's W8A8
    shape: int8 input activations, dynamic per token, or static per tensor)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, group_size=group
    )
    if static_input:
        inputs = QuantizationArgs(num_bits=8, type="int", symmetric=symmetric, strategy="tensor")
    else:
        inputs = QuantizationArgs(
            num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True
        )
    return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)


def ct_int(w: np.ndarray, scheme: Any, scale_dtype: Any = None) -> dict[str, Any]:
    """compressed-tensors ``int-quantized`` tensors of ``w`` [out, in], made by the library:
    min/max per tensor, row or group, its ``calculate_qparams`` and
    ``IntQuantizationCompressor.compress``; scales cast to ``scale_dtype`` (a torch dtype,
    default float32) first, as a model saved in that dtype stores them."""
    import torch
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor
    from compressed_tensors.quantization.utils import calculate_qparams

    args = scheme.weights
    x = torch.from_numpy(w)
    if args.strategy == "tensor":
        lo, hi = x.min().reshape(1), x.max().reshape(1)
    elif args.strategy == "channel":
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    else:
        g = x.reshape(x.shape[0], -1, args.group_size)
        lo, hi = g.min(-1).values, g.max(-1).values
    scale, zero = calculate_qparams(lo, hi, args)
    scale = scale.to(scale_dtype or torch.float32)
    state = {"weight": x.to(scale.dtype), "weight_scale": scale, "weight_zero_point": zero}
    out = IntQuantizationCompressor.compress(state, scheme)
    return {k: v.contiguous() for k, v in out.items()}


def ct_int_reference(t: dict[str, Any], scheme: Any) -> np.ndarray:
    """The library's ``IntQuantizationCompressor.decompress`` of :func:`ct_int`'s tensors, as
    float32 (scales upcast to float32 first: the exact products, as the engine computes)."""
    import torch
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor

    state = {k: v.float() if k == "weight_scale" else v for k, v in t.items()}
    out = IntQuantizationCompressor.decompress(state, scheme)["weight"]
    assert out.dtype == torch.float32
    return out.numpy()


def bnb4(w: np.ndarray, quant_type: str, nested: bool, storage: str = "uint8") -> dict[str, Any]:
    """bitsandbytes 4-bit tensors of ``w`` [out, in] as ``Linear4bit`` saves them (keys
    relative to the module: ``weight``, ``weight.absmax``, ...), block size 64; the packed
    bytes stored as the torch dtype ``storage`` (``bnb_4bit_quant_storage``)."""
    import bitsandbytes.functional as F
    import torch

    q, state = F.quantize_4bit(
        torch.from_numpy(w),
        blocksize=64,
        quant_type=quant_type,
        compress_statistics=nested,
        quant_storage=getattr(torch, storage),
    )
    return {"weight": q, **{f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}}


def bnb4_reference(t: dict[str, Any]) -> np.ndarray:
    """numpy dequantization of :func:`bnb4`'s tensors (float32, bitsandbytes' order of ops)."""
    import json

    import torch

    state = next(v for k, v in t.items() if "quant_state" in k)
    qs = json.loads(bytes(state.numpy().tobytes()).decode())
    out_f, in_f = qs["shape"]
    packed = t["weight"].contiguous().view(-1).view(torch.uint8).numpy()  # any storage dtype
    idx = np.empty(packed.size * 2, np.int64)
    idx[0::2], idx[1::2] = packed >> 4, packed & 15
    code = t["weight.quant_map"].numpy().astype(np.float32)
    absmax = t["weight.absmax"].numpy()
    if "weight.nested_absmax" in t:
        c2 = t["weight.nested_quant_map"].numpy().astype(np.float32)
        m2 = t["weight.nested_absmax"].numpy().astype(np.float32)
        per = qs["nested_blocksize"]
        blocks = np.arange(absmax.size) // per
        absmax = (c2[absmax.astype(np.int64)] * m2[blocks]).astype(np.float32)
        absmax = (absmax + np.float32(qs["nested_offset"])).astype(np.float32)
    n = out_f * in_f
    vals = code[idx[:n]] * absmax[np.arange(n) // qs["blocksize"]]
    return vals.astype(np.float32).reshape(out_f, in_f)


def bnb8(w: np.ndarray) -> tuple[Any, Any]:
    """(int8 weight, float32 SCB) of ``w`` [out, in]: bitsandbytes' LLM.int8 row quantization."""
    import bitsandbytes.functional as F
    import torch

    cb, scb, _ = F.int8_vectorwise_quant(torch.from_numpy(w).half())
    return cb, scb


#: OCP MXFP4 (E2M1) code values, as transformers' ``FP4_VALUES``.
FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    np.float32,
)


def mxfp4(w: np.ndarray) -> dict[str, np.ndarray]:
    """gpt-oss MXFP4 tensors of an expert parameter ``w`` [experts, in, out] (transformers'
    runtime orientation): ``blocks`` U8 [experts, out, in/32, 16] (the even column in the low
    nibble) and E8M0 ``scales`` U8 [experts, out, in/32], 2^(s − 127) ≥ amax / 6 per block."""
    m = np.ascontiguousarray(np.swapaxes(w, 1, 2)).astype(np.float32)  # [E, out, in]
    experts, rows, cols = m.shape
    blocks = m.reshape(experts, rows, cols // 32, 32)
    amax = np.maximum(np.abs(blocks).max(axis=-1), 1e-30)
    exp = np.clip(np.ceil(np.log2(amax / 6.0)), -127, 127).astype(np.int64)
    scaled = blocks / np.exp2(exp)[..., None].astype(np.float32)
    codes = np.abs(scaled[..., None] - FP4_VALUES).argmin(axis=-1).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return {"blocks": packed.astype(np.uint8), "scales": (exp + 127).astype(np.uint8)}


def mxfp4_reference(t: dict[str, np.ndarray]) -> np.ndarray:
    """numpy dequantization of :func:`mxfp4`'s tensors, [experts, in, out] float32."""
    b, s = t["blocks"], t["scales"].astype(np.int64) - 127
    vals = np.empty((*b.shape[:-1], 32), np.float32)
    vals[..., 0::2], vals[..., 1::2] = FP4_VALUES[b & 15], FP4_VALUES[b >> 4]
    vals = vals * np.exp2(s)[..., None].astype(np.float32)
    experts, rows, groups, _ = b.shape
    return np.ascontiguousarray(np.swapaxes(vals.reshape(experts, rows, groups * 32), 1, 2))
