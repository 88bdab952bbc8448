"""Spectral statistics of every weight matrix, streamed from the shards by the Rust engine.

:func:`compute_spectra` fills :attr:`Module.spectrum` for every 2-D weight (linear layers,
embeddings, ``lm_head``, routers) and :attr:`Module.expert_spectra` (one per expert) for MoE
expert modules. It is what ``lora_rank.analyze(path, spectral=True)`` runs.

How the numbers are computed (``rust/lora_rank_core/src/spectral/``):

- **Reading**: each matrix is read in row panels with positioned reads and decoded from its
  stored dtype (F32, F16, BF16, F64, F8_E4M3, F8_E5M2) into ``f32`` panels; no decoded copy
  of a matrix is ever made. For the randomized solver's passes, a matrix stored in 16 bits or
  fewer is read once into memory when it fits in a fixed budget (512 MiB over the matrices in
  flight) and every later pass reads it there instead of from the page cache again. A runtime
  matrix that transformers fuses from several stored tensors (an expert's ``gate_proj`` +
  ``up_proj``) is read as their row stack, an expert slice of a stored 3-D tensor as its
  contiguous block. Conv1D weights (stored ``[in, out]``) need nothing
  special: singular values do not change under transposition.
- **Quantized weights** (FP8 block-scaled, GPTQ, AWQ; :mod:`lora_rank.inventory.quantization`): the
  engine reads the packed panel and dequantizes it into the ``f32`` panel (FP8 × block scale;
  int × scale − scale·zero with the group of each input row, act-order ``g_idx`` included);
  scales and zero points are read once per matrix. GPTQ/AWQ matrices are streamed as Wᵀ
  (their stored orientation), which has the same singular values.
- **method="randomized"**: randomized block Krylov on WᵀW, or on WWᵀ for a wide matrix (fewer
  rows than columns: the same nonzero eigenvalues, a shorter basis) (Halko–Martinsson–Tropp;
  Musco & Musco), blocks of ``top_k + oversample`` columns, every block kept; each iteration
  is one pass over the matrix (two sweeps of its panels for a wide one). It stops when the estimated relative error of every top-k singular value
  is at most ``rtol`` (the estimate extrapolates each value's last two changes geometrically),
  or by the shape rule below, or after ``max_iter`` passes. The settings and their defaults:
  :class:`~lora_rank.spectral.settings.SpectralSettings`. Ritz values approach the true σ
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
- **mp_sigma, mp_edge, mp_spikes**: Marchenko–Pastur fit by the bulk's *mean* eigenvalue: an
  M × N noise matrix (M = max(rows, cols), N = min) of entry variance s² has eigenvalues of
  mean s²·M, so with the k largest taken as spikes s² = (‖W‖_F² − Σᵢ≤ₖ σᵢ²)/(M·(N − k)); the
  edge is s(√M + √N) and k the count of σ above it, iterated from k = 0 until k settles. Only
  the exact ‖W‖_F² and the values above the edge enter (no quantile of the bulk), so in
  randomized mode the converged Ritz values determine it whenever the spikes are among them.
  (Until issue 14's accuracy work the fit used the bulk's median, which the quadrature
  resolves to ~20% only.)
- **spectrum_snr**: Spectrum's (Hartford et al. 2024) SNR as its spectrum.py codes it:
  σ = IQR(S)/1.349, τ = σ(1 + √(N/M)), ΣS[S>τ]/ΣS[S≤τ] divided by S[0] (scale-dependent;
  its "noise := 1" rule also where it would divide by zero, so never inf). It is
  ill-conditioned by definition (a 1% move of one quartile moves it by 5–120% on the bench
  matrices), so the randomized estimate is off by 10–20% typically and far more where τ falls
  near σ_min: use ``method="exact"`` to reproduce Spectrum's own number. **mp_snr**:
  Σσ above the MP edge / Σσ below it (scale-invariant, denominator floored at f32 rounding).
- **pl_alpha, pl_xmin**: WeightWatcher's ``WWFit`` (its default since 0.7) on the eigenvalues
  above 1e-5: for each candidate x_min the continuous MLE α and the KS distance, least D wins.
- **Stopping**: besides the top-k rule, a randomized solve stops once σ₁'s estimate is within
  3·``rtol``, every top-k estimate within 10·``rtol``, and two consecutive shape estimates
  agree (energy ranks within 1%, MP edge within 1%, same spike count, α within 0.02 or both
  above WeightWatcher's under-trained threshold 6), from the 4th pass on: flat-topped
  matrices (embeddings, lm_head, noise-like layers) stop
  at the 7th–11th pass instead of the 12th–14th. Spectrum's SNR is not waited for (more passes
  do not make its estimate more accurate). ``converged`` says a rule was met; otherwise a
  warning names the matrix. ``sv_error`` is the top-k error estimate at the stop: at most
  ``rtol`` after the top-k rule, at most 10·``rtol`` after the shape rule (0.05–1.25% on the
  LLM shapes of the benches at the default ``rtol``); a smaller ``rtol`` tightens both rules
  (before 2026-12-07 the shape rule ignored it beyond σ₁: a 4096×11008 bench matrix stopped
  at an estimate of 3.4% for any ``rtol``).
- **Kernels**: a pass runs on one of three kernels, chosen once per process. bf16 matrices on
  CPUs with AVX-512 BF16 can run both products as bf16 dot products (``vdpbf16ps``) on the
  stored words, with X and P·X rounded to bf16 (``bf16``). Otherwise each panel is decoded to
  f32 and multiplied by our AVX-512F kernels (``f32``: no per-panel packing, register tiles
  for a block of ≈ 40 columns; on an Intel Xeon ≈ 7% faster passes than faer's on the large
  LLM shapes, level on 1024×4096, 8–10% less CPU over a scan) or, on CPUs without AVX-512, by
  faer's matmul (``faer``). Which of ``bf16`` and ``f32``
  is faster depends on the CPU: on a Zen 4 ``vdpbf16ps`` should have twice the flop rate of an
  f32 FMA, and the bf16 kernels' pass was 2.4× the f32 path's; on an Intel Xeon without AMX
  it has half (measured), and the f32 path's whole solve is faster on every LLM shape. So the
  first time a process meets a bf16 matrix the engine measures the two instructions'
  throughput (≈ 1 ms) and takes the bf16 kernels when the dot product reaches 0.75× the FMA's
  flops; ``LORA_RANK_KERNEL=bf16``, ``f32`` or ``faer`` fixes the choice (a kernel the CPU
  lacks falls back: ``bf16`` to ``f32`` to ``faer``; ``LORA_RANK_NO_BF16_KERNEL=1``: ``f32``),
  and ``lora_rank._core.pass_kernel()`` says which runs. They agree within the solver's
  tolerance, not bit for bit (``f32`` and ``faer`` to f32 rounding). The bf16 kernels'
  rounding hides eigenvalues far below σ₁², so a matrix whose top value stands too far above
  the rest (θ₁ > 32·√n × the mean eigenvalue below the top k) is solved again with ``f32``;
  its ``iterations`` count the passes of both.
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

import warnings as _warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from .. import _core
from ..errors import UnsupportedFormatError
from ..report import Report, Spectrum
from .jobs import ELEMENT_SIZE, Plan, job_bytes, shard_files
from .progress import ProgressCallback, progress_reporter
from .settings import SpectralSettings


def compute_spectra(
    report: Report,
    settings: Optional[SpectralSettings] = None,
    *,
    progress: Union[bool, ProgressCallback, None] = None,
    **overrides: Any,
) -> None:
    """Compute spectra of every weight matrix of ``report`` in place (see the module docs).

    Args:
        report: from :func:`lora_rank.analyze` (the checkpoint must not have changed since).
        settings: solver settings (default :class:`SpectralSettings`()).
        progress: ``callback(done, total, name)`` per matrix, True for a bar, False for none,
            None for a bar only when stderr is a terminal.
        overrides: fields of ``settings`` to change (``top_k=8``, ``method="exact"``, ...;
            None keeps the field).

    Raises:
        ConfigError: an invalid setting.
        FileChangedError: a shard changed since ``analyze`` read its header.
        UnsupportedFormatError: a weight's dtype cannot be decoded (integer/packed formats).

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> compute_spectra(report, top_k=8, progress=False)
        >>> s = report.module("encoder.layer.0.attention.self.query").spectrum
        >>> round(s.singular_values[0], 2), s.method, s.converged
        (6.12, 'exact', True)
    """
    chosen = (settings or SpectralSettings()).replace(**overrides)
    plan = Plan(report)
    results: Sequence[Mapping[str, Any]]
    if report.remote_shards is not None:
        if any(q is not None for q in plan.quant):
            raise UnsupportedFormatError(
                f"{report.path}: spectra of a remote quantized checkpoint are not supported "
                "yet; analyze a local copy (the inventory works remotely)"
            )
        # Lazy: the hub source is needed for remote checkpoints only.
        from ..sources.hub import remote_spectra

        total = sum(job_bytes(job) for job in plan.jobs)
        with progress_reporter(progress, len(plan.jobs), total_bytes=total) as callback:
            results = remote_spectra(
                report.remote_shards,
                plan.jobs,
                ELEMENT_SIZE,
                progress=callback,
                settings=chosen,
                fetched=getattr(callback, "fetched", None),
            )
    else:
        with progress_reporter(progress, len(plan.jobs)) as callback:
            results = list(
                _core.spectra(
                    shard_files(report),
                    plan.jobs,
                    chosen,
                    progress=callback,
                    quant=plan.quant,
                )
            )
    attach_spectra(report, plan, results, chosen)


def attach_spectra(
    report: Report,
    plan: Plan,
    results: Sequence[Mapping[str, Any]],
    settings: SpectralSettings,
) -> None:
    """Fill the engine's result dicts (one per job of ``plan``, in order) into ``report``'s
    modules as :class:`Spectrum` objects, with a warning per non-finite or unconverged matrix:
    the last step of :func:`compute_spectra`, also used by the executors
    (:mod:`lora_rank.executors`) once their tasks return.

    Example:
        >>> import lora_rank
        >>> report = lora_rank.analyze(lora_rank.demo_checkpoint())
        >>> plan = Plan(report)
        >>> settings = SpectralSettings(top_k=8)
        >>> results = _core.spectra(shard_files(report), plan.jobs, settings)
        >>> attach_spectra(report, plan, results, settings)
        >>> round(report.module("encoder.layer.0.attention.self.query").spectrum.singular_values[0], 2)
        6.12
    """
    chosen = settings
    experts: dict[str, dict[int, Spectrum]] = defaultdict(dict)
    warns = list(plan.warnings)
    for (module, expert), job, d in zip(plan.targets, plan.jobs, results):
        spectrum = Spectrum.from_core(d)
        if spectrum.nonfinite:
            warns.append(
                f"{job[0]}: {spectrum.nonfinite} NaN/Inf value(s); its spectral statistics are NaN"
            )
        elif not spectrum.converged:
            warns.append(
                f"{job[0]}: the randomized solver did not converge in {spectrum.iterations} "
                f"passes (max_iter); estimated top-{chosen.top_k} error {spectrum.sv_error:.1e} "
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
        _warnings.warn(w, stacklevel=4)
    report.warnings.extend(warns)
    report.spectral_settings = chosen.describe()
