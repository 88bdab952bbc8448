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

Any other ``quant_method`` (compressed-tensors, bitsandbytes, MXFP4, ...) or variant
(per-tensor FP8, GPTQ in Marlin format, AWQ GEMV) is not supported yet: the inventory then
shows the stored tensors as they are and says so in a warning (shapes, parameter counts and
targets of such modules are the packed ones, not the model's).

Each quantized linear becomes one logical weight ``P.weight`` (shape ``[out, in]``, as the
runtime module's ``in_features``/``out_features`` say); its auxiliary tensors are attached to
it (:class:`~lora_rank.report.Quantization`), never listed as modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    return None, [
        f"quantization_config quant_method {method!r} is not supported by lora_rank yet: its "
        "quantized modules are listed as stored (packed shapes, stored element counts, "
        "auxiliary tensors as separate entries), not as the model's logical weights; their "
        "spectra cannot be computed"
    ]


def _signature_warning(tensors: list[Tensor]) -> list[str]:
    for t in tensors:
        for suffix, family in _SIGNATURES.items():
            if t.name.endswith(suffix):
                return [
                    f"tensor {t.name} looks {family}-quantized, but config.json has no "
                    "quantization_config: lora_rank does not guess the format, so the "
                    "inventory shows the stored tensors as they are"
                ]
    return []


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


@dataclass
class Logical:
    """The checkpoint seen as the model's logical weights."""

    #: Stored tensors with packed weights replaced by logical ones and auxiliaries dropped.
    tensors: list[Tensor]
    #: Logical weight name → how it is stored.
    quantized: dict[str, Quantization]
    warnings: list[str]


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
    by = {t.name: t for t in tensors}
    suffix = ".weight_scale_inv" if fmt.method == "fp8" else ".qweight"
    prefixes = [t.name[: -len(suffix)] for t in tensors if t.name.endswith(suffix)]
    if fmt.method == "fp8":
        prefixes += [
            t.name[: -len(".weight")]
            for t in tensors
            if t.dtype in _FP8_DTYPES
            and t.name.endswith(".weight")
            and t.name + "_scale_inv" not in by
        ]
    quantized: dict[str, Quantization] = {}
    replaced: dict[str, Tensor] = {}
    dropped: set[str] = set()
    for p in prefixes:
        try:
            found = _fp8(fmt, p, by) if fmt.method == "fp8" else _int_packed(fmt, p, by)
        except _Malformed as e:
            t = e.tensor
            where = shards[t.shard] if shards is not None and 0 <= t.shard < len(shards) else path
            raise HeaderError(f"{where}: quantized tensor {t.name!r}: {e.rule}") from None
        if found is None:
            continue
        logical, q = found
        quantized[logical.name] = q
        replaced[q.weight_key] = logical
        for _, n in q.aux:
            dropped.add(n)
    if not quantized:
        warnings.append(f"quantization_config says {fmt.method!r}, but no tensor is quantized")
    out = [replaced.get(t.name, t) for t in tensors if t.name not in dropped]
    return Logical(out, quantized, warnings)


def attach(modules: list[Module], logical: Logical) -> None:
    """Set :attr:`Module.quantization` and restore the stored keys of quantized modules."""
    if not logical.quantized:
        return
    for m in modules:
        keys: list[str] = []
        for k in m.checkpoint_keys:
            q = logical.quantized.get(k)
            if q is None:
                keys.append(k)
                continue
            m.quantization = m.quantization or q
            keys.append(q.weight_key)
            keys.extend(n for _, n in q.aux)
        m.checkpoint_keys = tuple(keys)


def stored_elements(tensors: list[Tensor]) -> int:
    """Elements as stored (packed words, scales and zero points counted as they are)."""
    return sum(t.numel for t in tensors)


# -- spectral jobs ----------------------------------------------------------------------------
_Aux = tuple[str, int, int, list[int], str]
QuantTuple = tuple[str, str, int, tuple[int, int], int, _Aux, Optional[_Aux], Optional[_Aux]]


def engine_spec(q: Quantization, tensors: dict[str, Tensor]) -> tuple[QuantTuple, int, int]:
    """The engine's quantization tuple for one stored weight, and the logical (rows, cols) it
    streams: ``[out, in]`` for FP8, ``[in, out]`` (the transpose, same singular values) for
    GPTQ/AWQ."""

    def aux(role: str) -> Optional[_Aux]:
        name = dict(q.aux).get(role)
        if name is None:
            return None
        t = tensors[name]
        return (t.name, t.shard, t.begin, list(t.shape), t.dtype)

    scales = aux("scales")
    assert scales is not None
    if q.method == "fp8":
        assert q.block_size is not None
        rows, cols = q.stored_shape
        return (("fp8_block", q.weight_key, 8, q.block_size, 0, scales, None, None), rows, cols)
    per_word = 32 // q.bits
    r, c = q.stored_shape
    rows, cols = (r * per_word, c) if q.method == "gptq" else (r, c * per_word)
    group = q.group_size if q.group_size and q.group_size > 0 else rows
    zero_offset = int(q.checkpoint_format == "gptq")
    spec = (
        q.method,
        q.weight_key,
        q.bits,
        (group, 0),
        zero_offset,
        scales,
        aux("zeros"),
        aux("g_idx"),
    )
    return spec, rows, cols


def stored_parts(m: Module, tensors: dict[str, Tensor]) -> list[Quantization]:
    """How each stored weight of quantized module ``m`` is stored (one for a plain linear,
    one per expert and projection for MoE experts), in checkpoint-key order."""
    q = m.quantization
    assert q is not None
    block = q.block_size if q.block_size else (q.group_size or -1, 0)
    fmt = _Format(q.method, q.bits, block, int(q.checkpoint_format == "gptq"), q.checkpoint_format)
    suffix = ".weight" if q.method == "fp8" else ".qweight"
    parts = []
    for k in m.checkpoint_keys:
        t = tensors.get(k)
        if (
            t is None
            or not k.endswith(suffix)
            or (q.method == "fp8" and t.dtype not in _FP8_DTYPES)
        ):
            continue
        p = k[: -len(suffix)]
        found = _fp8(fmt, p, tensors) if q.method == "fp8" else _int_packed(fmt, p, tensors)
        if found is not None:
            parts.append(found[1])
    return parts
