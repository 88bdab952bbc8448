"""Quantized checkpoints: detect the format, turn packed tensors into logical weights, and
describe how the Rust engine dequantizes them.

Supported (``config.json`` ``quantization_config`` plus the tensors' names, dtypes and shapes;
every rule is checked from the headers and a violation is a :class:`HeaderError` naming the
tensor and the rule):

- ``quant_method="fp8"`` with ``weight_block_size`` (DeepSeek-V3, transformers
  ``FineGrainedFP8``): ``P.weight`` F8_E4M3/F8_E5M2 ``[out, in]`` and
  ``P.weight_scale_inv`` ``[⌈out/b₀⌉, ⌈in/b₁⌉]``.
- ``quant_method="gptq"`` (``checkpoint_format`` ``gptq`` = v1, zero points stored minus
  one, or ``gptq_v2``), 2/4/8 bits: ``P.qweight`` I32 ``[in·bits/32, out]``, ``P.qzeros``
  I32 ``[groups, out·bits/32]``, ``P.scales`` ``[groups, out]``, optional ``P.g_idx`` I32
  ``[in]`` (act-order).
- ``quant_method="awq"`` (``version="gemm"``), 4 bits: ``P.qweight`` I32 ``[in, out/8]``
  (AutoAWQ's interleaved nibble order), ``P.qzeros`` ``[groups, out/8]``, ``P.scales``
  ``[groups, out]``.

- ``quant_method="compressed-tensors"`` (``quantization_status`` ``"compressed"``), format
  ``pack-quantized`` with symmetric int weights of 2–8 bits (strategy ``group``, ``channel``
  or ``tensor``): ``P.weight_packed`` I32 ``[out, ⌈in·bits/32⌉]`` (each row a dense bit
  stream), ``P.weight_scale`` ``[out, groups]`` (``[out, 1]``, ``[1]``), ``P.weight_shape``
  ``[2]`` holding ``[out, in]``, optional ``P.weight_g_idx``; and format ``float-quantized``
  with FP8 weights (``tensor``, ``channel``, ``group`` or ``block``): ``P.weight``
  F8_E4M3 ``[out, in]`` and ``P.weight_scale`` (``[1]``, ``[out, 1]``, ``[out, in/group]``
  or ``[⌈out/b₀⌉, ⌈in/b₁⌉]``); and format ``int-quantized`` (llm-compressor's W8A8; also
  ``naive-quantized`` with int weights, the same layout) with int weights of 2–8 bits stored
  one per byte (strategy ``tensor``, ``channel`` or ``group``; symmetric, or asymmetric with
  zero points): ``P.weight`` I8 ``[out, in]``, ``P.weight_scale`` ``[1]``, ``[out, 1]`` or
  ``[out, ⌈in/group⌉]``, optional ``P.weight_zero_point`` (I8 or I32) of the scales' shape.
  Activation scales and zero points (``input_scale``, ``input_zero_point``,
  ``input_global_scale``) are attached to their module too.

- ``quant_method="bitsandbytes"``: ``load_in_4bit`` (NF4 or FP4, nested absmax or not, as
  ``Params4bit`` serialises: ``P.weight`` U8 ``[⌈out·in/2⌉, 1]`` — with
  ``bnb_4bit_quant_storage`` ``int8``, ``float16``, ``bfloat16``, ``float32`` or ``float64``
  the same bytes viewed as that dtype, ``[⌈out·in/2 / itemsize⌉, 1]`` (FSDP/QLoRA setups) —, ``P.weight.absmax``,
  ``P.weight.quant_map``, ``P.weight.nested_absmax``, ``P.weight.nested_quant_map`` and
  ``P.weight.quant_state.bitsandbytes__nf4|fp4``, whose JSON holds the logical shape: it is
  read from local shards, ≤ 4 KiB) and ``load_in_8bit`` (LLM.int8: ``P.weight`` I8
  ``[out, in]``, ``P.SCB`` F32 ``[out]``, optional ``P.weight_format``).

- ``quant_method="mxfp4"`` (gpt-oss): MoE expert parameters ``P_blocks`` U8
  ``[experts, out, in/32, 16]`` with ``P_scales`` U8 ``[experts, out, in/32]`` (E8M0) become the
  logical ``P`` ``[experts, in, out]``, the orientation transformers gives them on load.

Any other ``quant_method`` or variant (per-tensor FP8, GPTQ in Marlin format,
AWQ GEMV, compressed-tensors' asymmetric packed, NVFP4 or MXFP4 formats) is not supported yet: the inventory then
shows the stored tensors as they are and says so in a warning (shapes, parameter counts and
targets of such modules are the packed ones, not the model's).

Each quantized linear becomes one logical weight ``P.weight`` (shape ``[out, in]``, as the
runtime module's ``in_features``/``out_features`` say); its auxiliary tensors are attached to
it (:class:`~lora_rank.report.Quantization`), never listed as modules.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import HeaderError, UnsupportedFormatError
from ..report import Module, Quantization, Tensor

#: Stored-tensor suffixes that betray a quantized checkpoint, by format family.
_SIGNATURES = {
    ".qweight": "GPTQ/AWQ",
    ".weight_scale_inv": "FP8 block-scaled",
    ".weight_packed": "compressed-tensors",
    ".weight_scale": "compressed-tensors/FP8",
    ".SCB": "bitsandbytes int8",
    ".absmax": "bitsandbytes 4-bit",
    "_blocks": "MXFP4",
}
_FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
_NAME, _DTYPE, _SHAPE = (operator.attrgetter(a) for a in ("name", "dtype", "shape"))
_SCALE_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class _Format:
    """One supported format, as read from ``quantization_config``."""

    method: str
    bits: int
    #: FP8: (rows, cols) block; GPTQ/AWQ: (group size along in_features, 0).
    block: tuple[int, int]
    #: GPTQ v1: 1 (zero points stored minus one), else 0.
    zero_offset: int = 0
    checkpoint_format: Optional[str] = None
    #: compressed-tensors: the int and the float scheme of its config groups.
    ct: Optional[_CtSchemes] = None
    #: bitsandbytes 4-bit: the dtype the packed bytes are stored as (bnb_4bit_quant_storage).
    storage: str = "U8"


@dataclass(frozen=True)
class _CtSchemes:
    """What a compressed-tensors ``quantization_config`` says of its weights: the scheme of
    its ``pack-quantized`` int weights, of its ``float-quantized`` FP8 weights and of its
    ``int-quantized`` int8 weights (each None when no config group uses it)."""

    #: (bits, group size or None for channel/tensor).
    packed: Optional[tuple[int, Optional[int]]] = None
    #: (strategy, group size or block) of FP8 weights.
    float8: Optional[tuple[str, Optional[tuple[int, int]]]] = None
    #: (bits, strategy, group size or None, symmetric) of int weights stored one per byte.
    int8: Optional[tuple[int, str, Optional[int], bool]] = None


def _int(qc: dict[str, Any], *keys: str, default: Optional[int] = None) -> Optional[int]:
    for k in keys:
        v = qc.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return default


def detect(config: Optional[dict[str, Any]], path: str) -> tuple[Optional[_Format], list[str]]:
    """The supported format of ``config``'s ``quantization_config`` (None when not quantized
    or not supported) and warnings. A supported method with an unsupported variant or bad
    parameters raises :class:`UnsupportedFormatError`.

    Example:
        >>> fmt, _ = detect({"quantization_config": {"quant_method": "gptq", "bits": 4,
        ...                  "group_size": 128}}, "config.json")
        >>> fmt.method, fmt.bits, fmt.block, fmt.zero_offset
        ('gptq', 4, (128, 0), 1)
    """
    qc = (config or {}).get("quantization_config")
    if qc is None:
        return None, []
    if not isinstance(qc, dict):
        raise UnsupportedFormatError(f"{path}: quantization_config is not an object")
    method = str(qc.get("quant_method", "")).lower()
    where = f"{path}: quantization_config quant_method {method!r}"
    if method == "fp8":
        block = qc.get("weight_block_size")
        fmt = str(qc.get("fmt", "e4m3")).lower()
        if block is None:
            raise UnsupportedFormatError(
                f"{where}: per-tensor FP8 (no weight_block_size) is not supported; only "
                "block-scaled FP8 (weight_scale_inv per block) is"
            )
        if (
            not isinstance(block, list)
            or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
        ):
            raise UnsupportedFormatError(
                f"{where}: weight_block_size {block!r} is not [rows, cols]"
            )
        if fmt not in ("e4m3", "e5m2"):
            raise UnsupportedFormatError(f"{where}: fmt {fmt!r} is not e4m3 or e5m2")
        return _Format("fp8", 8, (block[0], block[1])), []
    if method in ("gptq", "awq"):
        bits = _int(qc, "bits", "w_bit")
        group = _int(qc, "group_size", "q_group_size", default=-1)
        supported = (4,) if method == "awq" else (2, 4, 8)
        if bits not in supported:
            raise UnsupportedFormatError(
                f"{where}: {bits}-bit weights are not supported "
                f"(supported: {', '.join(map(str, supported))})"
            )
        assert group is not None and bits is not None
        if group == 0 or group < -1:
            raise UnsupportedFormatError(f"{where}: group_size {group} is not positive or -1")
        if method == "awq":
            version = str(qc.get("version", "gemm")).lower()
            if version != "gemm":
                raise UnsupportedFormatError(
                    f"{where}: AWQ version {version!r} is not supported (only 'gemm')"
                )
            if qc.get("zero_point", True) is not True:
                raise UnsupportedFormatError(f"{where}: AWQ without zero points is not supported")
            return _Format("awq", bits, (group, 0)), []
        ckpt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
        if ckpt not in ("gptq", "gptq_v2"):
            raise UnsupportedFormatError(
                f"{where}: checkpoint_format {ckpt!r} is not supported (only 'gptq', 'gptq_v2')"
            )
        return _Format("gptq", bits, (group, 0), int(ckpt == "gptq"), ckpt), []
    if method == "compressed-tensors":
        return _Format(method, 0, (0, 0), ct=_ct_schemes(qc, where)), []
    if method == "mxfp4":
        return _Format(method, 4, (32, 0)), []
    if method == "bitsandbytes":
        four, eight = bool(qc.get("load_in_4bit")), bool(qc.get("load_in_8bit"))
        if four == eight:
            raise UnsupportedFormatError(
                f"{where}: exactly one of load_in_4bit and load_in_8bit must be true"
            )
        storage = str(qc.get("bnb_4bit_quant_storage") or "uint8").removeprefix("torch.")
        if four and storage not in _BNB4_STORAGE:
            raise UnsupportedFormatError(
                f"{where}: bnb_4bit_quant_storage {storage!r} is not supported "
                f"(supported: {', '.join(_BNB4_STORAGE)})"
            )
        return _Format(
            method, 4 if four else 8, (0, 0), storage=_BNB4_STORAGE.get(storage, "U8")
        ), []
    return None, [
        f"quantization_config quant_method {method!r} is not supported by lora_rank yet: its "
        "quantized modules are listed as stored (packed shapes, stored element counts, "
        "auxiliary tensors as separate entries), not as the model's logical weights; their "
        "spectra cannot be computed"
    ]


#: bitsandbytes' ``bnb_4bit_quant_storage`` values (transformers' list) → the safetensors dtype
#: the packed bytes are stored as, and its size in bytes.
_BNB4_STORAGE = {
    "uint8": "U8",
    "int8": "I8",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
}
_ITEMSIZE = {"U8": 1, "I8": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8}

_CT_FORMATS = ("pack-quantized", "float-quantized", "int-quantized", "naive-quantized")


def _ct_schemes(qc: dict[str, Any], where: str) -> _CtSchemes:
    """The weight schemes of a compressed-tensors ``quantization_config`` (see the module
    docs); anything else it may say raises :class:`UnsupportedFormatError` naming it.

    Example:
        >>> w = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
        ...      "group_size": 128}
        >>> _ct_schemes({"format": "pack-quantized", "config_groups": {"g": {"weights": w}}}, "c")
        _CtSchemes(packed=(4, 128), float8=None, int8=None)
        >>> w8 = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "channel"}
        >>> _ct_schemes({"format": "int-quantized", "config_groups": {"g": {"weights": w8}}}, "c")
        _CtSchemes(packed=None, float8=None, int8=(8, 'channel', None, False))
    """
    status = qc.get("quantization_status", "compressed")
    if status != "compressed":
        raise UnsupportedFormatError(
            f"{where}: quantization_status {status!r} is not supported (only 'compressed')"
        )
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise UnsupportedFormatError(f"{where}: config_groups is missing or empty")
    packed: set[tuple[int, Optional[int]]] = set()
    float8: set[tuple[str, Optional[tuple[int, int]]]] = set()
    int8: set[tuple[int, str, Optional[int], bool]] = set()
    for name, group in groups.items():
        w = group.get("weights") if isinstance(group, dict) else None
        if w is None:
            continue  # activation-only quantization: weights are stored as they are
        fmt = str(group.get("format") or qc.get("format") or "")
        here = f"{where}: config group {name!r}"
        if fmt not in _CT_FORMATS:
            raise UnsupportedFormatError(
                f"{here}: format {fmt!r} is not supported (supported: {', '.join(_CT_FORMATS)})"
            )
        bits, kind, strategy = w.get("num_bits"), w.get("type"), w.get("strategy")
        symmetric = w.get("symmetric", True) is not False
        if fmt == "naive-quantized" and kind == "float":
            fmt = "float-quantized"  # the same layout: FP8 weights with their scales
        int_stored = fmt in ("int-quantized", "naive-quantized")
        if not symmetric and not int_stored:
            raise UnsupportedFormatError(
                f"{here}: asymmetric weights (zero points) are not supported by {fmt} yet "
                "(only by int-quantized)"
            )
        size = w.get("group_size")
        if int_stored:
            if kind != "int" or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise UnsupportedFormatError(
                    f"{here}: {bits}-bit {kind} weights are not supported by {fmt} "
                    "(supported: int, 2 to 8 bits, one per byte)"
                )
            if strategy == "group" and isinstance(size, int) and size > 0:
                int8.add((bits, "group", size, symmetric))
            elif strategy in ("channel", "tensor"):
                int8.add((bits, strategy, None, symmetric))
            else:
                raise UnsupportedFormatError(
                    f"{here}: strategy {strategy!r} (group_size {size!r}) is not supported by "
                    f"{fmt} (supported: tensor, channel, group)"
                )
        elif fmt == "pack-quantized":
            if kind != "int" or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise UnsupportedFormatError(
                    f"{here}: {bits}-bit {kind} weights are not supported by pack-quantized "
                    "(supported: int, 2 to 8 bits)"
                )
            if strategy == "group" and isinstance(size, int) and size > 0:
                packed.add((bits, size))
            elif strategy in ("channel", "tensor"):
                packed.add((bits, None))
            else:
                raise UnsupportedFormatError(
                    f"{here}: strategy {strategy!r} (group_size {size!r}) is not supported"
                )
        else:
            if kind != "float" or bits != 8:
                raise UnsupportedFormatError(
                    f"{here}: {bits}-bit {kind} weights are not supported by float-quantized "
                    "(supported: 8-bit float)"
                )
            block = w.get("block_structure")
            if strategy == "group" and isinstance(size, int) and size > 0:
                float8.add(("group", (1, size)))
            elif strategy == "block" and isinstance(block, list) and len(block) == 2:
                float8.add(("block", (int(block[0]), int(block[1]))))
            elif strategy in ("channel", "tensor"):
                float8.add((strategy, None))
            else:
                raise UnsupportedFormatError(f"{here}: FP8 strategy {strategy!r} is not supported")
    if len(packed) > 1 or len(float8) > 1 or len(int8) > 1:
        raise UnsupportedFormatError(
            f"{where}: config groups with different weight schemes are not supported yet"
        )
    if not packed and not float8 and not int8:
        raise UnsupportedFormatError(f"{where}: no config group quantizes weights")
    return _CtSchemes(next(iter(packed), None), next(iter(float8), None), next(iter(int8), None))


def _signature_warning(tensors: list[Tensor]) -> list[str]:
    suffixes = tuple(_SIGNATURES)
    found = next((t.name for t in tensors if t.name.endswith(suffixes)), None)
    if found is None:
        return []
    family = next(f for suffix, f in _SIGNATURES.items() if found.endswith(suffix))
    return [
        f"tensor {found} looks {family}-quantized, but config.json has no "
        "quantization_config: lora_rank does not guess the format, so the "
        "inventory shows the stored tensors as they are"
    ]


class _Malformed(Exception):
    """A quantized tensor breaks ``rule``; :func:`logical_tensors` turns it into a
    :class:`HeaderError` naming the shard file."""

    def __init__(self, tensor: Tensor, rule: str) -> None:
        super().__init__(rule)
        self.tensor, self.rule = tensor, rule


def _bad(t: Tensor, rule: str) -> _Malformed:
    return _Malformed(t, rule)


def _expect(
    t: Tensor, shape: tuple[int, ...], dtypes: tuple[str, ...], rule: Callable[[], str]
) -> None:
    """Check ``t``'s dtype and shape; ``rule()`` (built only on failure) says what it is."""
    if t.dtype in dtypes and t.shape == shape:
        return
    if t.dtype not in dtypes:
        raise _bad(t, f"dtype {t.dtype}, but {rule()} must be {' or '.join(dtypes)}")
    raise _bad(t, f"shape {list(t.shape)}, but {rule()} needs {list(shape)}")


