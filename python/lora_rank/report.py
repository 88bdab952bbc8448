"""The result of :func:`lora_rank.analyze`: tensors, modules and (optionally) their spectra.

A :class:`Report` is plain data: it can be turned into a dict, JSON or a pandas DataFrame and
holds no open files. Recommendation methods live in :mod:`lora_rank.recommend` and are reached
through :meth:`Report.recommend` and :meth:`Report.rank_targets`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .inventory.kinds import KINDS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .export.spectrum import Unfrozen
    from .peft.recommendation import Recommendation


@dataclass(frozen=True)
class Tensor:
    """One tensor as stored in a safetensors shard.

    Example:
        >>> t = Tensor("w", "BF16", (4, 8), 0, 8, 72)
        >>> t.numel, t.nbytes
        (32, 64)
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    #: Index of the shard file holding the tensor, into :attr:`Report.shards`.
    shard: int
    #: Absolute byte range of the data in the shard file.
    begin: int
    end: int

    @classmethod
    def from_rows(
        cls, rows: Iterable[tuple[str, str, tuple[int, ...], int, int, int]]
    ) -> list[Tensor]:
        """``[Tensor(*row) for row in rows]``, made without the frozen dataclass's
        ``object.__setattr__`` per field: each object's ``__dict__`` is filled in place (4×
        faster: a 405B checkpoint has 1,137 tensors, DeepSeek-V3 90,427).

        Example:
            >>> Tensor.from_rows([("w", "BF16", (4, 8), 0, 8, 72)]) == [Tensor("w", "BF16", (4, 8), 0, 8, 72)]
            True
        """
        new = object.__new__
        out: list[Tensor] = []
        append = out.append
        for name, dtype, shape, shard, begin, end in rows:
            t = new(cls)
            d = t.__dict__
            d["name"] = name
            d["dtype"] = dtype
            d["shape"] = tuple(shape)
            d["shard"] = shard
            d["begin"] = begin
            d["end"] = end
            append(t)
        return out

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data in the file."""
        return self.end - self.begin


@dataclass(frozen=True)
class Spectrum:
    """Spectral statistics of one weight matrix (see :func:`lora_rank.analyze`, ``spectral=True``).

    This dataclass is the one definition of a spectrum's fields: the Rust engine's result dicts
    (``_core.spectra``) carry exactly these keys, in this order, and :meth:`from_core` converts
    them by field name; ``tests/test_architecture.py`` fails when the binding and the dataclass
    disagree. See :mod:`lora_rank.spectral.compute` for how
    each value is computed.

    Whole-spectrum statistics (exact in ``"exact"`` mode; from the solver's block Gauss
    quadrature density in ``"randomized"`` mode): ``energy_rank_stderr`` (standard errors of
    the three energy ranks), ``sv_quantiles`` (25/50/75% of all singular values),
    ``mp_sigma`` / ``mp_edge`` / ``mp_spikes`` (Marchenko–Pastur noise scale s, fitted to the
    bulk's mean eigenvalue s²·max(rows, cols) with the spikes taken out of ‖W‖_F²; bulk edge
    s(√rows + √cols) in singular values; values above it), ``spectrum_snr`` (Spectrum's SNR as its spectrum.py
    computes it, scale-dependent), ``mp_snr`` (Σσ above the MP edge / Σσ below it,
    scale-invariant), ``pl_alpha`` / ``pl_xmin`` (WeightWatcher-style power-law fit of the
    eigenvalues). ``iterations`` (passes over the matrix), ``converged`` (a stopping rule was
    met; False: ``max_iter`` was reached, and a warning says so) and ``sv_error`` (estimated
    largest relative error of the top-k singular values) describe the solve.

    Example:
        >>> s = Spectrum((2.0, 1.0), 3.0, 2.0, 2.25, 1, 2, 2, True, 2.1, 0, "exact")
        >>> s.stable_rank, s.converged
        (2.25, True)
    """

    #: The top-k singular values, descending.
    singular_values: tuple[float, ...]
    #: ‖W‖_F, exact (f64 sum of squares).
    frobenius_norm: float
    #: σ₁.
    spectral_norm: float
    #: ‖W‖_F² / σ₁².
    stable_rank: float
    #: Smallest r whose Σᵢ≤ᵣ σᵢ² reaches 90% of ‖W‖_F² (95%, 99% below).
    energy_rank_90: int
    energy_rank_95: int
    energy_rank_99: int
    #: Whether the known σ sufficed for the energy ranks (else an estimate from a model of the
    #: unknown tail, never below the rigorous lower bound).
    energy_rank_exact: bool
    #: Hill estimate of the power-law exponent of the eigenvalues σᵢ² on the top-k.
    alpha: float
    #: NaN/Inf elements; when nonzero the float fields are NaN and the energy ranks 0.
    nonfinite: int
    #: ``"exact"`` or ``"randomized"``: what the solver used.
    method: str
    #: Solver passes over the matrix (randomized; 0 for exact).
    iterations: int = 0
    #: Whether the randomized solver met ``rtol`` before ``max_iter`` (always True for exact).
    converged: bool = True
    sv_error: float = 0.0
    energy_rank_stderr: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sv_quantiles: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    mp_sigma: float = math.nan
    mp_edge: float = math.nan
    mp_spikes: int = 0
    spectrum_snr: float = math.nan
    mp_snr: float = math.nan
    pl_alpha: float = math.nan
    pl_xmin: float = math.nan

    @classmethod
    def from_core(cls, d: Mapping[str, Any]) -> Spectrum:
        """The spectrum of one ``_core.spectra`` result dict, field by field name (lists
        become tuples), so a field is defined once.

        Example:
            >>> d = {f.name: 0 for f in dataclasses.fields(Spectrum)}
            >>> Spectrum.from_core({**d, "singular_values": [2.0, 1.0]}).singular_values
            (2.0, 1.0)
        """
        values = {f.name: d[f.name] for f in dataclasses.fields(cls)}
        for k, v in values.items():
            if isinstance(v, list):
                values[k] = tuple(v)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-safe apart from NaN floats)."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if isinstance(d[f.name], tuple):
                d[f.name] = list(d[f.name])
        return d


@dataclass(frozen=True)
class RemoteShard:
    """Where a shard of a remote checkpoint is read from: its URL (pinned to the commit), the
    ETag seen when its header was read (a later mismatch is a FileChangedError) and its size.

    Example:
        >>> RemoteShard("https://example.com/model.safetensors", "abc", 1024).size
        1024
    """

    url: str
    etag: Optional[str]
    size: int


@dataclass(frozen=True)
class Quantization:
    """How a quantized module's weight is stored (see :mod:`lora_rank.inventory.quantization`).

    ``method`` is ``"fp8"`` (block-scaled), ``"gptq"``, ``"awq"`` or
    ``"compressed-tensors"`` (``checkpoint_format`` ``"pack-quantized"`` or
    ``"float-quantized"``), ``"bitsandbytes"`` (4 or 8 bits) or ``"mxfp4"``; ``bits`` the stored bits per
    weight; ``group_size`` the group along ``in_features`` of packed int weights (-1: one
    group); ``block_size`` the FP8 scale block ``(rows, cols)``, or bitsandbytes' 4-bit
    ``(blocksize, nested blocksize or 0)`` along the flattened weight. ``weight_key`` is the stored weight
    (``qweight`` or ``weight``) of ``storage_dtype`` and ``stored_shape``; ``aux`` lists the
    auxiliary tensors by role (``scales``, ``zeros``, ``g_idx``); ``stored_elements`` counts
    the elements of all of them as stored.

    Example:
        >>> q = Quantization("gptq", 4, 128, None, "I32", (512, 4096), "l.qweight",
        ...                  (("scales", "l.scales"), ("zeros", "l.qzeros")), 2_392_064)
        >>> q.aux_keys
        ('l.scales', 'l.qzeros')
    """

    method: str
    bits: int
    group_size: Optional[int]
    block_size: Optional[tuple[int, int]]
    storage_dtype: str
    stored_shape: tuple[int, ...]
    weight_key: str
    aux: tuple[tuple[str, str], ...]
    stored_elements: int
    #: GPTQ ``checkpoint_format`` (``"gptq"``: v1, zero points stored minus one; ``"gptq_v2"``),
    #: the compressed-tensors format, or bitsandbytes' 4-bit ``quant_type`` (nf4, fp4).
    checkpoint_format: Optional[str] = None
    #: bitsandbytes 4-bit with nested (double-quantized) absmax: the offset added to it.
    absmax_offset: Optional[float] = None

    @property
    def aux_keys(self) -> tuple[str, ...]:
        """Names of the auxiliary tensors."""
        return tuple(name for _, name in self.aux)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d = dataclasses.asdict(self)
        d["stored_shape"] = list(self.stored_shape)
        d["block_size"] = list(self.block_size) if self.block_size else None
        d["aux"] = dict(self.aux)
        return d


@dataclass
class Module:
    """A runtime module (or, for fused MoE experts, a runtime parameter) of the model.

    ``name`` is what transformers and PEFT call it after loading
    (``model.layers.3.self_attn.q_proj``); ``checkpoint_keys`` are the stored tensors it is
    built from (several for MoE experts that transformers fuses on load). ``parameter`` is set
    for targets PEFT reaches through ``target_parameters`` (fused expert tensors, MoE routers):
    the full runtime parameter path.

    ``shape`` is the runtime weight shape (``[out, in]`` for Linear, ``[in, out]`` for
    GPT-2's Conv1D, ``[experts, out, in]`` for fused experts); ``in_features`` and
    ``out_features`` are always the mathematical ones. ``params`` counts weight + bias.
    For a quantized module, shape, features and ``params`` are the logical (dequantized) ones,
    ``dtype`` is the storage dtype and ``quantization`` says how it is stored.

    Example:
        >>> m = Module("model.layers.0.mlp.up_proj", "mlp_up", 0, 16, 48, (48, 16), "BF16",
        ...            768, True)
        >>> m.short_name
        'up_proj'
    """

    name: str
    kind: str
    layer: Optional[int]
    in_features: Optional[int]
    out_features: Optional[int]
    shape: tuple[int, ...]
    dtype: str
    params: int
    is_lora_target: bool
    checkpoint_keys: tuple[str, ...] = ()
    parameter: Optional[str] = None
    num_experts: Optional[int] = None
    #: Class name at runtime when known (from the architecture table or
    #: ``resolve="transformers"``), else None.
    module_class: Optional[str] = None
    spectrum: Optional[Spectrum] = None
    #: One spectrum per expert slice, for MoE expert tensors.
    expert_spectra: Optional[tuple[Spectrum, ...]] = None
    #: How the weight is stored, for quantized modules.
    quantization: Optional[Quantization] = None

    @property
    def short_name(self) -> str:
        """Last dotted component of :attr:`name` (what a PEFT suffix match uses)."""
        return self.name.rsplit(".", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        d: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("spectrum", "expert_spectra", "quantization")
        }
        d["quantization"] = self.quantization.to_dict() if self.quantization else None
        d["shape"] = list(self.shape)
        d["checkpoint_keys"] = list(self.checkpoint_keys)
        d["spectrum"] = self.spectrum.to_dict() if self.spectrum else None
        d["expert_spectra"] = (
            [s.to_dict() for s in self.expert_spectra] if self.expert_spectra else None
        )
        return d


@dataclass
class Report:
    """Inventory (and optional spectra) of one checkpoint.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> report.model_type, report.total_params, report.shards[report.tensors[0].shard][-17:]
        ('bert', 22713728, 'model.safetensors')
    """

    path: str
    model_type: Optional[str]
    architectures: list[str]
    config: Optional[dict[str, Any]]
    #: Sum of elements of all tensors in the files (buffers included, tied weights once);
    #: logical (dequantized) counts for quantized weights.
    total_params: int
    total_bytes: int
    tensors: list[Tensor]
    modules: list[Module]
    shards: list[str]
    resolve: str = "rules"
    #: How module names, classes and LoRA targets were found: ``"table"`` (the generated
    #: architecture table of the checkpoint's class), ``"heuristic"`` (names and shapes; a
    #: warning says so) or ``"transformers"`` (the model built on the meta device).
    resolution: str = "heuristic"
    warnings: list[str] = field(default_factory=list)
    #: Spectral settings used, when spectra were computed.
    spectral_settings: Optional[dict[str, Any]] = None
    #: For a remote checkpoint (hub repo or URL), where each of :attr:`shards` is read from.
    remote_shards: Optional[list[RemoteShard]] = None
    #: Elements as stored when the checkpoint is quantized (packed words, scales and zero
    #: points); ``total_params`` then counts the logical (dequantized) parameters.
    stored_elements: Optional[int] = None
    #: Versions of transformers and PEFT the shipped rename rules were generated with ...
    rules_version: dict[str, str] = field(default_factory=dict)
    #: ... and the versions installed here (None: not installed), read from package metadata
    #: without importing them. When they differ, ``resolve="transformers"`` gives the exact
    #: answer for the installed release; the fast path warns only where a module is guessed.
    installed_version: dict[str, Optional[str]] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------
    def module(self, name: str) -> Module:
        """The module called ``name`` (runtime name); KeyError if absent."""
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def lora_targets(self) -> list[Module]:
        """Modules PEFT's ``target_modules="all-linear"`` wraps, in model order."""
        return [m for m in self.modules if m.is_lora_target]

    @property
    def num_layers(self) -> int:
        """Number of distinct layer indices seen."""
        return len({m.layer for m in self.modules if m.layer is not None})

    @property
    def has_spectra(self) -> bool:
        """Whether spectral statistics were computed."""
        return self.spectral_settings is not None

    def kind_counts(self) -> dict[str, int]:
        """Number of modules per kind, in :data:`KINDS` order."""
        c = Counter(m.kind for m in self.modules)
        return {k: c[k] for k in KINDS if c[k]}

    def dtype_counts(self) -> dict[str, int]:
        """Elements per stored dtype."""
        c: Counter[str] = Counter()
        for t in self.tensors:
            c[t.dtype] += t.numel
        return dict(c.most_common())

    # -- recommendation --------------------------------------------------------------------
    def recommend(self, strategy: str = "auto", **kwargs: Any) -> Recommendation:
        """Recommend LoRA targets and ranks; see :func:`lora_rank.recommend.strategies.recommend`."""
        # Lazy import (deliberate cycle): recommend reads reports; a report offers the method.
        from .recommend.strategies import recommend

        return recommend(self, strategy, **kwargs)

    def rank_targets(self, task: Optional[str] = None) -> list[dict[str, Any]]:
        """Candidate target kinds and modules sorted by score; see
        :func:`lora_rank.recommend.strategies.rank_targets`."""
        # Lazy import (deliberate cycle), as in :meth:`recommend`.
        from .recommend.strategies import rank_targets

        return rank_targets(self, task=task)

    def select_unfrozen(self, top_percent: float = 25, **kwargs: Any) -> Unfrozen:
        """Spectrum's selection of layers to unfreeze by its SNR (exact spectra, computed here
        when missing); see :func:`lora_rank.export.spectrum.select_unfrozen`.

        Example:
            >>> import lora_rank
            >>> sel = lora_rank.analyze(lora_rank.demo_checkpoint()).select_unfrozen(25, progress=False)
            >>> sel.selected["attention.self.query"], sel.trainable_params
            (['encoder.layer.3.attention.self.query'], 2807808)
        """
        # Lazy import (deliberate cycle): export reads reports; a report offers the method.
        from .export.spectrum import select_unfrozen

        return select_unfrozen(self, top_percent, **kwargs)

    # -- export ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form of the whole report.

        Example:
            >>> import lora_rank
            >>> d = lora_rank.analyze(lora_rank.demo_checkpoint()).to_dict()
            >>> sorted(d)[:3]
            ['architectures', 'config', 'installed_version']
        """
        return {
            "path": self.path,
            "model_type": self.model_type,
            "architectures": list(self.architectures),
            "config": self.config,
            "total_params": self.total_params,
            "total_bytes": self.total_bytes,
            "stored_elements": self.stored_elements,
            "shards": list(self.shards),
            "resolve": self.resolve,
            "resolution": self.resolution,
            "rules_version": dict(self.rules_version),
            "installed_version": dict(self.installed_version),
            "warnings": list(self.warnings),
            "spectral_settings": self.spectral_settings,
            "tensors": [{**dataclasses.asdict(t), "shape": list(t.shape)} for t in self.tensors],
            "modules": [m.to_dict() for m in self.modules],
        }

    def to_json(self, indent: Optional[int] = None) -> str:
        """JSON text of :meth:`to_dict` (NaN written as ``null``)."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=indent)

    def to_pandas(self) -> pd.DataFrame:
        """One row per module (spectral columns included when computed). Needs pandas."""
        import pandas as pd

        rows = []
        for m in self.modules:
            row = {k: v for k, v in m.to_dict().items() if k not in ("spectrum", "expert_spectra")}
            row["shape"] = tuple(m.shape)
            row["checkpoint_keys"] = tuple(m.checkpoint_keys)
            if m.spectrum is not None:
                for k, v in m.spectrum.to_dict().items():
                    if k != "singular_values":
                        row[k] = v
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        targets = len(self.lora_targets)
        return (
            f"Report({self.model_type or 'unknown'}, {self.total_params:,} params, "
            f"{len(self.tensors)} tensors in {len(self.shards)} shard(s), "
            f"{len(self.modules)} modules, {targets} LoRA targets"
            f"{', spectra' if self.has_spectra else ''})"
        )

    def _repr_html_(self) -> str:
        """Notebook display: summary and per-kind table (see :mod:`lora_rank.render.html`)."""
        # Lazy import (deliberate cycle): render reads reports; notebooks display them.
        from .render.html import report_html

        return report_html(self)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x
