"""Spectral statistics of every weight matrix, streamed from the shards by the Rust engine.

:func:`compute_spectra` fills :attr:`Module.spectrum` for every 2-D weight (linear layers,
embeddings, ``lm_head``, routers) and :attr:`Module.expert_spectra` (one per expert) for MoE
expert modules. It is what ``lora_rank.analyze(path, spectral=True)`` runs.

How the numbers are computed (``rust/lora_rank_core/src/spectral/``):

- **Reading**: each matrix is read in row panels with positioned reads and decoded from its
  stored dtype (F32, F16, BF16, F64, F8_E4M3, F8_E5M2) into ``f32`` panels; no full copy of a
  matrix is ever made. A runtime matrix that transformers fuses from several stored tensors
  (an expert's ``gate_proj`` + ``up_proj``) is read as their row stack, an expert slice of a
  stored 3-D tensor as its contiguous block. Conv1D weights (stored ``[in, out]``) need nothing
  special: singular values do not change under transposition.
- **Quantized weights** (FP8 block-scaled, GPTQ, AWQ; :mod:`lora_rank.quantization`): the
  engine reads the packed panel and dequantizes it into the ``f32`` panel (FP8 × block scale;
  int × scale − scale·zero with the group of each input row, act-order ``g_idx`` included);
  scales and zero points are read once per matrix. GPTQ/AWQ matrices are streamed as Wᵀ
  (their stored orientation), which has the same singular values.
- **method="randomized"**: randomized block Krylov on WᵀW (Halko–Martinsson–Tropp; Musco &
  Musco), blocks of ``top_k + 8`` columns, every block kept; each iteration is one fused pass
  over the matrix. It stops when the estimated relative error of every top-k singular value
  is at most ``rtol`` (default 3e-3; the estimate extrapolates each value's last two changes
  geometrically), or after ``max_iter`` passes (default 24). Ritz values approach the true σ
  from below.
- **method="exact"**: the Gram matrix over the smaller dimension in f64 and a symmetric
  eigensolver: the whole spectrum. ``"auto"`` (default) uses it when min(rows, cols) ≤ 512.
- **frobenius_norm** is exact (f64 sum of squares, same pass); **stable_rank** = ‖W‖_F²/σ₁².
- **Whole spectrum** (``energy_rank_*``, ``sv_quantiles``, ``mp_*``, ``spectrum_snr``,
  ``mp_snr``, ``pl_alpha``/``pl_xmin``): every statistic is computed by one function from the
  N = min(rows, cols) eigenvalues of WᵀW. In exact mode they are the spectrum. In randomized
  mode they are read off a block Gauss quadrature (stochastic Lanczos) estimate of the spectral
  density from the same passes: the random start block's 40 columns are the probes, the Ritz
  values of H = QᵀBQ the nodes, the squared first-block components of its eigenvectors the
  weights; Ritz values with a negligible residual count as single eigenvalues, a wide matrix's
  null space is a point mass at 0, and the singular values between nodes are interpolated
  linearly in count (then scaled to the exact ‖W‖_F²). ``energy_rank_stderr`` is the standard
  error across the probes.
- **energy_rank_90/95/99**: smallest r with Σᵢ≤ᵣ σᵢ² ≥ share·‖W‖_F² (``energy_rank_exact``:
  exact mode, or reached within the converged top-k). Measured against float64 SVD on MiniLM
  and on LLM-shaped bf16 matrices: benches/README.md ("Spectral shape").
- **mp_sigma, mp_edge, mp_spikes**: Marchenko–Pastur fit: the noise scale s from the median of
  the bulk (λ_med = s²·M·median_MP(N/M), M = max(rows, cols)), iterated with the values above
  the edge s(√M + √N) removed until their count settles.
- **spectrum_snr**: Spectrum's (Hartford et al. 2024) SNR as its spectrum.py codes it:
  σ = IQR(S)/1.349, τ = σ(1 + √(N/M)), ΣS[S>τ]/ΣS[S≤τ] divided by S[0] (scale-dependent;
  its "noise := 1" rule also where it would divide by zero, so never inf). **mp_snr**:
  Σσ above the MP edge / Σσ below it (scale-invariant, denominator floored at f32 rounding).
- **pl_alpha, pl_xmin**: WeightWatcher's ``WWFit`` (its default since 0.7) on the eigenvalues
  above 1e-5: for each candidate x_min the continuous MLE α and the KS distance, least D wins.
- **Stopping**: besides the top-k rule, a randomized solve stops once σ₁ meets ``rtol`` and two
  consecutive shape estimates agree (energy ranks within 1%, MP edge within 1%, same spike
  count, α within 0.02, Spectrum SNR within 1%), from the 4th pass on: noise-like matrices
  without a spectral gap no longer run to ``max_iter``. ``converged`` says a rule was met;
  otherwise a warning names the matrix. ``sv_error`` is the top-k error estimate at the stop.
- **Kernels**: bf16 matrices on CPUs with AVX-512 BF16 run both products of a pass as bf16
  dot products (``vdpbf16ps``) on the stored words, with X and P·X rounded to bf16
  (``LORA_RANK_NO_BF16_KERNEL=1`` falls back to decoding to f32).
- **nonfinite**: count of NaN/Inf elements; when nonzero, every other field is NaN (energy
  ranks 0), a warning is added to the report and issued, and the scan goes on.

Threads: a pool of ``threads`` (default: all cores); large matrices are split into panel
groups reduced in a fixed order, small ones run in parallel with each other, so results are
deterministic for a given ``seed`` and thread count. The GIL is released during the scan;
Ctrl-C stops it within a fraction of a second with KeyboardInterrupt. A shard whose size or
modification time changes during the scan (or whose size no longer matches its header) raises
:class:`~lora_rank.FileChangedError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings as _warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from . import _core, quantization
from .errors import ConfigError, UnsupportedFormatError
from .progress import ProgressCallback, progress_reporter
from .report import Module, Report, Spectrum, Tensor

METHODS = ("auto", "randomized", "exact")
#: Default relative convergence tolerance of the randomized solver.
DEFAULT_RTOL = 3e-3
#: Default cap on randomized iterations (passes over a matrix).
DEFAULT_MAX_ITER = 24
_ELEMENT_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")

Segment = tuple[int, int, int]
Job = tuple[str, list[Segment], int, str]


def _element_size(t: Tensor) -> int:
    # Undecodable dtypes are refused by the engine, which names file and tensor.
    return _ELEMENT_SIZE.get(t.dtype, 1)


def _job_bytes(job: Job) -> int:
    """Stored bytes of the matrix a job reads."""
    return sum(rows for _, _, rows in job[1]) * job[2] * _ELEMENT_SIZE.get(job[3], 1)


def _is_weight(key: str) -> bool:
    return key == "weight" or key.endswith(".weight")


class _Plan:
    """Jobs for the engine and where each result goes."""

    def __init__(self, report: Report) -> None:
        self.jobs: list[Job] = []
        #: Per job: None, or one engine quantization tuple per segment.
        self.quant: list[Optional[list[quantization.QuantTuple]]] = []
        #: (module, expert index or None) per job.
        self.targets: list[tuple[Module, Optional[int]]] = []
        self.tensors = {t.name: t for t in report.tensors}
        self.shard_index = _shard_index(report)
        self.warnings: list[str] = []
        for m in report.modules:
            if m.kind != "norm":
                self._add_module(m)

    def _segment(self, t: Tensor, offset: int, rows: int) -> Segment:
        return (self.shard_index[t.shard], offset, rows)

    def _stack(self, name: str, parts: list[Tensor]) -> Optional[Job]:
        """One job reading ``parts`` (2-D, same columns and dtype) as their row stack."""
        if len({(t.shape[1], t.dtype) for t in parts}) != 1:
            return None
        segments = [self._segment(t, t.begin, t.shape[0]) for t in parts]
        return (name, segments, parts[0].shape[1], parts[0].dtype)

    def _add(
        self,
        job: Job,
        module: Module,
        expert: Optional[int],
        quant: Optional[list[quantization.QuantTuple]] = None,
    ) -> None:
        self.jobs.append(job)
        self.targets.append((module, expert))
        self.quant.append(quant)

    def _add_quantized(self, m: Module) -> None:
        """Jobs of a quantized module: the engine dequantizes while streaming."""
        parts = quantization.stored_parts(m, self.tensors)
        specs = [quantization.engine_spec(q, self.tensors, self.shard_index) for q in parts]
        if m.num_experts is None:
            if len(parts) != 1:
                self.warnings.append(f"{m.name}: {len(parts)} quantized weights; no spectrum")
                return
            (spec, rows, cols), q = specs[0], parts[0]
            seg = self._segment(self.tensors[q.weight_key], self.tensors[q.weight_key].begin, rows)
            self._add((q.weight_key, [seg], cols, q.storage_dtype), m, None, [spec])
            return
        by_expert: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(parts):
            match = _EXPERT_INDEX.search(q.weight_key)
            if match is None:
                self.warnings.append(f"{m.name}: expert tensors not recognised; no expert spectra")
                return
            by_expert[int(match.group(1))].append(i)
        for e, idx in sorted(by_expert.items()):
            widths = {specs[i][2] for i in idx}
            if len(widths) != 1 or (len(idx) > 1 and parts[idx[0]].method != "fp8"):
                self.warnings.append(
                    f"{m.name}: the quantized parts of expert {e} cannot be read as one row "
                    "stack (GPTQ/AWQ store the transpose); no expert spectra"
                )
                return
        for e, idx in sorted(by_expert.items()):
            segs = [
                self._segment(
                    self.tensors[parts[i].weight_key],
                    self.tensors[parts[i].weight_key].begin,
                    specs[i][1],
                )
                for i in idx
            ]
            job = (f"{m.name}[{e}]", segs, specs[idx[0]][2], parts[idx[0]].storage_dtype)
            self._add(job, m, e, [specs[i][0] for i in idx])

    def _add_module(self, m: Module) -> None:
        if m.quantization is not None:
            self._add_quantized(m)
            return
        stored = [self.tensors[k] for k in m.checkpoint_keys if k in self.tensors]
        weights = [t for t in stored if _is_weight(t.name) and len(t.shape) in (2, 3)]
        if not weights:
            return
        if m.num_experts is not None:
            self._add_experts(m, weights)
            return
        two_d = [t for t in weights if len(t.shape) == 2]
        if not two_d:
            return
        name = two_d[0].name if len(two_d) == 1 else m.name
        job = self._stack(name, two_d)
        if job is None:
            self.warnings.append(
                f"{m.name}: its stored weights differ in columns or dtype; spectrum of "
                f"{two_d[0].name} only"
            )
            job = self._stack(two_d[0].name, two_d[:1])
        assert job is not None
        self._add(job, m, None)

    def _add_experts(self, m: Module, weights: list[Tensor]) -> None:
        three_d = [t for t in weights if len(t.shape) == 3]
        if len(three_d) == 1 and len(weights) == 1:
            t = three_d[0]
            experts, rows, cols = t.shape
            block = rows * cols * _element_size(t)
            for e in range(experts):
                seg = self._segment(t, t.begin + e * block, rows)
                self._add((f"{t.name}[{e}]", [seg], cols, t.dtype), m, e)
            return
        by_expert: dict[int, list[Tensor]] = defaultdict(list)
        for t in weights:
            match = _EXPERT_INDEX.search(t.name)
            if match is None or len(t.shape) != 2:
                by_expert.clear()
                break
            by_expert[int(match.group(1))].append(t)
        if not by_expert:
            self.warnings.append(
                f"{m.name}: expert tensors not recognised "
                f"({', '.join(t.name for t in weights[:3])}); no expert spectra"
            )
            return
        for e in sorted(by_expert):
            job = self._stack(f"{m.name}[{e}]", by_expert[e])
            if job is None:
                self.warnings.append(
                    f"{m.name}: the parts of expert {e} differ in columns or dtype; "
                    "no expert spectra"
                )
                return
        for e in sorted(by_expert):
            job = self._stack(f"{m.name}[{e}]", by_expert[e])
            assert job is not None
            self._add(job, m, e)


def _shard_index(report: Report) -> dict[str, int]:
    """Shard file name (as in :attr:`Tensor.shard`) → index into :attr:`Report.shards`."""
    out: dict[str, int] = {}
    for name in {t.shard for t in report.tensors}:
        for i, path in enumerate(report.shards):
            if path == name or path.endswith(os.sep + name) or path.endswith("/" + name):
                out[name] = i
                break
        else:
            raise ConfigError(f"tensor shard {name!r} is not among the report's shards")
    return out


def _expected_sizes(report: Report, shard_index: dict[str, int]) -> list[int]:
    """File size each shard's header implies (its data ends with its last tensor)."""
    sizes = [-1] * len(report.shards)
    for t in report.tensors:
        i = shard_index[t.shard]
        sizes[i] = max(sizes[i], t.end)
    return sizes