def _fp8(fmt: _Format, p: str, by: dict[str, Tensor]) -> Optional[tuple[Tensor, Quantization]]:
    w, s = by.get(p + ".weight"), by.get(p + ".weight_scale_inv")
    if s is None:
        if w is not None and w.dtype in _FP8_DTYPES:
            raise _bad(w, "an FP8 weight without its block scales (weight_scale_inv is missing)")
        return None
    if w is None:
        raise _bad(s, f"block scales without their weight ({p}.weight is missing)")
    if w.dtype not in _FP8_DTYPES or len(w.shape) != 2:
        raise _bad(
            w,
            f"dtype {w.dtype} shape {list(w.shape)}: an FP8 block-scaled weight "
            "must be a 2-D F8_E4M3 or F8_E5M2 tensor",
        )
    (out_f, in_f), (b0, b1) = w.shape, fmt.block
    _expect(
        s,
        (-(-out_f // b0), -(-in_f // b1)),
        _SCALE_DTYPES,
        lambda: f"the scales of a {list(w.shape)} weight in {b0}x{b1} blocks",
    )
    q = Quantization(
        "fp8",
        8,
        None,
        fmt.block,
        w.dtype,
        w.shape,
        w.name,
        (("scales", s.name),),
        w.numel + s.numel,
    )
    return w, q


def _int_packed(
    fmt: _Format, p: str, by: dict[str, Tensor]
) -> Optional[tuple[Tensor, Quantization]]:
    qw = by.get(p + ".qweight")
    if qw is None:
        return None
    names = {"scales": p + ".scales", "zeros": p + ".qzeros"}
    missing = [n for n in names.values() if n not in by]
    if missing:
        raise _bad(qw, f"packed weights without {', '.join(missing)}")
    sc, qz = by[names["scales"]], by[names["zeros"]]
    if qw.dtype not in ("I32", "U32") or len(qw.shape) != 2:
        raise _bad(qw, f"dtype {qw.dtype} shape {list(qw.shape)}: packed weights must be 2-D I32")
    if len(sc.shape) != 2:
        raise _bad(sc, f"shape {list(sc.shape)}: scales must be 2-D [groups, out_features]")
    per_word = 32 // fmt.bits
    groups = sc.shape[0]
    if fmt.method == "gptq":
        in_f, out_f = qw.shape[0] * per_word, qw.shape[1]
    else:
        in_f, out_f = qw.shape[0], qw.shape[1] * per_word
    if out_f % per_word:
        raise _bad(
            qw,
            f"out_features {out_f} is not a multiple of {per_word} "
            f"({fmt.bits}-bit packed zero points)",
        )
    _expect(sc, (groups, out_f), _SCALE_DTYPES, lambda: f"the scales of a [{out_f}, {in_f}] weight")
    _expect(
        qz,
        (groups, out_f // per_word),
        ("I32", "U32"),
        lambda: f"the packed zero points of {groups} group(s) of {out_f} outputs",
    )
    aux = [("scales", sc.name), ("zeros", qz.name)]
    gi = by.get(p + ".g_idx")
    group = fmt.block[0] if fmt.block[0] > 0 else in_f
    if gi is not None and fmt.method == "gptq":
        _expect(gi, (in_f,), ("I32",), lambda: "g_idx of the input features")
        aux.append(("g_idx", gi.name))
    elif groups != math.ceil(in_f / group):
        raise _bad(
            sc,
            f"{groups} group(s), but {in_f} input features in groups of {group} "
            f"make {math.ceil(in_f / group)}",
        )
    stored = qw.numel + sum(by[n].numel for _, n in aux)
    q = Quantization(
        fmt.method,
        fmt.bits,
        fmt.block[0],
        None,
        qw.dtype,
        qw.shape,
        qw.name,
        tuple(aux),
        stored,
        fmt.checkpoint_format,
    )
    logical = Tensor(p + ".weight", qw.dtype, (out_f, in_f), qw.shard, qw.begin, qw.end)
    return logical, q


#: Activation-quantization tensors of a compressed-tensors linear: attached, never modules.
_CT_ACTIVATION = ("input_scale", "input_global_scale", "input_zero_point", "output_scale")


def _ct_activation_aux(p: str, by: dict[str, Tensor]) -> list[tuple[str, str]]:
    return [(role, p + "." + role) for role in _CT_ACTIVATION if p + "." + role in by]


def _ct_float(fmt: _Format, p: str, by: dict[str, Tensor]) -> Optional[tuple[Tensor, Quantization]]:
    """A compressed-tensors ``float-quantized`` FP8 weight: its scale block from the strategy."""
    w, s = by.get(p + ".weight"), by.get(p + ".weight_scale")
    if w is None or w.dtype not in _FP8_DTYPES:
        return None
    assert fmt.ct is not None
    if fmt.ct.float8 is None:
        raise _bad(w, "an FP8 weight, but no config group is float-quantized")
    if s is None:
        raise _bad(w, "an FP8 weight without its scales (weight_scale is missing)")
    if len(w.shape) != 2:
        raise _bad(w, f"shape {list(w.shape)}: an FP8 weight must be 2-D [out, in]")
    out_f, in_f = w.shape
    strategy, block = fmt.ct.float8
    if block is None:
        block = (out_f, in_f) if strategy == "tensor" else (1, in_f)
    want: tuple[tuple[int, ...], ...] = ((-(-out_f // block[0]), -(-in_f // block[1])),)
    if want[0] == (1, 1):
        want += ((), (1,))
    if s.dtype not in _SCALE_DTYPES or s.shape not in want:
        raise _bad(
            s,
            f"dtype {s.dtype} shape {list(s.shape)}, but the {strategy} scales of a "
            f"{list(w.shape)} FP8 weight must be {' or '.join(str(list(x)) for x in want)} "
            f"of {' or '.join(_SCALE_DTYPES)}",
        )
    aux = (("scales", s.name), *_ct_activation_aux(p, by))
    stored = w.numel + sum(by[n].numel for _, n in aux)
    q = Quantization(
        "compressed-tensors",
        8,
        None,
        block,
        w.dtype,
        w.shape,
        w.name,
        aux,
        stored,
        "float-quantized",
    )
    return w, q


def _ct_int(fmt: _Format, p: str, by: dict[str, Tensor]) -> Optional[tuple[Tensor, Quantization]]:
    """A compressed-tensors ``int-quantized`` weight: I8 ``[out, in]`` with scales of the
    shape its strategy gives (``tensor``, ``channel``, ``group``) and, when asymmetric, zero
    points of the same shape."""
    w, s = by.get(p + ".weight"), by.get(p + ".weight_scale")
    if w is None or w.dtype != "I8":
        if s is not None:  # no FP8 weight either (tried first): the scales of nothing
            shown = "missing" if w is None else f"{w.dtype} {list(w.shape)}"
            raise _bad(s, f"scales of a weight that is {shown}, not an I8 or FP8 [out, in] tensor")
        return None
    assert fmt.ct is not None
    if fmt.ct.int8 is None:
        raise _bad(w, "an int8 weight, but no config group is int-quantized")
    zp = by.get(p + ".weight_zero_point")
    if s is None:
        raise _bad(w, "an int8 weight without its scales (weight_scale is missing)")
    if len(w.shape) != 2:
        raise _bad(w, f"shape {list(w.shape)}: an int8 weight must be 2-D [out, in]")
    if p + ".weight_g_idx" in by:
        raise _bad(w, "activation-ordered int-quantized weights (weight_g_idx) are not supported")
    bits, strategy, group, symmetric = fmt.ct.int8
    out_f, in_f = w.shape
    tensor: tuple[tuple[int, ...], ...] = ((1,), (), (1, 1))
    if strategy == "group":
        assert group is not None
        want: tuple[tuple[int, ...], ...] = ((out_f, -(-in_f // group)),)
        block = (1, group)
    elif strategy == "channel":
        want, block = ((out_f, 1),) + (tensor if out_f == 1 else ()), (1, in_f)
    else:
        want, block = tensor, (out_f, in_f)
    if s.dtype not in _SCALE_DTYPES or s.shape not in want:
        raise _bad(
            s,
            f"dtype {s.dtype} shape {list(s.shape)}, but the {strategy} scales of a "
            f"{list(w.shape)} int8 weight must be {' or '.join(str(list(x)) for x in want)} "
            f"of {' or '.join(_SCALE_DTYPES)}",
        )
    aux = [("scales", s.name)]
    if zp is None and not symmetric:
        raise _bad(w, "asymmetric int8 weights without their zero points (weight_zero_point)")
    if zp is not None:
        _expect(zp, s.shape, ("I8", "I32"), lambda: "the zero points of its scales")
        aux.append(("zeros", zp.name))
    aux += _ct_activation_aux(p, by)
    stored = w.numel + sum(by[n].numel for _, n in aux)
    q = Quantization(
        "compressed-tensors",
        bits,
        group or -1,
        block,
        w.dtype,
        w.shape,
        w.name,
        tuple(aux),
        stored,
        "int-quantized",
    )
    return w, q


def _ct_packed(
    fmt: _Format, p: str, by: dict[str, Tensor], read_ints: Callable[[Tensor], Optional[list[int]]]
) -> Optional[tuple[Tensor, Quantization]]:
    """A compressed-tensors ``pack-quantized`` weight; ``in_features`` from the values of
    ``weight_shape`` (read with ``read_ints``) or, when they cannot be read, from the packed
    width."""
    wp = by.get(p + ".weight_packed")
    if wp is None:
        return None
    assert fmt.ct is not None
    if fmt.ct.packed is None:
        raise _bad(wp, "packed weights, but no config group is pack-quantized")
    bits, group = fmt.ct.packed
    names = {"scales": p + ".weight_scale", "shape": p + ".weight_shape"}
    missing = [n for n in names.values() if n not in by]
    if missing:
        raise _bad(wp, f"packed weights without {', '.join(missing)}")
    if p + ".weight_zero_point" in by:
        raise _bad(wp, "zero points (asymmetric weights) are not supported yet")
    sc, sh = by[names["scales"]], by[names["shape"]]
    if wp.dtype not in ("I32", "U32") or len(wp.shape) != 2:
        raise _bad(wp, f"dtype {wp.dtype} shape {list(wp.shape)}: packed weights must be 2-D I32")
    _expect(sh, (2,), ("I64", "I32"), lambda: "weight_shape ([out, in])")
    out_f, words = wp.shape
    values = read_ints(sh)
    if values is not None:
        if values[0] != out_f or not 0 < values[1] * bits <= words * 32 < values[1] * bits + 32:
            raise _bad(
                sh,
                f"values {values}, but {out_f} rows of {words} packed words hold "
                f"[{out_f}, {words * 32 // bits}] {bits}-bit weights at most",
            )
        in_f = values[1]
    else:
        in_f = words * 32 // bits
    groups = 1 if group is None else -(-in_f // group)
    if sc.dtype not in _SCALE_DTYPES or sc.shape not in ((out_f, groups), (1, groups), (1,), ()):
        raise _bad(
            sc,
            f"dtype {sc.dtype} shape {list(sc.shape)}, but the scales of a [{out_f}, {in_f}] "
            f"weight in groups of {group or in_f} must be [{out_f}, {groups}] of "
            f"{' or '.join(_SCALE_DTYPES)}",
        )
    aux = [("scales", sc.name), ("shape", sh.name)]
    gi = by.get(p + ".weight_g_idx")
    if gi is not None:
        _expect(gi, (in_f,), ("I32",), lambda: "weight_g_idx of the input features")
        aux.append(("g_idx", gi.name))
    aux += _ct_activation_aux(p, by)
    stored = wp.numel + sum(by[n].numel for _, n in aux)
    q = Quantization(
        "compressed-tensors",
        bits,
        group or -1,
        None,
        wp.dtype,
        wp.shape,
        wp.name,
        tuple(aux),
        stored,
        "pack-quantized",
    )
    logical = Tensor(p + ".weight", wp.dtype, (out_f, in_f), wp.shard, wp.begin, wp.end)
    return logical, q


def _bytes_reader(shards: Optional[Sequence[str]]) -> Callable[[Tensor], Optional[bytes]]:
    """Reads a small tensor's bytes (≤ 4 KiB: a shape, a quant_state) from a local shard; None
    when the shard is not a local file (e.g. on the hub). The shard is only read."""

    def read(t: Tensor) -> Optional[bytes]:
        path = shards[t.shard] if shards is not None and 0 <= t.shard < len(shards) else None
        if path is None or not os.path.isfile(path) or t.nbytes > 4096:
            return None
        with open(path, "rb") as f:
            f.seek(t.begin)
            data = f.read(t.nbytes)
        return data if len(data) == t.nbytes else None

    return read


def _ints(
    read_bytes: Callable[[Tensor], Optional[bytes]],
) -> Callable[[Tensor], Optional[list[int]]]:
    """``read_bytes`` for a little-endian I64/I32 tensor's values."""

    def read(t: Tensor) -> Optional[list[int]]:
        data = read_bytes(t)
        if data is None:
            return None
        size = 8 if t.dtype == "I64" else 4
        return [
            int.from_bytes(data[i : i + size], "little", signed=True)
            for i in range(0, len(data), size)
        ]

    return read


def _mxfp4(p: str, by: dict[str, Tensor]) -> Optional[tuple[Tensor, Quantization]]:
    """MXFP4 expert blocks ``P_blocks`` with their E8M0 ``P_scales``: the logical ``P``."""
    b, s = by.get(p + "_blocks"), by.get(p + "_scales")
    if b is None:
        return None
    if s is None:
        raise _bad(b, f"MXFP4 blocks without their scales ({p}_scales is missing)")
    if b.dtype != "U8" or len(b.shape) != 4 or b.shape[-1] != 16:
        raise _bad(
            b,
            f"dtype {b.dtype} shape {list(b.shape)}: MXFP4 expert blocks must be U8 "
            "[experts, out, in/32, 16]",
        )
    _expect(s, b.shape[:-1], ("U8",), lambda: "the E8M0 scales of the blocks")
    experts, out_f, groups, _ = b.shape
    q = Quantization(
        "mxfp4", 4, 32, None, b.dtype, b.shape, b.name, (("scales", s.name),), b.numel + s.numel
    )
    return Tensor(p, b.dtype, (experts, groups * 32, out_f), b.shard, b.begin, b.end), q


def mxfp4_experts(
    q: Quantization, tensors: dict[str, Tensor]
) -> list[tuple[QuantTuple, int, int, int]]:
    """Per expert of MXFP4 parameter ``q``: the engine's quantization tuple, the byte offset of
    its blocks, and the (rows, cols) it streams (``[out, in]``, the stored orientation).

    Example:
        >>> t = {"e.w_blocks": Tensor("e.w_blocks", "U8", (2, 8, 2, 16), 0, 0, 512),
        ...      "e.w_scales": Tensor("e.w_scales", "U8", (2, 8, 2), 0, 512, 544)}
        >>> q = Quantization("mxfp4", 4, 32, None, "U8", (2, 8, 2, 16), "e.w_blocks",
        ...                  (("scales", "e.w_scales"),), 544)
        >>> [(spec[5][2], offset, rows, cols) for spec, offset, rows, cols in mxfp4_experts(q, t)]
        [(512, 0, 8, 64), (528, 256, 8, 64)]
    """
    b, s = tensors[q.weight_key], tensors[dict(q.aux)["scales"]]
    experts, rows, groups, _ = b.shape
    out = []
    for e in range(experts):
        scales = (s.name, s.shard, s.begin + e * rows * groups, [rows, groups], s.dtype)
        spec: QuantTuple = ("mxfp4", b.name, 4, (32, 0), 0, scales, None, None, [], 0.0)
        out.append((spec, b.begin + e * rows * groups * 16, rows, groups * 32))
    return out


def _bnb8(p: str, by: dict[str, Tensor]) -> Optional[tuple[Tensor, Quantization]]:
    """A bitsandbytes LLM.int8 weight: I8 ``[out, in]`` with one ``SCB`` scale per row."""
    w, scb = by.get(p + ".weight"), by.get(p + ".SCB")
    if scb is None:
        if w is not None and w.dtype == "I8":
            raise _bad(w, "an int8 weight without its row scales (SCB is missing)")
        return None
    if w is None or w.dtype != "I8" or len(w.shape) != 2:
        shown = "missing" if w is None else f"{w.dtype} {list(w.shape)}"
        raise _bad(scb, f"row scales of a weight that is {shown}, not a 2-D I8 tensor")
    _expect(scb, (w.shape[0],), ("F32",), lambda: f"SCB of a {list(w.shape)} int8 weight")
    aux = [("scales", scb.name)]
    if p + ".weight_format" in by:
        aux.append(("weight_format", p + ".weight_format"))
    stored = w.numel + sum(by[n].numel for _, n in aux)
    q = Quantization("bitsandbytes", 8, None, None, w.dtype, w.shape, w.name, tuple(aux), stored)
    return w, q


#: The auxiliary tensors of a bitsandbytes 4-bit weight ``P.weight``, by role.
_BNB4_AUX = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def _bnb4(
    p: str,
    by: dict[str, Tensor],
    read_bytes: Callable[[Tensor], Optional[bytes]],
    storage: str = "U8",
) -> Optional[tuple[Tensor, Quantization]]:
    """A bitsandbytes 4-bit weight (packed bytes stored as ``storage``); its logical shape and
    block sizes come from the JSON of its ``quant_state`` tensor (read with ``read_bytes``)."""
    w = by.get(p + ".weight")
    states = [
        by[n]
        for n in (f"{p}.weight.quant_state.bitsandbytes__{t}" for t in ("nf4", "fp4"))
        if n in by
    ]
    if not states:
        if w is not None and w.dtype == storage and p + ".weight.absmax" in by:
            raise _bad(w, "a 4-bit weight without its quant_state")
        return None
    state = states[0]
    if w is None or w.dtype != storage or len(w.shape) != 2 or w.shape[1] != 1:
        shown = "missing" if w is None else f"{w.dtype} {list(w.shape)}"
        where = "" if storage == "U8" else " (bnb_4bit_quant_storage)"
        raise _bad(
            state, f"the quant_state of a weight that is {shown}, not {storage}{where} [n, 1]"
        )
    raw = read_bytes(state)
    if raw is None:
        raise UnsupportedFormatError(
            f"{state.name}: the shape of a bitsandbytes 4-bit weight is stored in its "
            "quant_state data, which is read from local files only; analyze a local copy"
        )
    try:
        qs = json.loads(raw.decode())
        (out_f, in_f), block = (int(x) for x in qs["shape"]), int(qs["blocksize"])
        nested = int(qs.get("nested_blocksize") or 0)
        offset = float(qs.get("nested_offset") or 0.0)
        kind = str(qs["quant_type"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        rule = f"not the JSON of a 4-bit quant_state with shape and blocksize ({e})"
        raise _bad(state, rule) from None
    nbytes = -(-out_f * in_f // 2)
    size = _ITEMSIZE[storage]
    if -(-nbytes // size) != w.shape[0]:
        unit = "bytes" if size == 1 else f"{storage} elements ({nbytes} bytes)"
        raise _bad(
            w,
            f"shape {list(w.shape)}, but [{out_f}, {in_f}] 4-bit weights take "
            f"[{-(-nbytes // size)}, 1] {unit}",
        )
    names = {role: f"{p}.weight.{role}" for role in _BNB4_AUX}
    for role in ("absmax", "quant_map"):
        if names[role] not in by:
            raise _bad(w, f"a 4-bit weight without {names[role]}")
    aux = [(role, names[role]) for role in _BNB4_AUX if names[role] in by]
    aux.append(("quant_state", state.name))
    stored = w.numel + sum(by[n].numel for _, n in aux)
    q = Quantization(
        "bitsandbytes",
        4,
        None,
        (block, nested),
        w.dtype,
        w.shape,
        w.name,
        tuple(aux),
        stored,
        kind,
        offset if nested else None,
    )
    logical = Tensor(p + ".weight", w.dtype, (out_f, in_f), w.shard, w.begin, w.end)
    return logical, q


@dataclass
class Logical:
    """The checkpoint seen as the model's logical weights."""

    #: Stored tensors with packed weights replaced by logical ones and auxiliaries dropped.
    tensors: list[Tensor]
    #: Logical weight name → how it is stored.
    quantized: Mapping[str, Quantization]
    warnings: list[str]
    #: Logical weight name → its stored keys (the stored weight, then the auxiliaries): what
    #: :func:`attach` puts back in a module's keys (None: read from ``quantized``).
    stored_keys: Optional[Mapping[str, tuple[str, ...]]] = field(default=None, repr=False)


class _Fp8Quantized(Mapping[str, Quantization]):
    """Logical weight name → :class:`Quantization` of a block-scaled FP8 checkpoint, each made
    when asked for (a module keeps its first; DeepSeek-V3 has 45,032 FP8 weights in 967
    modules). ``stored_keys`` maps each weight to ``(weight, scales)``."""

    def __init__(
        self, block: tuple[int, int], by: dict[str, Tensor], stored_keys: dict[str, tuple[str, str]]
    ) -> None:
        self._block, self._by, self._keys = block, by, stored_keys

    def __getitem__(self, name: str) -> Quantization:
        weight_key, scales_key = self._keys[name]
        w, s = self._by[weight_key], self._by[scales_key]
        return Quantization(
            "fp8",
            8,
            None,
            self._block,
            w.dtype,
            w.shape,
            w.name,
            (("scales", s.name),),
            w.numel + s.numel,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys


def _prefixes(fmt: _Format, tensors: list[Tensor], by: dict[str, Tensor]) -> list[str]:
    """Module prefixes of the stored weights that may be quantized under ``fmt``."""
    fp8_weights = [
        t.name[: -len(".weight")]
        for t in tensors
        if t.dtype in _FP8_DTYPES and t.name.endswith(".weight")
    ]
    if fmt.method == "fp8":
        return [
            t.name[: -len(".weight_scale_inv")]
            for t in tensors
            if t.name.endswith(".weight_scale_inv")
        ] + [p for p in fp8_weights if p + ".weight_scale_inv" not in by]
    if fmt.method == "mxfp4":
        return [t.name[: -len("_blocks")] for t in tensors if t.name.endswith("_blocks")]
    if fmt.method == "bitsandbytes":
        suffix = ".weight.absmax" if fmt.bits == 4 else ".SCB"
        return [t.name[: -len(suffix)] for t in tensors if t.name.endswith(suffix)]
    if fmt.method == "compressed-tensors":
        packed = [
            t.name[: -len(".weight_packed")] for t in tensors if t.name.endswith(".weight_packed")
        ]
        int8 = [
            t.name[: -len(".weight")]
            for t in tensors
            if t.dtype == "I8" and t.name.endswith(".weight")
        ]
        found = set(packed + fp8_weights + int8)
        scales = [
            t.name[: -len(".weight_scale")]
            for t in tensors
            if t.name.endswith(".weight_scale") and t.name[: -len(".weight_scale")] not in found
        ]
        return packed + fp8_weights + int8 + scales
    return [t.name[: -len(".qweight")] for t in tensors if t.name.endswith(".qweight")]


def _module(
    fmt: _Format,
    p: str,
    by: dict[str, Tensor],
    read_ints: Callable[[Tensor], Optional[list[int]]],
    read_bytes: Callable[[Tensor], Optional[bytes]],
) -> Optional[tuple[Tensor, Quantization]]:
    """The logical weight and storage of module ``p`` under ``fmt`` (None: not quantized)."""
    if fmt.method == "fp8":
        return _fp8(fmt, p, by)
    if fmt.method == "bitsandbytes":
        return _bnb4(p, by, read_bytes, fmt.storage) if fmt.bits == 4 else _bnb8(p, by)
    if fmt.method == "mxfp4":
        return _mxfp4(p, by)
    if fmt.method == "compressed-tensors":
        if p + ".weight_packed" in by:
            return _ct_packed(fmt, p, by, read_ints)
        return _ct_float(fmt, p, by) or _ct_int(fmt, p, by)
    return _int_packed(fmt, p, by)


def logical_tensors(
    tensors: list[Tensor],
    config: Optional[dict[str, Any]],
    path: str,
    shards: Optional[Sequence[str]] = None,
) -> Logical:
    """Replace each quantized weight of ``tensors`` by its logical weight (see the module docs).
    ``shards`` are the file names a tensor's shard index points into (for error messages).

    Example:
        >>> t = [Tensor("l.weight", "F8_E4M3", (256, 200), 0, 0, 51200),
        ...      Tensor("l.weight_scale_inv", "F32", (2, 2), 0, 51200, 51216)]
        >>> cfg = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
        >>> lg = logical_tensors(t, cfg, "config.json")
        >>> [x.name for x in lg.tensors], lg.quantized["l.weight"].block_size
        (['l.weight'], (128, 128))
    """
    fmt, warnings = detect(config, path)
    if fmt is None:
        if not warnings and config is not None and "quantization_config" not in config:
            warnings = _signature_warning(tensors)
        return Logical(list(tensors), {}, warnings)
    by = dict(zip(map(_NAME, tensors), tensors))
    read_bytes = _bytes_reader(shards)
    read_ints = _ints(read_bytes)
    quantized: Mapping[str, Quantization] = {}
    found_q: dict[str, Quantization] = {}
    replaced: dict[str, Tensor] = {}
    dropped: set[str] = set()
    unread: list[str] = []
    stored_keys: Optional[dict[str, tuple[str, str]]] = None

    def read_or_note(t: Tensor) -> Optional[list[int]]:
        values = read_ints(t)
        if values is None:
            unread.append(t.name)
        return values

    if fmt.method == "fp8":
        stored_keys = _fp8_pairs(fmt, tensors, by)
    if stored_keys is not None:
        quantized = _Fp8Quantized(fmt.block, by, stored_keys)
        dropped = {scales for _, scales in stored_keys.values()}
    else:
        quantized = found_q
    for p in _prefixes(fmt, tensors, by) if stored_keys is None else ():
        try:
            found = _module(fmt, p, by, read_or_note, read_bytes)
        except _Malformed as e:
            t = e.tensor
            where = shards[t.shard] if shards is not None and 0 <= t.shard < len(shards) else path
            raise HeaderError(f"{where}: quantized tensor {t.name!r}: {e.rule}") from None
        if found is None:
            continue
        logical, q = found
        found_q[logical.name] = q
        replaced[q.weight_key] = logical
        for _, n in q.aux:
            dropped.add(n)
    if not quantized:
        warnings.append(f"quantization_config says {fmt.method!r}, but no tensor is quantized")
    if unread:
        warnings.append(
            f"in_features of {len(unread)} pack-quantized module(s) are derived from the packed "
            f"width, as the values of {unread[0]}{' ...' if len(unread) > 1 else ''} are not "
            "read here (remote shards): exact when in_features × bits is a multiple of 32"
        )
    if replaced:
        out = [replaced.get(t.name, t) for t in tensors if t.name not in dropped]
    else:
        keep = map(operator.not_, map(dropped.__contains__, map(_NAME, tensors)))
        out = list(itertools.compress(tensors, keep))
    return Logical(out, quantized, warnings, stored_keys)


def _fp8_pairs(
    fmt: _Format, tensors: list[Tensor], by: dict[str, Tensor]
) -> Optional[dict[str, tuple[str, str]]]:
    """Each FP8 weight's ``(weight, scales)`` keys, in the order of the scales (as the loop of
    :func:`logical_tensors` finds them), when every FP8 tensor is a ``.weight`` with
    well-formed block scales and every scale has its FP8 weight: no :class:`Quantization`
    made (see :class:`_Fp8Quantized`), and per tensor only C-level passes (``map``, ``zip``;
    the dtype and shape rules are checked once per distinct combination: DeepSeek-V3 has
    45,032 pairs of a few dozen shapes). None when anything is amiss or unusual: the loop then
    decides, and names the first fault as :func:`_fp8` checks it."""
    b0, b1 = fmt.block
    scale_names = [n for n in map(_NAME, tensors) if n.endswith(".weight_scale_inv")]
    dtypes = list(map(_DTYPE, tensors))
    if sum(map(dtypes.count, _FP8_DTYPES)) != len(scale_names):
        return None  # an FP8 tensor without scales, or not named .weight: the loop decides
    weight_names = [n[: -len("_scale_inv")] for n in scale_names]
    weights = list(map(by.get, weight_names))
    if not all(weights):  # a Tensor is always true: only a missing weight (None) is not
        return None
    scales = list(map(by.__getitem__, scale_names))
    combos = set(
        zip(
            map(_DTYPE, weights),
            map(_SHAPE, weights),
            map(_DTYPE, scales),
            map(_SHAPE, scales),
        )
    )
    for w_dtype, w_shape, s_dtype, s_shape in combos:
        if w_dtype not in _FP8_DTYPES or len(w_shape) != 2 or s_dtype not in _SCALE_DTYPES:
            return None
        if s_shape != (-(-w_shape[0] // b0), -(-w_shape[1] // b1)):
            return None
    return dict(zip(weight_names, zip(weight_names, scale_names)))


def attach(modules: list[Module], logical: Logical) -> None:
    """Set :attr:`Module.quantization` and restore the stored keys of quantized modules."""
    quantized = logical.quantized
    if not quantized:
        return
    stored = logical.stored_keys
    if stored is None:
        stored = {k: (q.weight_key, *(n for _, n in q.aux)) for k, q in quantized.items()}
    for m in modules:
        keys: list[str] = []
        first = None
        for k in m.checkpoint_keys:
            found = stored.get(k)
            if found is None:
                keys.append(k)
                continue
            if first is None:
                first = k
            keys.extend(found)
        if first is not None and m.quantization is None:
            m.quantization = quantized[first]
        m.checkpoint_keys = tuple(keys)


def stored_bytes(tensors: list[Tensor]) -> int:
    """Bytes of data of ``tensors`` in their files."""
    ends: int = sum(map(operator.attrgetter("end"), tensors))
    begins: int = sum(map(operator.attrgetter("begin"), tensors))
    return ends - begins


def stored_elements(tensors: list[Tensor]) -> int:
    """Elements as stored (packed words, scales and zero points counted as they are)."""
    total: int = sum(map(math.prod, map(_SHAPE, tensors)))
    return total


# -- spectral jobs ----------------------------------------------------------------------------
_Aux = tuple[str, int, int, list[int], str]
QuantTuple = tuple[
    str, str, int, tuple[int, int], int, _Aux, Optional[_Aux], Optional[_Aux], list[_Aux], float
]


def engine_spec(
    logical: Tensor, q: Quantization, tensors: dict[str, Tensor]
) -> tuple[QuantTuple, int, int]:
    """The engine's quantization tuple for one stored weight (whose logical weight is
    ``logical``, ``[out, in]``), and the logical (rows, cols) it streams: ``[out, in]`` for FP8
    and compressed-tensors, ``[in, out]`` (the transpose, same singular values) for GPTQ/AWQ.

    Example:
        >>> t = {"l.weight": Tensor("l.weight", "F8_E4M3", (256, 200), 0, 0, 51200),
        ...      "l.weight_scale": Tensor("l.weight_scale", "F32", (1,), 0, 51200, 51204)}
        >>> q = Quantization("compressed-tensors", 8, None, (256, 200), "F8_E4M3", (256, 200),
        ...                  "l.weight", (("scales", "l.weight_scale"),), 51201, "float-quantized")
        >>> spec, rows, cols = engine_spec(t["l.weight"], q, t)
        >>> spec[0], spec[3], spec[5][3], (rows, cols)
        ('fp8_block', (256, 200), [1, 1], (256, 200))
    """

    def aux(role: str) -> Optional[_Aux]:
        name = dict(q.aux).get(role)
        if name is None:
            return None
        t = tensors[name]
        return (t.name, t.shard, t.begin, list(t.shape), t.dtype)

    scales = aux("absmax" if dict(q.aux).get("absmax") else "scales")
    assert scales is not None
    out_f, in_f = logical.shape
    if q.method == "compressed-tensors":
        # Scalar and [groups] scales are one row of scales for every row.
        shape = scales[3] if len(scales[3]) == 2 else [1, scales[3][0] if scales[3] else 1]
        scales = (*scales[:3], shape, scales[4])
    if q.method == "bitsandbytes":
        if q.bits == 8:
            return ("bnb8", q.weight_key, 8, (0, 0), 0, scales, None, None, [], 0.0), out_f, in_f
        assert q.block_size is not None
        extra = [a for a in (aux("quant_map"), aux("nested_absmax"), aux("nested_quant_map")) if a]
        spec4: QuantTuple = (
            "bnb4",
            q.weight_key,
            4,
            q.block_size,
            0,
            scales,
            None,
            None,
            extra,
            q.absmax_offset or 0.0,
        )
        return spec4, out_f, in_f
    if q.method == "fp8" or q.checkpoint_format == "float-quantized":
        assert q.block_size is not None
        fp8: QuantTuple = (
            "fp8_block",
            q.weight_key,
            8,
            q.block_size,
            0,
            scales,
            None,
            None,
            [],
            0.0,
        )
        return fp8, out_f, in_f
    if q.checkpoint_format == "int-quantized":
        zeros = aux("zeros")
        if zeros is not None:  # the layout of the scales
            zeros = (*zeros[:3], scales[3], zeros[4])
        group = q.group_size if q.group_size and q.group_size > 0 else in_f
        int8: QuantTuple = (
            "ct_int",
            q.weight_key,
            q.bits,
            (group, 0),
            0,
            scales,
            zeros,
            None,
            [],
            0.0,
        )
        return int8, out_f, in_f
    if q.method == "compressed-tensors":
        group = q.group_size if q.group_size and q.group_size > 0 else in_f
        packed: QuantTuple = (
            "ct_packed",
            q.weight_key,
            q.bits,
            (group, 0),
            0,
            scales,
            None,
            aux("g_idx"),
            [],
            0.0,
        )
        return packed, out_f, in_f
    group = q.group_size if q.group_size and q.group_size > 0 else in_f
    zero_offset = int(q.checkpoint_format == "gptq")
    spec: QuantTuple = (
        q.method,
        q.weight_key,
        q.bits,
        (group, 0),
        zero_offset,
        scales,
        aux("zeros"),
        aux("g_idx"),
        [],
        0.0,
    )
    return spec, in_f, out_f


def _format_of(q: Quantization) -> _Format:
    """The format that produced ``q`` (to read the other stored parts of its module)."""
    if q.method == "bitsandbytes" and q.bits == 4:
        return _Format(q.method, 4, (0, 0), storage=q.storage_dtype)
    if q.method in ("bitsandbytes", "mxfp4"):
        return _Format(q.method, q.bits, (0, 0))
    if q.method == "compressed-tensors":
        if q.checkpoint_format == "float-quantized":
            return _Format(q.method, 8, (0, 0), ct=_CtSchemes(float8=("block", q.block_size)))
        if q.checkpoint_format == "int-quantized":
            group = q.group_size if q.group_size and q.group_size > 0 else None
            rows = q.block_size[0] if q.block_size else 1
            strategy = "group" if group else "channel" if rows == 1 else "tensor"
            symmetric = "zeros" not in dict(q.aux)
            scheme = (q.bits, strategy, group, symmetric)
            return _Format(q.method, q.bits, (0, 0), ct=_CtSchemes(int8=scheme))
        group = q.group_size if q.group_size and q.group_size > 0 else None
        return _Format(q.method, q.bits, (0, 0), ct=_CtSchemes(packed=(q.bits, group)))
    block = q.block_size if q.block_size else (q.group_size or -1, 0)
    return _Format(q.method, q.bits, block, int(q.checkpoint_format == "gptq"), q.checkpoint_format)


def stored_parts(
    m: Module, tensors: dict[str, Tensor], shards: Optional[Sequence[str]] = None
) -> list[tuple[Tensor, Quantization]]:
    """The logical weight and storage of each stored weight of quantized module ``m`` (one
    for a plain linear, one per expert and projection for MoE experts), in checkpoint-key
    order; ``shards`` as for :func:`logical_tensors`."""
    q = m.quantization
    assert q is not None
    fmt = _format_of(q)
    read_bytes = _bytes_reader(shards)
    read_ints = _ints(read_bytes)
    parts = []
    for k in m.checkpoint_keys:
        t = tensors.get(k)
        if t is None or k != _stored_weight_key(k, t):
            continue
        p = k.removesuffix("_blocks") if k.endswith("_blocks") else k.rsplit(".", 1)[0]
        found = _module(fmt, p, tensors, read_ints, read_bytes)
        if found is not None:
            parts.append(found)
    return parts


def _stored_weight_key(k: str, t: Tensor) -> Optional[str]:
    """``k`` when it names a quantized module's stored weight (``weight`` of FP8,
    ``weight_packed``, ``qweight``), else None."""
    if k.endswith((".qweight", ".weight_packed", "_blocks")):
        return k
    if k.endswith(".weight") and t.dtype in (*_FP8_DTYPES, *_ITEMSIZE):
        return k  # I8/U8 ints; bitsandbytes' 4-bit bytes stored as any of its storage dtypes
    return None