def _spectrum(d: Mapping[str, Any]) -> Spectrum:
    """The engine's dict as a :class:`Spectrum`: the dataclass's fields drive the conversion
    (lists become tuples), so a field is defined once."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Spectrum):
        v = d[f.name]
        values[f.name] = tuple(v) if isinstance(v, list) else v
    return Spectrum(**values)


def _check_args(
    top_k: int, method: str, rtol: Optional[float], seed: int, threads: Optional[int]
) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, not {top_k!r}")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if rtol is not None and not (0.0 < rtol < 1.0):
        raise ConfigError(f"rtol must be in (0, 1), not {rtol!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), not {seed!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer or None, not {threads!r}")


def compute_spectra(
    report: Report,
    *,
    top_k: int = 32,
    method: str = "auto",
    rtol: Optional[float] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: Union[bool, ProgressCallback, None] = None,
    max_iter: Optional[int] = None,
) -> None:
    """Compute spectra of every weight matrix of ``report`` in place (see the module docs).

    Args:
        report: from :func:`lora_rank.analyze` (the checkpoint must not have changed since).
        top_k: number of top singular values per matrix.
        method: ``"auto"``, ``"randomized"`` or ``"exact"``.
        rtol: convergence tolerance of the randomized solver (default 3e-3).
        seed: seed of the random start blocks (results are reproducible per seed and threads).
        threads: worker threads (default: all cores).
        progress: ``callback(done, total, name)`` per matrix, True for a bar, False for none,
            None for a bar only when stderr is a terminal.
        max_iter: cap on randomized iterations (default 24).

    Raises:
        FileChangedError: a shard changed since ``analyze`` read its header.
        UnsupportedFormatError: a weight's dtype cannot be decoded (integer/packed formats).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> compute_spectra(report, top_k=8, progress=False)
        >>> s = report.module("encoder.layer.0.attention.self.query").spectrum
        >>> round(s.singular_values[0], 2), s.method
        (6.12, 'exact')
    """
    _check_args(top_k, method, rtol, seed, threads)
    plan = _Plan(report)
    sizes = _expected_sizes(report, plan.shard_index)
    shards = [(path, size) for path, size in zip(report.shards, sizes)]
    results: Sequence[Mapping[str, Any]]
    if report.remote_shards is not None:
        if any(q is not None for q in plan.quant):
            raise UnsupportedFormatError(
                f"{report.path}: spectra of a remote quantized checkpoint are not supported "
                "yet; analyze a local copy (the inventory works remotely)"
            )
        from .sources.hub import remote_spectra

        total = sum(_job_bytes(job) for job in plan.jobs)
        with progress_reporter(progress, len(plan.jobs), total_bytes=total) as callback:
            results = remote_spectra(
                report.remote_shards,
                plan.jobs,
                _ELEMENT_SIZE,
                progress=callback,
                fetched=getattr(callback, "fetched", None),
                top_k=top_k,
                method=method,
                rtol=rtol,
                seed=seed,
                max_iter=max_iter,
                threads=threads,
            )
    else:
        with progress_reporter(progress, len(plan.jobs)) as callback:
            results = list(
                _core.spectra(
                    shards,
                    plan.jobs,
                    top_k=top_k,
                    method=method,
                    rtol=rtol,
                    seed=seed,
                    max_iter=max_iter,
                    threads=threads,
                    progress=callback,
                    quant=plan.quant,
                )
            )
    experts: dict[str, dict[int, Spectrum]] = defaultdict(dict)
    warns = list(plan.warnings)
    for (module, expert), job, d in zip(plan.targets, plan.jobs, results):
        spectrum = _spectrum(d)
        if spectrum.nonfinite:
            warns.append(
                f"{job[0]}: {spectrum.nonfinite} NaN/Inf value(s); its spectral statistics are NaN"
            )
        elif not spectrum.converged:
            warns.append(
                f"{job[0]}: the randomized solver did not converge in {spectrum.iterations} "
                f"passes (max_iter); estimated top-{top_k} error {spectrum.sv_error:.1e} "
                "(raise max_iter or rtol)"
            )
        if expert is None:
            module.spectrum = spectrum
        else:
            experts[module.name][expert] = spectrum
    for module in report.modules:
        if module.name in experts:
            per = experts[module.name]
            module.expert_spectra = tuple(per[e] for e in sorted(per))
    for w in warns:
        _warnings.warn(w, stacklevel=3)
    report.warnings.extend(warns)
    report.spectral_settings = {
        "top_k": top_k,
        "method": method,
        "rtol": DEFAULT_RTOL if rtol is None else rtol,
        "max_iter": DEFAULT_MAX_ITER if max_iter is None else max_iter,
        "seed": seed,
        "threads": threads if threads is not None else os.cpu_count(),
        "oversample": 8,
        "solver": "randomized block Krylov on WᵀW; exact: f64 Gram + symmetric eigensolver",
        "alpha": f"Hill, tail = top {top_k} eigenvalues",
        "pl_alpha": "WeightWatcher WWFit (KS-optimal x_min) on the whole (estimated) spectrum",
        "shape": "randomized: block Gauss quadrature density of the Krylov passes",
    }
