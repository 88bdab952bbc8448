//! Top singular values of a streamed matrix: randomized block Krylov, and an exact mode.
//!
//! **Randomized** (Halko–Martinsson–Tropp; Musco & Musco's block Krylov): the operator is
//! B = AᵀA on ℝⁿ (n = columns). Each iteration makes *one* pass over A, fused per row panel P:
//! Y = P·X, acc += Pᵀ·Y, so B·X costs one read of the matrix. A wide matrix (m < n rows) is
//! solved in its row space instead, B = AAᵀ on ℝᵐ (the same nonzero eigenvalues), with two
//! sweeps per pass ([`in_row_space`]); below, n is then m. Every block X₀, X₁, … is kept in
//! the orthonormal basis Q; the next block is B·Xᵢ orthogonalized against Q (block classical
//! Gram–Schmidt, twice) and QR-factored with faer. The Rayleigh quotient H = QᵀBQ needs no
//! extra pass: its new column block is Qᵀ(B·Xᵢ), the product just computed. The Ritz values
//! (eigenvalues of H, faer's self-adjoint eigensolver in f64) are σ² estimates from below.
//!
//! **Stopping.** Each top-k Ritz value θⱼ gets an error estimate: the residual bound
//! ([`residual_bounds`]: min(ρⱼ, ρⱼ²/gapⱼ) with ρⱼ = ‖R·sⱼ[last block]‖, R the R factor of
//! the next block, which the iteration computes anyway), capped by the extrapolated tail
//! ([`tail_errors`]: the last change continued geometrically at the rate of Σρⱼ², doubled). The
//! bound alone is safe but 4–19× pessimistic near the stop (for clustered values only the
//! linear ρⱼ applies); the tail is within ≈ 2× of the actual error of single values and, doubled,
//! never below the actual largest top-32 error on the Llama-shaped study matrices
//! (benches/study_stop.py). The iteration stops, from the 3rd pass on, when every estimate is at
//! most `rtol`·σⱼ (+ 10⁻⁷·σ₁), or, from the 4th pass on, when σ₁'s estimate is within
//! [`SHAPE_TOP_RTOL_FACTOR`]·`rtol` and two consecutive whole-spectrum estimates agree
//! ([`shape_settled`]), or after `max_iter` passes;
//! `sv_error` is the largest relative estimate. Neither part sees the rounding of the bf16
//! kernels (computed values end up to ≈ 6·10⁻⁵ relative *above* the exact ones), so the
//! estimate means nothing below ≈ 10⁻⁴. `LORA_RANK_SOLVER_TRACE` (any value) prints every pass's
//! values and estimates to stderr, for that study, and (`LRSHAPE`) the two shape estimates the
//! shape rule compares with σ₁'s relative estimate (`e1`). The last H also yields the block Gauss
//! quadrature density of WᵀW
//! ([`quadrature_density`], [`super::shape::Density`]). Passes over bf16 matrices use the
//! AVX-512 BF16 kernels ([`super::kernels`]) where the CPU has them and the spectrum's range
//! allows ([`BF16_RANGE`]).
//!
//! **Exact**: the Gram matrix over the smaller dimension (AᵀA from row panels, or AAᵀ from
//! column blocks when the matrix is wide) accumulated in f64, then faer's symmetric
//! eigensolver: the whole spectrum, to f64 accuracy relative to σ₁².

use std::sync::atomic::{AtomicBool, Ordering};

use faer::linalg::matmul::matmul;
use faer::prelude::*;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

use super::shape::{self, Density};
use super::source::{ElementStats, MatrixSource, Panel, Scratch};
use crate::error::{Error, Result};

/// Solver knobs for one matrix.
#[derive(Debug, Clone, Copy)]
pub struct SolverConfig {
    pub top_k: usize,
    /// Columns per Krylov block (top_k + oversampling).
    pub block: usize,
    pub rtol: f64,
    pub max_iter: usize,
    pub seed: u64,
    /// Independent panel groups of one pass (each with its own accumulator, reduced in a fixed
    /// order): the parallelism inside one matrix.
    pub chunks: usize,
    /// Target elements per decoded row panel.
    pub panel_elems: usize,
    /// The pass on bf16 and quantized matrices ([`uses_bf16_kernel`]).
    pub kernel: PassKernel,
    /// Parallelism of the dense kernels of the exact mode.
    pub par: Par,
}

/// What a solver found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Singular values, descending (top-k, or all of them in exact mode).
    pub sv: Vec<f64>,
    pub stats: ElementStats,
    pub iterations: usize,
    pub converged: bool,
    /// `sv` is the whole spectrum.
    pub full: bool,
    /// Randomized: the block Gauss quadrature estimate of the spectral density.
    pub density: Option<Density>,
    /// Estimated largest relative error of the top-k values (0 in exact mode).
    pub sv_error: f64,
}

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}

fn panel_rows(cols: usize, panel_elems: usize) -> usize {
    (panel_elems / cols.max(1)).clamp(8, 1024)
}

/// Split `items` into `chunks` contiguous groups of nearly equal size (never empty).
fn split<T>(items: &[T], chunks: usize) -> Vec<&[T]> {
    let chunks = chunks.clamp(1, items.len().max(1));
    let base = items.len() / chunks;
    let extra = items.len() % chunks;
    let mut out = Vec::with_capacity(chunks);
    let mut start = 0;
    for c in 0..chunks {
        let len = base + usize::from(c < extra);
        out.push(&items[start..start + len]);
        start += len;
    }
    out
}

/// Target bytes of one panel as a pass's products read it (bf16 words for the AVX-512 BF16
/// kernel, decoded f32 otherwise): the panel is read twice, by both products, and stays in
/// cache between them. 1 MiB; on a 2-core Zen 3 (f32 path) against 4 MiB f32 panels, CPU per
/// pass (9 interleaved rounds): 14336×4096 −7%, 4096² −14%, 4096×14336 −9%.
const PASS_PANEL_BYTES: usize = 1 << 20;

/// Whether passes over `src` use the bf16 kernels ([`super::kernels`]): bf16 matrices on
/// their stored words, quantized ones on their exact dequantization rounded to bf16 (relative
/// 2⁻⁹ per element, the rounding the kernels already apply to X and Y; the element statistics
/// stay exact), and a delta of two such matrices on its exact difference rounded likewise (a
/// delta with an f32 or f16 side stays on the f32 path, as that side alone would), when
/// `kernel` asks for them and the CPU has them.
pub fn uses_bf16_kernel(src: &MatrixSource<'_>, kernel: PassKernel) -> bool {
    let narrow = |s: &MatrixSource<'_>| s.dtype == crate::dtype::Dtype::BF16 || s.is_quantized();
    narrow(src)
        && src.base().is_none_or(narrow)
        && cfg!(target_endian = "little")
        && kernel == PassKernel::Bf16
        && super::kernels::available()
}

/// The ways a pass can run. Which one is fastest depends on the CPU, not the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKernel {
    /// The AVX-512 BF16 kernels on the stored words of bf16 (and quantized) matrices
    /// ([`super::kernels`]); every other matrix, and a bf16 solve past [`BF16_RANGE`], takes
    /// [`PassKernel::F32`].
    Bf16,
    /// Panels decoded to f32 and the AVX-512F kernels ([`super::f32_kernels`]).
    F32,
    /// Panels decoded to f32 and faer's matmul ([`fused_pass`]): any CPU.
    Faer,
}

impl PassKernel {
    pub fn name(self) -> &'static str {
        match self {
            PassKernel::Bf16 => "bf16",
            PassKernel::F32 => "f32",
            PassKernel::Faer => "faer",
        }
    }

    /// The f32 pass this choice falls back to (matrices the bf16 kernels do not take):
    /// the AVX-512F kernels where the CPU has them, unless faer was asked for.
    fn on_f32(self) -> PassKernel {
        if self != PassKernel::Faer && super::f32_kernels::available() {
            PassKernel::F32
        } else {
            PassKernel::Faer
        }
    }
}

/// The pass in this process, chosen once: `LORA_RANK_KERNEL=bf16|f32|faer` when set (a
/// kernel this CPU lacks falls back: `bf16` to `f32`, `f32` to `faer`;
/// `LORA_RANK_NO_BF16_KERNEL`, any value, is `f32`), else by measurement ([`calibrate`]) on a
/// CPU with AVX-512 BF16, else `f32` with AVX-512F, else `faer`. On a Zen 4 the bf16 kernels
/// ran a pass 2.4× faster than the f32 path (then faer); on an Intel Xeon (AVX-512 BF16, no
/// AMX) the f32 path is faster on every LLM shape (benches/README, "The pass kernel per
/// CPU"). The kernels give results within the solver's tolerance of each other, not the same
/// bits: the Ray executor sends the driver's choice to its workers.
pub fn pass_kernel() -> PassKernel {
    static CHOICE: std::sync::OnceLock<PassKernel> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        let forced = std::env::var("LORA_RANK_KERNEL").ok();
        match forced.as_deref() {
            Some("faer") => PassKernel::Faer,
            _ if std::env::var_os("LORA_RANK_NO_BF16_KERNEL").is_some() => PassKernel::F32.on_f32(),
            Some("f32") => PassKernel::F32.on_f32(),
            _ if !super::kernels::available() => PassKernel::F32.on_f32(),
            Some("bf16") => PassKernel::Bf16,
            _ => calibrate(),
        }
    })
}

/// The faster pass on this CPU, from the two instructions' measured throughput
/// ([`super::kernels::instruction_rates`], 20k rounds: ≈ 2 ms): the bf16 kernels when
/// `vdpbf16ps` delivers at least 0.75× the flops of `vfmadd231ps` (they also read half the
/// bytes), else the f32 kernels. That ratio measured 0.47–0.50 on an Intel Xeon (Emerald Rapids);
/// on a Zen 4 it should be ≈ 2 (one 512-bit FMA per cycle, one `vdpbf16ps` per cycle: not yet
/// measured with this function, but its kernels' 2.4× pass there agrees), far from the
/// threshold either way, so load on a shared machine does not flip the choice, as a timed pass
/// of each could (tried: 256 × 4096 panels, one thread, picked either on that Xeon).
fn calibrate() -> PassKernel {
    match super::kernels::instruction_rates(20_000) {
        Some((dot, fma)) => {
            if trace() {
                eprintln!(
                    "LRKERNEL {{\"vdpbf16ps_gflops\":{dot:.1},\"vfmadd231ps_gflops\":{fma:.1}}}"
                );
            }
            if dot >= 0.75 * fma {
                PassKernel::Bf16
            } else {
                PassKernel::F32.on_f32()
            }
        }
        None => PassKernel::F32.on_f32(),
    }
}

/// One pass over a matrix: the source and its panels, the block X (n × b, or m × b in the
/// row space), how many parallel groups the panels are split into, whether the element
/// statistics are gathered, and the cancel flag.
#[derive(Clone, Copy)]
struct Pass<'p, 's> {
    src: &'p MatrixSource<'s>,
    panels: &'p [Panel],
    x: MatRef<'p, f32>,
    chunks: usize,
    want_stats: bool,
    cancel: &'p AtomicBool,
    /// The products: [`PassKernel::Bf16`] only where [`uses_bf16_kernel`] (and within
    /// [`BF16_RANGE`]).
    kernel: PassKernel,
}

/// Whether the solver works in the row space, B = AAᵀ on ℝᵐ, rather than B = AᵀA on ℝⁿ: for a
/// wide matrix (fewer rows than columns), whose Krylov basis is then m long instead of n,
/// so the dense work of every iteration (Gram–Schmidt, QR, H's new column) shrinks by n/m
/// (3.5× for Llama's down_proj, 4× for its k/v_proj). A pass then takes two sweeps over the
/// panels ([`Pass::run_rows`]).
fn in_row_space(src: &MatrixSource<'_>) -> bool {
    src.rows() < src.cols
}

impl Pass<'_, '_> {
    /// B·X and, if asked, the element statistics: AᵀA·X (n × b) in one fused sweep per row
    /// panel, or AAᵀ·X (m × b) in two ([`in_row_space`]); with the AVX-512 BF16 kernels on
    /// bf16 words, or on f32 panels with the AVX-512F kernels or faer's matmul ([`PassKernel`]).
    fn run(self) -> Result<(Mat<f32>, ElementStats)> {
        match (in_row_space(self.src), self.kernel) {
            (false, PassKernel::Bf16) => fused_pass_bf16(self),
            (false, PassKernel::F32) => fused_pass_f32(self),
            (false, PassKernel::Faer) => fused_pass(self),
            (true, _) => self.run_rows(),
        }
    }

    /// AAᵀ·X (m × b): Z = AᵀX = Σ Pᵀ·X_P over the row panels P (X_P: X's rows of P), summed
    /// per group in a fixed order like a fused pass, then every panel's rows of A·Z. The
    /// panels are read twice (from memory when the matrix is held there, [`super::ResidentPool`]).
    fn run_rows(self) -> Result<(Mat<f32>, ElementStats)> {
        let (src, x) = (self.src, self.x);
        let (n, b) = (src.cols, x.ncols());
        debug_assert_eq!(x.nrows(), src.rows());
        // Each panel with its first row in A (the panels cover A in order).
        let mut row = 0;
        let panels: Vec<(Panel, usize)> = self
            .panels
            .iter()
            .map(|&p| {
                row += p.rows;
                (p, row - p.rows)
            })
            .collect();
        debug_assert_eq!(row, src.rows());
        let groups = split(&panels, self.chunks);
        let kernel = self.kernel;
        // Sweep 1: Z = AᵀX.
        let parts: Vec<Result<(Mat<f32>, ElementStats)>> = groups
            .par_iter()
            .map(|group| {
                let mut panel = PanelReader::new(src, kernel);
                let mut st = ElementStats::default();
                for &(p, row) in *group {
                    check_cancel(self.cancel)?;
                    let stats = self.want_stats.then_some(&mut st);
                    panel.transpose_times(p, x.subrows(row, p.rows), stats)?;
                }
                Ok((panel.sum(b), st))
            })
            .collect();
        let mut z = Mat::<f32>::zeros(n, b);
        let mut stats = ElementStats::default();
        for part in parts {
            let (acc, st) = part?;
            stats.merge(st);
            z += acc;
        }
        // Sweep 2: A·Z, each panel's rows.
        let zt = PackedZ::new(z.as_ref(), kernel);
        let rows: Vec<Result<RowBlocks>> = groups
            .par_iter()
            .map(|group| {
                let mut panel = PanelReader::new(src, kernel);
                let mut out = Vec::with_capacity(group.len());
                for &(p, row) in *group {
                    check_cancel(self.cancel)?;
                    out.push((row, panel.times(p, &zt)?));
                }
                Ok(out)
            })
            .collect();
        let mut w = Mat::<f32>::zeros(src.rows(), b);
        for group in rows {
            for (row, y) in group? {
                w.as_mut().subrows_mut(row, y.nrows()).copy_from(&y);
            }
        }
        Ok((w, stats))
    }
}

/// Blocks of rows of A·Z (first row, block) from a row-space pass's second sweep.
type RowBlocks = Vec<(usize, Mat<f32>)>;

/// Z (n × b) as a row-space pass's second sweep multiplies by it: packed bf16 pairs for the
/// bf16 kernels, padded rows for the f32 kernels, or Zᵀ (b × n) for faer.
enum PackedZ {
    Bf16(super::kernels::PackedX),
    F32(super::f32_kernels::RowsX),
    Faer(Mat<f32>),
}

impl PackedZ {
    fn new(z: MatRef<'_, f32>, kernel: PassKernel) -> PackedZ {
        let (n, b) = (z.nrows(), z.ncols());
        match kernel {
            PassKernel::Bf16 => PackedZ::Bf16(super::kernels::PackedX::new(n, b, |k, j| z[(k, j)])),
            PassKernel::F32 => PackedZ::F32(super::f32_kernels::RowsX::new(n, b, |k, j| z[(k, j)])),
            PassKernel::Faer => PackedZ::Faer(z.transpose().to_owned()),
        }
    }
}

/// One worker's panels of a row-space pass ([`Pass::run_rows`]) and its scratch buffers:
/// each panel read as bf16 words for the bf16 kernels or decoded to f32 for the others.
struct PanelReader<'p, 's> {
    src: &'p MatrixSource<'s>,
    kernel: PassKernel,
    bytes: Scratch,
    decoded: Vec<f32>,
    rounded: Vec<u16>,
    y: Vec<f32>,
    ypair: Vec<u32>,
    /// The first sweep's sum Σ Pᵀ·X_P: b × n (row j = column j) for the kernels, n × b
    /// column-major for faer.
    acc: Vec<f32>,
}

impl<'p, 's> PanelReader<'p, 's> {
    fn new(src: &'p MatrixSource<'s>, kernel: PassKernel) -> Self {
        PanelReader {
            src,
            kernel,
            bytes: Scratch::default(),
            decoded: Vec::new(),
            rounded: Vec::new(),
            y: Vec::new(),
            ypair: Vec::new(),
            acc: Vec::new(),
        }
    }

    /// Add Pᵀ·xp to the sum (xp: X's rows of the panel P, rows × b).
    fn transpose_times(
        &mut self,
        p: Panel,
        xp: MatRef<'_, f32>,
        stats: Option<&mut ElementStats>,
    ) -> Result<()> {
        let (n, b) = (self.src.cols, xp.ncols());
        self.acc.resize(n * b, 0.0);
        if self.kernel == PassKernel::F32 {
            // X's rows of the panel, row-major (stride b), as the kernel broadcasts them.
            self.y.clear();
            self.y
                .extend((0..p.rows).flat_map(|i| (0..b).map(move |j| xp[(i, j)])));
            self.decoded.resize(p.rows * n, 0.0);
            self.src
                .read_panel(p, &mut self.bytes, &mut self.decoded, stats)?;
            super::f32_kernels::panel_transpose_times(
                &self.decoded,
                p.rows,
                n,
                b,
                &self.y,
                b,
                &mut self.acc,
            );
            return Ok(());
        }
        if self.kernel == PassKernel::Bf16 {
            let bpad = super::kernels::padded_cols(b);
            self.y.clear();
            self.y.resize(p.rows * bpad, 0.0);
            for i in 0..p.rows {
                for j in 0..b {
                    self.y[i * bpad + j] = xp[(i, j)];
                }
            }
            let words = read_words(
                self.src,
                p,
                &mut self.bytes,
                &mut self.decoded,
                &mut self.rounded,
                stats,
            )?;
            super::kernels::panel_transpose_times(
                words,
                p.rows,
                n,
                b,
                &self.y,
                &mut self.acc,
                &mut self.ypair,
            );
            return Ok(());
        }
        self.decoded.resize(p.rows * n, 0.0);
        self.src
            .read_panel(p, &mut self.bytes, &mut self.decoded, stats)?;
        // The row-major panel P (rows × n) is the column-major matrix Pᵀ (n × rows).
        let pt = MatRef::from_column_major_slice(&self.decoded[..p.rows * n], n, p.rows);
        let acc = faer::MatMut::from_column_major_slice_mut(&mut self.acc, n, b);
        matmul(acc, Accum::Add, pt, xp, 1.0f32, Par::Seq);
        Ok(())
    }

    /// The first sweep's sum (n × b; zeros if no panel was added).
    fn sum(&self, b: usize) -> Mat<f32> {
        let n = self.src.cols;
        match (self.acc.is_empty(), self.kernel) {
            (true, _) => Mat::zeros(n, b),
            (false, PassKernel::Faer) => {
                MatRef::from_column_major_slice(&self.acc, n, b).to_owned()
            }
            (false, _) => Mat::from_fn(n, b, |k, j| self.acc[j * n + k]),
        }
    }

    /// P·Z (rows × b) for the panel P.
    fn times(&mut self, p: Panel, z: &PackedZ) -> Result<Mat<f32>> {
        let n = self.src.cols;
        match z {
            PackedZ::Bf16(zp) => {
                let words = read_words(
                    self.src,
                    p,
                    &mut self.bytes,
                    &mut self.decoded,
                    &mut self.rounded,
                    None,
                )?;
                super::kernels::panel_times(words, p.rows, n, zp, &mut self.y);
                let bpad = zp.bpad();
                Ok(Mat::from_fn(p.rows, zp.cols(), |i, j| self.y[i * bpad + j]))
            }
            PackedZ::F32(zr) => {
                self.decoded.resize(p.rows * n, 0.0);
                self.src
                    .read_panel(p, &mut self.bytes, &mut self.decoded, None)?;
                super::f32_kernels::panel_times(&self.decoded, p.rows, n, zr, &mut self.y);
                let bpad = zr.bpad();
                Ok(Mat::from_fn(p.rows, zr.cols(), |i, j| self.y[i * bpad + j]))
            }
            PackedZ::Faer(zt) => {
                self.decoded.resize(p.rows * n, 0.0);
                self.src
                    .read_panel(p, &mut self.bytes, &mut self.decoded, None)?;
                let pt = MatRef::from_column_major_slice(&self.decoded[..p.rows * n], n, p.rows);
                let mut yt = Mat::<f32>::zeros(zt.nrows(), p.rows);
                matmul(
                    yt.as_mut(),
                    Accum::Replace,
                    zt.as_ref(),
                    pt,
                    1.0f32,
                    Par::Seq,
                );
                Ok(yt.transpose().to_owned())
            }
        }
    }
}

/// The bf16 words of panel `p`: stored (bf16) or computed and rounded (quantized, delta).
fn read_words<'w>(
    src: &'w MatrixSource<'_>,
    p: Panel,
    bytes: &'w mut Scratch,
    decoded: &mut Vec<f32>,
    rounded: &'w mut Vec<u16>,
    stats: Option<&mut ElementStats>,
) -> Result<&'w [u16]> {
    if src.is_computed() {
        src.read_panel_as_bf16(p, bytes, decoded, rounded, stats)
    } else {
        src.read_panel_bf16(p, bytes, stats)
    }
}

/// The kernels' per-group sums (each b × n, row j = column j) added in group order, as the
/// n × b result, with the groups' element statistics; the first error of a group is returned.
fn sum_kernel_parts(
    parts: Vec<Result<(Vec<f32>, ElementStats)>>,
    n: usize,
    b: usize,
) -> Result<(Mat<f32>, ElementStats)> {
    let mut total = vec![0f32; n * b];
    let mut stats = ElementStats::default();
    for part in parts {
        let (acc, st) = part?;
        stats.merge(st);
        for (t, a) in total.iter_mut().zip(&acc) {
            *t += a;
        }
    }
    Ok((Mat::from_fn(n, b, |k, j| total[j * n + k]), stats))
}

/// [`Pass::run`] with the AVX-512 BF16 kernels on the stored words (bf16) or the rounded
/// dequantized panel (quantized).
fn fused_pass_bf16(pass: Pass<'_, '_>) -> Result<(Mat<f32>, ElementStats)> {
    let (src, x, want_stats, cancel) = (pass.src, pass.x, pass.want_stats, pass.cancel);
    let (n, b) = (src.cols, x.ncols());
    let xp = super::kernels::PackedX::new(n, b, |k, j| x[(k, j)]);
    let groups = split(pass.panels, pass.chunks);
    let parts: Vec<Result<(Vec<f32>, ElementStats)>> = groups
        .par_iter()
        .map(|group| {
            let mut acc = vec![0f32; n * b];
            let mut bytes = Scratch::default();
            let (mut decoded, mut y, mut ypair) = (Vec::new(), Vec::new(), Vec::new());
            let mut rounded = Vec::new();
            let mut st = ElementStats::default();
            for &p in *group {
                check_cancel(cancel)?;
                let stats = want_stats.then_some(&mut st);
                let words = read_words(src, p, &mut bytes, &mut decoded, &mut rounded, stats)?;
                super::kernels::panel_pass(words, p.rows, n, b, &xp, &mut acc, &mut y, &mut ypair);
            }
            Ok((acc, st))
        })
        .collect();
    sum_kernel_parts(parts, n, b)
}

/// [`Pass::run`] with f32 panels (decoded, or as stored) and the AVX-512F kernels.
fn fused_pass_f32(pass: Pass<'_, '_>) -> Result<(Mat<f32>, ElementStats)> {
    let (src, x, want_stats, cancel) = (pass.src, pass.x, pass.want_stats, pass.cancel);
    let (n, b) = (src.cols, x.ncols());
    let max_rows = pass.panels.iter().map(|p| p.rows).max().unwrap_or(0);
    let xr = super::f32_kernels::RowsX::new(n, b, |k, j| x[(k, j)]);
    let groups = split(pass.panels, pass.chunks);
    let parts: Vec<Result<(Vec<f32>, ElementStats)>> = groups
        .par_iter()
        .map(|group| {
            let mut acc = vec![0f32; n * b];
            let mut bytes = Scratch::default();
            let mut buf = vec![0f32; max_rows * n];
            let mut y = Vec::new();
            let mut st = ElementStats::default();
            for &p in *group {
                check_cancel(cancel)?;
                src.read_panel(p, &mut bytes, &mut buf, want_stats.then_some(&mut st))?;
                super::f32_kernels::panel_pass(&buf, p.rows, n, &xr, &mut acc, &mut y);
            }
            Ok((acc, st))
        })
        .collect();
    sum_kernel_parts(parts, n, b)
}

/// [`Pass::run`] with f32 panels and faer's matmul.
///
/// The first product is taken transposed, Yᵀ = Xᵀ·Pᵀ, with Xᵀ stored once per pass: the
/// row-major panel P *is* the column-major Pᵀ, so neither product repacks the panel (Y = P·X
/// makes faer pack P, a copy of every panel: 10% of a scan's CPU on a 2-core Zen 3).
fn fused_pass(pass: Pass<'_, '_>) -> Result<(Mat<f32>, ElementStats)> {
    let (src, x, want_stats, cancel) = (pass.src, pass.x, pass.want_stats, pass.cancel);
    let (n, b) = (src.cols, x.ncols());
    let max_rows = pass.panels.iter().map(|p| p.rows).max().unwrap_or(0);
    let xt = x.transpose().to_owned();
    let groups = split(pass.panels, pass.chunks);
    let parts: Vec<Result<(Mat<f32>, ElementStats)>> = groups
        .par_iter()
        .map(|group| {
            let mut acc = Mat::<f32>::zeros(n, b);
            let mut bytes = Scratch::default();
            let mut buf = vec![0f32; max_rows * n];
            let mut yt = Mat::<f32>::zeros(b, max_rows);
            let mut st = ElementStats::default();
            for &p in *group {
                check_cancel(cancel)?;
                src.read_panel(p, &mut bytes, &mut buf, want_stats.then_some(&mut st))?;
                // The row-major panel P (rows × n) is the column-major matrix Pᵀ (n × rows).
                let pt = MatRef::from_column_major_slice(&buf[..p.rows * n], n, p.rows);
                let mut ytv = yt.as_mut().subcols_mut(0, p.rows);
                matmul(
                    ytv.rb_mut(),
                    Accum::Replace,
                    xt.as_ref(),
                    pt,
                    1.0f32,
                    Par::Seq,
                );
                matmul(
                    acc.as_mut(),
                    Accum::Add,
                    pt,
                    ytv.rb().transpose(),
                    1.0f32,
                    Par::Seq,
                );
            }
            Ok((acc, st))
        })
        .collect();
    let mut total: Option<Mat<f32>> = None;
    let mut stats = ElementStats::default();
    for part in parts {
        let (acc, st) = part?;
        stats.merge(st);
        total = Some(match total {
            None => acc,
            Some(t) => t + acc,
        });
    }
    Ok((total.unwrap_or_else(|| Mat::zeros(n, b)), stats))
}

/// Deterministic standard normal numbers (SplitMix64 + Box–Muller).
struct Gaussian {
    state: u64,
    spare: Option<f64>,
}

impl Gaussian {
    fn new(seed: u64) -> Self {
        Gaussian {
            state: seed,
            spare: None,
        }
    }
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        // In (0, 1]: never 0, so that ln() is finite.
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let t = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
    fn matrix(&mut self, rows: usize, cols: usize) -> Mat<f32> {
        Mat::from_fn(rows, cols, |_, _| self.sample() as f32)
    }
}

/// The Krylov basis Q: its orthonormal blocks side by side, column-major (n × dim).
struct Basis {
    data: Vec<f32>,
    n: usize,
    cols: usize,
}

impl Basis {
    fn new(n: usize) -> Basis {
        Basis {
            data: Vec::new(),
            n,
            cols: 0,
        }
    }

    fn push(&mut self, x: &Mat<f32>) {
        for j in 0..x.ncols() {
            self.data.extend((0..self.n).map(|i| x[(i, j)]));
        }
        self.cols += x.ncols();
    }

    fn as_ref(&self) -> MatRef<'_, f32> {
        MatRef::from_column_major_slice(&self.data, self.n, self.cols)
    }
}

/// Remove from `z` its components along the orthonormal columns of `basis`: block classical
/// Gram–Schmidt twice, each a pair of matrix products over the whole basis. `first`, when
/// given, is `basisᵀ·z` already computed (the solver has it as H's new column block).
fn project_out(basis: MatRef<'_, f32>, z: &mut Mat<f32>, par: Par, first: Option<&Mat<f32>>) {
    if basis.ncols() == 0 {
        return;
    }
    let mut c = Mat::<f32>::zeros(basis.ncols(), z.ncols());
    for round in 0..2 {
        let coeffs = match first {
            Some(f) if round == 0 => f,
            _ => {
                matmul(
                    c.as_mut(),
                    Accum::Replace,
                    basis.transpose(),
                    z.as_ref(),
                    1.0f32,
                    par,
                );
                &c
            }
        };
        matmul(z.as_mut(), Accum::Add, basis, coeffs.as_ref(), -1.0f32, par);
    }
}

/// The R factor (b × b, f64) of the part of `w` orthogonal to `basis`: for a Ritz vector y of
/// H, ‖B·Q·y − θ·Q·y‖ = ‖R·y_last‖ (y_last: y's rows of the last block).
fn residual_factor(
    basis: MatRef<'_, f32>,
    w: &Mat<f32>,
    par: Par,
    first: Option<&Mat<f32>>,
) -> Mat<f64> {
    let mut z = w.clone();
    project_out(basis, &mut z, par, first);
    let r = z.qr();
    let r = r.thin_R();
    Mat::from_fn(r.nrows(), r.ncols(), |i, j| f64::from(r[(i, j)]))
}

/// An orthonormal block spanning the part of `z` orthogonal to `basis` (`None` when no room is
/// left: the basis would exceed ℝⁿ), and the R factor of that part ([`residual_factor`]).
/// Columns that vanish (the Krylov space became invariant, or `z` was rank-deficient) are
/// replaced by random directions. `first`: `basisᵀ·z` if already computed.
fn next_block(
    basis: MatRef<'_, f32>,
    mut z: Mat<f32>,
    rng: &mut Gaussian,
    par: Par,
    first: Option<&Mat<f32>>,
) -> (Option<Mat<f32>>, Mat<f64>) {
    let n = z.nrows();
    let b = z.ncols();
    let dim = basis.ncols();
    if dim + b > n {
        return (None, residual_factor(basis, &z, par, first));
    }
    let scale = (0..b)
        .map(|j| z.col(j).norm_l2())
        .fold(0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let (q, bad, r) = orthonormalize(basis, &mut z, scale, par, first);
    if bad.is_empty() {
        return (Some(q), r);
    }
    // Keep the good directions, refill the vanished ones at random (unit scale), retry once.
    let fresh = rng.matrix(n, b);
    let unit = 1.0 / (n as f32).sqrt();
    let mut z = Mat::from_fn(n, b, |i, j| {
        if bad.contains(&j) {
            fresh[(i, j)] * unit
        } else {
            q[(i, j)]
        }
    });
    let (q, bad, _) = orthonormalize(basis, &mut z, 1.0, par, None);
    (bad.is_empty().then_some(q), r)
}

/// Project `basis` out of `z` and QR-factor it: the Q factor, the columns whose R diagonal
/// is negligible against `scale`, and R (in f64).
fn orthonormalize(
    basis: MatRef<'_, f32>,
    z: &mut Mat<f32>,
    scale: f32,
    par: Par,
    first: Option<&Mat<f32>>,
) -> (Mat<f32>, Vec<usize>, Mat<f64>) {
    project_out(basis, z, par, first);
    let qr = z.qr();
    let r = qr.thin_R();
    let bad = (0..z.ncols())
        .filter(|&j| {
            r[(j, j)].abs().partial_cmp(&(1e-5 * scale)) != Some(std::cmp::Ordering::Greater)
        })
        .collect();
    let r64 = Mat::from_fn(r.nrows(), r.ncols(), |i, j| f64::from(r[(i, j)]));
    (qr.compute_thin_Q(), bad, r64)
}

/// Eigenvalues (ascending) and, if asked, eigenvectors of the symmetric `h` (its lower
/// triangle is read), with `par` for the dense kernels.
fn sym_evd(h: MatRef<'_, f64>, vectors: bool, par: Par) -> Option<(Vec<f64>, Option<Mat<f64>>)> {
    use faer::diag::Diag;
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
    let n = h.nrows();
    let mut s = Diag::<f64>::zeros(n);
    let mut u = vectors.then(|| Mat::<f64>::zeros(n, n));
    let compute = if vectors {
        ComputeEigenvectors::Yes
    } else {
        ComputeEigenvectors::No
    };
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        n,
        compute,
        par,
        Default::default(),
    ));
    self_adjoint_evd(
        h,
        s.as_mut(),
        u.as_mut().map(|u| u.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    let s = s.column_vector();
    Some(((0..n).map(|i| s[i]).collect(), u))
}

/// Eigenvalues of the symmetric `h`, descending (NaN if the eigensolver fails).
fn sym_eigenvalues_desc(h: MatRef<'_, f64>, par: Par) -> Vec<f64> {
    let mut ev = sym_evd(h, false, par)
        .map(|(ev, _)| ev)
        .unwrap_or_else(|| vec![f64::NAN; h.nrows()]);
    ev.reverse();
    ev
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric `h`.
fn sym_eigen(h: MatRef<'_, f64>, par: Par) -> Option<(Vec<f64>, Mat<f64>)> {
    sym_evd(h, true, par).map(|(ev, u)| (ev, u.expect("asked for")))
}

fn nan_outcome(k: usize, stats: ElementStats, iterations: usize) -> Outcome {
    Outcome {
        sv: vec![f64::NAN; k],
        stats,
        iterations,
        converged: false,
        full: false,
        density: None,
        sv_error: f64::NAN,
    }
}

/// Residual norm ‖B·Q·u_i − θ_i·Q·u_i‖ of the Ritz pair in column `i` of `u` (H's
/// eigenvectors, blocks of `b`): with full reorthogonalization B·Q = Q·H + X_next·R·E_lastᵀ, so
/// it is ‖R·u_i[last block]‖ (`r`: the R factor of the next block, `None` when the basis spans
/// ℝⁿ and every Ritz pair is exact).
fn ritz_residual(u: MatRef<'_, f64>, b: usize, r: Option<&Mat<f64>>, i: usize) -> f64 {
    let Some(r) = r else { return 0.0 };
    let last = u.nrows() - b;
    (0..r.nrows())
        .map(|p| {
            (0..b)
                .map(|q| r[(p, q)] * u[(last + q, i)])
                .sum::<f64>()
                .powi(2)
        })
        .sum::<f64>()
        .sqrt()
}

/// Residual norms ([`ritz_residual`]) of every Ritz pair, in the order of H's eigenvalues
/// (ascending): the stopping rule takes the top ones, the quadrature density all of them.
fn ritz_residuals(u: MatRef<'_, f64>, b: usize, r: Option<&Mat<f64>>) -> Vec<f64> {
    (0..u.ncols()).map(|i| ritz_residual(u, b, r, i)).collect()
}

/// Residual bounds on the eigenvalue errors λⱼ − θⱼ of the top `k` Ritz values (`lam`,
/// descending, with residual norms `rho`, at least k + 1 of each when there are that many).
///
/// Some eigenvalue of B = AᵀA lies within ρⱼ of θⱼ, and within ρⱼ²/gapⱼ when no other
/// eigenvalue lies within gapⱼ (Kato–Temple). Ritz values of the top of the spectrum lie below
/// their eigenvalues (λⱼ ≥ θⱼ, interlacing), so only the gap below matters; the next
/// eigenvalue is taken to be at most θⱼ₊₁ + ρⱼ₊₁ (that bound holds for *some* eigenvalue, so
/// the gap is an estimate): gapⱼ = θⱼ − θⱼ₊₁ − ρⱼ₊₁, and the bound is min(ρⱼ, ρⱼ²/gapⱼ).
fn residual_bounds(lam: &[f64], rho: &[f64], k: usize) -> Vec<f64> {
    (0..k.min(lam.len()))
        .map(|j| {
            let mut bound = rho[j];
            if j + 1 < lam.len().min(rho.len()) {
                let gap = lam[j] - lam[j + 1] - rho[j + 1];
                if gap > 0.0 {
                    bound = bound.min(rho[j] * rho[j] / gap);
                }
            }
            bound
        })
        .collect()
}

/// Safety factor on the extrapolated remaining error ([`tail_errors`]): measured against
/// exact spectra (benches/README, "Passes per matrix"), the unscaled tail is up to ≈ 2.5×
/// below the actual error of single values, the doubled one never below the actual largest
/// error of the top 32.
const TAIL_SAFETY: f64 = 2.0;

/// Extrapolated remaining eigenvalue errors of the top Ritz values: each value's last change
/// `deltas[j]` (or the previous change `prev_deltas[j]` times the rate, if larger, as one pass
/// can move a value little by chance), continued geometrically, times [`TAIL_SAFETY`]. The rate
/// is the ratio `rate` of the summed squared residual norms of the top k over the last pass:
/// near convergence λⱼ − θⱼ ≈ ρⱼ²/g with an effective gap g that settles, so the errors shrink
/// like ρ². That ratio (capped at 0.95) is a smooth aggregate; the ratio of single values'
/// changes, which the estimate used before, jumps by 10× between passes.
fn tail_errors(deltas: &[f64], prev_deltas: &[f64], rate: f64) -> Vec<f64> {
    let rate = rate.clamp(0.0, 0.95);
    deltas
        .iter()
        .enumerate()
        .map(|(j, &d)| {
            let base = prev_deltas.get(j).map_or(d, |&p| d.max(rate * p));
            TAIL_SAFETY * base * rate / (1.0 - rate)
        })
        .collect()
}

/// σ errors from eigenvalue errors: √(θ + δλ) − √θ (≤ δλ/2σ, finite at θ = 0).
fn sigma_errors(lam: &[f64], dlam: &[f64]) -> Vec<f64> {
    lam.iter()
        .zip(dlam)
        .map(|(&t, &d)| {
            let t = t.max(0.0);
            (t + d.max(0.0)).sqrt() - t.sqrt()
        })
        .collect()
}

/// The quadrature density of the Krylov space so far from the eigenpairs (`theta`, `u`) of H
/// (dim × dim, blocks of `b`, [`sym_eigen`]): first-block components, and convergence from the
/// Ritz pairs' `residuals` ([`ritz_residuals`]; all 0 when the basis spans ℝⁿ and every Ritz
/// pair is exact).
fn quadrature_density(
    theta: &[f64],
    u: MatRef<'_, f64>,
    b: usize,
    residuals: &[f64],
    dim_n: usize,
    n_total: usize,
) -> Option<Density> {
    let dim = theta.len();
    let top = theta.iter().copied().fold(0.0, f64::max);
    // A Ritz value is an eigenvalue (weight 1) when its residual bound |θ − λ| ≤ ‖r‖ is below
    // half the distance to its neighbours and 10⁻³·θ_max.
    let converged: Vec<bool> = (0..dim)
        .map(|i| {
            let gap_lo = if i > 0 {
                theta[i] - theta[i - 1]
            } else {
                f64::INFINITY
            };
            let gap_hi = if i + 1 < dim {
                theta[i + 1] - theta[i]
            } else {
                f64::INFINITY
            };
            let res = residuals[i];
            res <= 0.5 * gap_lo.min(gap_hi) && res <= 1e-3 * top
        })
        .collect();
    let first: Vec<Vec<f64>> = (0..b)
        .map(|p| (0..dim).map(|i| u[(p, i)]).collect())
        .collect();
    Some(Density::from_quadrature(
        theta, &first, &converged, dim_n, n_total,
    ))
}

/// Whether the error estimate of every Ritz value is within `rtol`·σⱼ (+ 10⁻⁷·σ₁).
fn within(sv: &[f64], errors: &[f64], rtol: f64) -> bool {
    let s1 = sv.first().copied().unwrap_or(0.0);
    sv.iter()
        .zip(errors)
        .all(|(&s, &e)| e <= rtol * s + 1e-7 * s1)
}

/// Largest relative error estimate.
fn max_rel(sv: &[f64], errors: &[f64]) -> f64 {
    sv.iter()
        .zip(errors)
        .map(|(&s, &e)| if s > 0.0 { e / s } else { 0.0 })
        .fold(0.0, f64::max)
}

/// Whether two consecutive shape estimates agree to what the statistics need: energy ranks
/// within 1% (or 1), the MP edge within 1%, the same spike count, α within 0.02 (or both above
/// WeightWatcher's under-trained threshold: [`alpha_settled`]). Spectrum's SNR
/// is not waited for: its estimate jumps by up to 70× between passes until the end and more
/// passes do not make it more accurate (benches/README.md, "Passes per matrix").
fn shape_settled(a: &shape::Shape, b: &shape::Shape) -> bool {
    settled_except_alpha(a, b) && alpha_settled(a, b)
}

/// The power-law part of [`shape_settled`]: α moved by at most 0.02, or both estimates are above
/// WeightWatcher's under-trained threshold ([`UNDER_TRAINED_ALPHA`]), where its reading no longer
/// changes. There the fit does not settle: on the embedding matrices of the real-data Llama-8B
/// bench checkpoint α climbs 32 → 37 → 43 → 50 → 56 → 61 over passes 8–13 (exact: 50–56), and
/// waiting for 0.02 cost 5–6 passes of the largest matrices.
fn alpha_settled(a: &shape::Shape, b: &shape::Shape) -> bool {
    (a.pl_alpha.is_nan() && b.pl_alpha.is_nan())
        || (a.pl_alpha - b.pl_alpha).abs() <= 0.02
        || (a.pl_alpha > UNDER_TRAINED_ALPHA && b.pl_alpha > UNDER_TRAINED_ALPHA)
}

/// WeightWatcher's `UNDER_TRAINED_THRESH` (weightwatcher 0.7.7, `constants.py`): α above it is
/// reported as an under-trained (not heavy-tailed) layer.
const UNDER_TRAINED_ALPHA: f64 = 6.0;

/// [`shape_settled`] but for α (whose fit costs O(N²): it is only computed for two shapes that
/// agree on everything else).
fn settled_except_alpha(a: &shape::Shape, b: &shape::Shape) -> bool {
    let rel = |x: f64, y: f64| {
        if x == y {
            true
        } else {
            ((x - y).abs() / x.abs().max(y.abs())) <= 0.01
        }
    };
    let ranks = a
        .energy_ranks
        .iter()
        .zip(&b.energy_ranks)
        .all(|(&x, &y)| x.abs_diff(y) as f64 <= (0.01 * x as f64).max(1.0));
    ranks && a.mp_spikes == b.mp_spikes && rel(a.mp_edge, b.mp_edge)
}

/// Whether `LORA_RANK_SOLVER_TRACE` is set (read once): see the module docs.
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LORA_RANK_SOLVER_TRACE").is_some())
}

/// Seconds per stage of one solver iteration, printed as one `LRTIME` line on stderr when
/// [`trace`] is on (the per-stage profile of benches/README); free otherwise.
struct StageClock {
    on: bool,
    last: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl StageClock {
    fn start() -> StageClock {
        StageClock {
            on: trace(),
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, stage: &'static str) {
        if self.on {
            let now = std::time::Instant::now();
            self.laps.push((stage, (now - self.last).as_secs_f64()));
            self.last = now;
        }
    }

    fn report(&self, iteration: usize, dim: usize) {
        if self.on {
            let laps: Vec<String> = self
                .laps
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v:.6}"))
                .collect();
            eprintln!(
                "LRTIME {{\"it\":{iteration},\"dim\":{dim},{}}}",
                laps.join(",")
            );
        }
    }
}

/// First pass after which the top-k rule may stop. Not the 3rd: on a 600×700 rank-120
/// power-law matrix, each of the 3 of 60 seeded solves that stopped after 3 passes had a
/// top-32 value 1.0–2.2% off against an estimate of at most 0.3% (`rtol` 1%): the extrapolated
/// tail rests on a single change there. Every solve that stopped after 4 was exact to 10⁻⁴.
const MIN_STOP_ITER: usize = 4;

/// The shape rule needs σ₁'s error estimate within this multiple of `rtol` (the top-k rule:
/// every value within `rtol`). On flat-topped matrices (embeddings, lm_head, noise) σ₁ takes
/// 10–11 passes to reach `rtol` while the shape is settled from the 5th–7th; `sv_error` still
/// reports the estimate at the stop.
const SHAPE_TOP_RTOL_FACTOR: f64 = 3.0;

/// ... and every top-k value's error estimate within this multiple of `rtol`, so that a
/// smaller `rtol` tightens the top k under the shape rule too. 10: at the default `rtol` (3%)
/// no solve of the bench's LLM shapes changes (their estimates at the shape stop: 0.05–1.25%,
/// `benches/results/solve_xeon_emr.json`), while a 4096×11008 bench matrix that the shape rule
/// stopped after 6 passes at an estimate of 3.4% (true error 1.9%) whatever `rtol` was asked
/// (3·10⁻³ to 10⁻⁴) now goes on until it is met.
const SHAPE_TOPK_RTOL_FACTOR: f64 = 10.0;

/// First iteration at which the shape stopping rule is tried (the quadrature needs a few
/// blocks before its density means anything).
const SHAPE_MIN_ITER: usize = 4;

/// How far below σ₁² the bf16 kernels resolve eigenvalues of AᵀA: a pass on them computes
/// B·X̃ for X rounded to bf16, and the rounding's components along the top singular vectors,
/// amplified by σ₁², perturb every smaller Ritz value. Measured on bf16 matrices with 8 strong
/// values over a noise bulk (520×1100, 1100×520, 800×800; σ₁²/λ₉ from 7·10³ to 6·10⁶): the
/// relative error of λ₉ is ≈ 0.07·(σ₁²/λ₉)·2⁻⁹/√n (n: the dimension of the Krylov space,
/// [`in_row_space`]), 3–6% at σ₁²/λ₉ ≈ 10⁴ and over 100% from 6·10⁴, while the error
/// estimates saw nothing. The kernels are therefore used only while θ₁ ≤ `BF16_RANGE`·√n·λ̄,
/// λ̄ the mean eigenvalue below the top k (from ‖W‖_F², exact): there that error is ≤
/// 0.07·32/512 ≈ 0.4% of λ̄; past it the solve restarts on the f32 path (2⁻²⁴ instead of 2⁻⁹).
pub(crate) const BF16_RANGE: f64 = 32.0;

/// Whether the Ritz values `ritz` (descending) of a bf16-kernel solve reach past
/// [`BF16_RANGE`]: θ₁ > `BF16_RANGE`·√n·λ̄ with λ̄ = (‖W‖_F² − Σᵢ≤ₖ θᵢ) / (min(m, n) − k).
fn beyond_bf16_range(ritz: &[f64], frob_sq: f64, k: usize, n_total: usize, n: usize) -> bool {
    let top: f64 = ritz.iter().take(k).map(|t| t.max(0.0)).sum();
    let rest = n_total.saturating_sub(k).max(1) as f64;
    let mean_below = (frob_sq - top).max(0.0) / rest;
    ritz.first()
        .is_some_and(|&t1| t1 > BF16_RANGE * (n as f64).sqrt() * mean_below)
}

/// Top singular values by randomized block Krylov (see the module docs): on the bf16 kernels
/// where [`uses_bf16_kernel`], restarted on the f32 path when the spectrum's range exceeds what
/// they resolve ([`BF16_RANGE`]; the passes of both count in `iterations`).
pub fn randomized(
    src: &MatrixSource<'_>,
    cfg: &SolverConfig,
    cancel: &AtomicBool,
) -> Result<Outcome> {
    let mut bf16_passes = 0;
    if uses_bf16_kernel(src, cfg.kernel) {
        match randomized_on(src, cfg, cancel, PassKernel::Bf16)? {
            Ok(outcome) => return Ok(outcome),
            Err(passes) => bf16_passes = passes,
        }
    }
    let mut outcome =
        randomized_on(src, cfg, cancel, cfg.kernel.on_f32())?.expect("the f32 path never gives up");
    outcome.iterations += bf16_passes;
    Ok(outcome)
}

/// [`randomized`] with the passes of `kernel`: `Err(passes)` when a bf16-kernel solve
/// gives up after that many passes ([`beyond_bf16_range`]).
fn randomized_on(
    src: &MatrixSource<'_>,
    cfg: &SolverConfig,
    cancel: &AtomicBool,
    kernel: PassKernel,
) -> Result<std::result::Result<Outcome, usize>> {
    let bf16 = kernel == PassKernel::Bf16;
    let m = src.rows();
    let n = src.cols;
    let n_total = m.min(n);
    // The dimension of the space B acts on ([`in_row_space`]).
    let dim_space = if in_row_space(src) { m } else { n };
    let k = cfg.top_k.min(n_total);
    let b = cfg.block.max(k).min(dim_space).max(1);
    let read_bytes = if bf16 { 2 } else { 4 };
    let panel_elems = cfg.panel_elems.min(PASS_PANEL_BYTES / read_bytes);
    let panels = src.panels(panel_rows(n, panel_elems));
    let mut rng = Gaussian::new(cfg.seed);
    let mut x = {
        let g = rng.matrix(dim_space, b);
        g.qr().compute_thin_Q()
    };
    let max_blocks = cfg.max_iter.max(1);
    let mut h = Mat::<f64>::zeros(b * max_blocks, b * max_blocks);
    let mut basis = Basis::new(dim_space);
    let mut stats = ElementStats::default();
    // The previous pass's top-k Ritz values (λ), their last changes, and Σ ρⱼ².
    let mut prev: Vec<f64> = Vec::new();
    let mut prev_deltas: Vec<f64> = Vec::new();
    let mut prev_rho_sq = f64::NAN;
    let mut sv: Vec<f64> = Vec::new();
    let mut converged = false;
    let mut sv_error = f64::NAN;
    let mut iterations = 0;
    let mut density = None;
    // The last shape (α computed or not) and the pseudo-spectrum it came from.
    let mut prev_shape: Option<(shape::Shape, Vec<f64>, bool)> = None;
    while iterations < max_blocks {
        // Stage clocks for `LORA_RANK_SOLVER_TRACE` (LRTIME lines): pass, H's new column,
        // eigendecomposition, Gram–Schmidt, error estimates + quadrature, shape rule.
        let mut clock = StageClock::start();
        let (w, st) = Pass {
            src,
            panels: &panels,
            x: x.as_ref(),
            chunks: cfg.chunks,
            want_stats: iterations == 0,
            cancel,
            kernel,
        }
        .run()?;
        clock.lap("pass");
        iterations += 1;
        if iterations == 1 {
            stats = st;
            if stats.nonfinite > 0 {
                return Ok(Ok(nan_outcome(k, stats, iterations)));
            }
        }
        basis.push(&x);
        let i = basis.cols / b - 1;
        // New column block of H = QᵀBQ: Q_jᵀ·(B·X_i) for every block j ≤ i, one product.
        let mut c = Mat::<f32>::zeros(basis.cols, b);
        matmul(
            c.as_mut(),
            Accum::Replace,
            basis.as_ref().transpose(),
            w.as_ref(),
            1.0f32,
            cfg.par,
        );
        super::clear_upper_vector_state();
        for j in 0..=i {
            for r in 0..b {
                for s in 0..b {
                    let v = f64::from(c[(j * b + r, s)]);
                    if j == i {
                        // Symmetrize the diagonal block.
                        let t = f64::from(c[(j * b + s, r)]);
                        h[(j * b + r, i * b + s)] = 0.5 * (v + t);
                    } else {
                        h[(j * b + r, i * b + s)] = v;
                        h[(i * b + s, j * b + r)] = v;
                    }
                }
            }
        }
        let dim = basis.cols;
        let hd = h.as_ref().get(..dim, ..dim);
        clock.lap("h");
        // The eigenvectors give the residual bounds (and the density): one decomposition.
        let eig = sym_eigen(hd, cfg.par);
        super::clear_upper_vector_state();
        clock.lap("evd");
        let ritz: Vec<f64> = match &eig {
            Some((theta, _)) => theta.iter().rev().copied().collect(),
            None => vec![f64::NAN; dim],
        };
        if bf16 && beyond_bf16_range(&ritz, stats.sum_sq, k, n_total, dim_space) {
            return Ok(Err(iterations));
        }
        sv = ritz.iter().take(k).map(|l| l.max(0.0).sqrt()).collect();
        // H's new column block is the first Gram–Schmidt round's coefficients.
        let (next, r) = next_block(basis.as_ref(), w, &mut rng, cfg.par, Some(&c));
        super::clear_upper_vector_state(); // scalar estimates follow faer's products
        clock.lap("gram_schmidt");
        let exhausted = next.is_none();
        let r = if dim >= dim_space { None } else { Some(&r) };
        // Error estimates (λ units): the residual bounds, capped by the extrapolated tail from
        // the second pass on; in σ units for the rule and `sv_error`.
        let lam: Vec<f64> = ritz.iter().take(k + 1).copied().collect();
        let residuals = eig.as_ref().map(|(_, u)| ritz_residuals(u.as_ref(), b, r));
        // ρⱼ of the top k + 1, descending like `lam`.
        let rho: Vec<f64> = match &residuals {
            Some(all) => all.iter().rev().take(k + 1).copied().collect(),
            None => vec![f64::NAN; lam.len()],
        };
        let bounds = residual_bounds(&lam, &rho, k);
        let lam = &lam[..bounds.len()];
        let rho_sq: f64 = rho.iter().take(k).map(|x| x * x).sum();
        let mut dlam = bounds.clone();
        let mut tail = Vec::new();
        if prev.len() == lam.len() {
            let deltas: Vec<f64> = lam.iter().zip(&prev).map(|(a, p)| (a - p).abs()).collect();
            let rate = if prev_rho_sq > 0.0 {
                rho_sq / prev_rho_sq
            } else {
                0.0
            };
            tail = tail_errors(&deltas, &prev_deltas, rate);
            for (d, t) in dlam.iter_mut().zip(&tail) {
                *d = d.min(*t);
            }
            prev_deltas = deltas;
        }
        let errors = sigma_errors(lam, &dlam);
        if trace() {
            eprintln!(
                "LRTRACE {{\"it\":{},\"sv\":{:?},\"err\":{:?},\"bound\":{:?},\"tail\":{:?}}}",
                iterations,
                sv,
                errors,
                sigma_errors(lam, &bounds),
                sigma_errors(lam, &tail),
            );
        }
        // Early Ritz values may sit near other eigenvalues than their own (the bounds hold for
        // *some* eigenvalue): no stop before MIN_STOP_ITER passes.
        converged = iterations >= MIN_STOP_ITER && within(&sv, &errors, cfg.rtol);
        sv_error = max_rel(&sv, &errors);
        prev = lam.to_vec();
        prev_rho_sq = rho_sq;
        let last = converged || exhausted || iterations == max_blocks;
        if last || iterations >= SHAPE_MIN_ITER {
            density = eig.zip(residuals).and_then(|((theta, u), res)| {
                quadrature_density(&theta, u.as_ref(), b, &res, dim_space, n_total)
            });
        }
        clock.lap("estimates");
        if exhausted {
            // The basis spans ℝⁿ (or an invariant subspace): the Ritz values are exact.
            converged = true;
            sv_error = 0.0;
        }
        if last {
            clock.report(iterations, dim);
            break;
        }
        // Shape rule: σ₁ converged and the statistics of the density have settled.
        if let Some(d) = &density {
            let frob_sq = stats.sum_sq;
            let lam = d.pseudo_spectrum(n_total, frob_sq);
            let mut now = shape::shape_without_alpha(&lam, frob_sq, m, n);
            let mut now_alpha = false;
            let top_ok = within(&sv[..1], &errors[..1], SHAPE_TOP_RTOL_FACTOR * cfg.rtol)
                && within(&sv, &errors, SHAPE_TOPK_RTOL_FACTOR * cfg.rtol);
            let mut settled = false;
            if let Some((p, plam, p_alpha)) = prev_shape.as_mut() {
                if top_ok && settled_except_alpha(p, &now) {
                    if !*p_alpha {
                        (p.pl_alpha, p.pl_xmin) = shape::power_law_fit(plam);
                        *p_alpha = true;
                    }
                    (now.pl_alpha, now.pl_xmin) = shape::power_law_fit(&lam);
                    now_alpha = true;
                    settled = shape_settled(p, &now);
                }
            }
            if trace() {
                if let Some((p, _, _)) = prev_shape.as_ref() {
                    eprintln!(
                        "LRSHAPE {{\"it\":{},\"top_ok\":{},\"ranks\":[{:?},{:?}],\"spikes\":[{},{}],\"edge\":[{},{}],\"snr\":[{},{}],\"alpha\":[{},{}],\"m\":{},\"n\":{},\"e1\":{}}}",
                        iterations, top_ok, p.energy_ranks, now.energy_ranks, p.mp_spikes, now.mp_spikes,
                        p.mp_edge, now.mp_edge, p.spectrum_snr, now.spectrum_snr, p.pl_alpha, now.pl_alpha, m, n, errors[0] / sv[0]
                    );
                }
            }
            clock.lap("shape");
            if settled {
                converged = true;
                clock.report(iterations, dim);
                break;
            }
            prev_shape = Some((now, lam, now_alpha));
        }
        clock.report(iterations, dim);
        x = next.expect("not exhausted");
    }
    Ok(Ok(Outcome {
        sv,
        stats,
        iterations,
        converged,
        full: false,
        density,
        sv_error,
    }))
}

/// `g += a·aᵀ` on the lower triangle of `g` only (the eigensolver reads no other part): half
/// the flops of the full product.
fn lower_gram_add(g: faer::MatMut<'_, f64>, a: MatRef<'_, f64>, par: Par) {
    use faer::linalg::matmul::triangular::{matmul as triangular_matmul, BlockStructure};
    triangular_matmul(
        g,
        BlockStructure::TriangularLower,
        Accum::Add,
        a,
        BlockStructure::Rectangular,
        a.transpose(),
        BlockStructure::Rectangular,
        1.0f64,
        par,
    );
}

/// The whole spectrum from the Gram matrix over the smaller dimension, in f64.
pub fn exact(src: &MatrixSource<'_>, cfg: &SolverConfig, cancel: &AtomicBool) -> Result<Outcome> {
    let m = src.rows();
    let n = src.cols;
    let mut stats = ElementStats::default();
    let mut bytes = Scratch::default();
    let gram = if n <= m {
        // Σ over row panels of PᵀP (n × n).
        let mut g = Mat::<f64>::zeros(n, n);
        let rows = panel_rows(n, cfg.panel_elems);
        let mut buf = vec![0f32; rows * n];
        let mut buf64 = vec![0f64; rows * n];
        for p in src.panels(rows) {
            check_cancel(cancel)?;
            src.read_panel(p, &mut bytes, &mut buf, Some(&mut stats))?;
            let len = p.rows * n;
            for (d, s) in buf64[..len].iter_mut().zip(&buf[..len]) {
                *d = f64::from(*s);
            }
            let pt = MatRef::from_column_major_slice(&buf64[..len], n, p.rows);
            lower_gram_add(g.as_mut(), pt, cfg.par);
        }
        g
    } else {
        // Σ over column blocks C (m × w) of CCᵀ (m × m).
        let mut g = Mat::<f64>::zeros(m, m);
        let width = panel_rows(m, cfg.panel_elems).min(n);
        let mut buf = vec![0f32; m * width];
        let mut buf64 = vec![0f64; m * width];
        let mut c0 = 0;
        while c0 < n {
            check_cancel(cancel)?;
            let c1 = (c0 + width).min(n);
            let w = c1 - c0;
            src.read_columns(c0, c1, &mut bytes, &mut buf, Some(&mut stats))?;
            for (d, s) in buf64[..m * w].iter_mut().zip(&buf[..m * w]) {
                *d = f64::from(*s);
            }
            // Row-major C (m × w) is the column-major Cᵀ (w × m).
            let ct = MatRef::from_column_major_slice(&buf64[..m * w], w, m);
            lower_gram_add(g.as_mut(), ct.transpose(), cfg.par);
            c0 = c1;
        }
        g
    };
    let nmin = m.min(n);
    if stats.nonfinite > 0 {
        return Ok(nan_outcome(cfg.top_k.min(nmin), stats, 1));
    }
    let sv = sym_eigenvalues_desc(gram.as_ref(), cfg.par)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    Ok(Outcome {
        sv,
        stats,
        iterations: 1,
        converged: true,
        full: true,
        density: None,
        sv_error: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::io::ByteSource;
    use crate::spectral::source::Segment;
    use std::path::Path;

    /// A pass is B·X, checked against float64 on the stored values, over two segments,
    /// several panels (one partial) and two groups, with every kernel this CPU has: in the
    /// row space (two sweeps, [`Pass::run_rows`]: B = A·Aᵀ) and in the column space (one
    /// fused sweep: B = Aᵀ·A); the element statistics are those of every element once.
    #[test]
    fn a_pass_is_b_times_x_with_every_kernel() {
        for (rows, cols, b, panel_rows) in [
            (37, 150, 20, 8),
            (130, 1100, 40, 24),
            (150, 37, 20, 8),
            (1100, 130, 40, 24),
            (300, 70, 9, 16),
        ] {
            check_pass(rows, cols, b, panel_rows);
        }
    }

    fn check_pass(rows: usize, cols: usize, b: usize, panel_rows: usize) {
        let mut rnd = crate::spectral::test_uniform(7);
        let a: Vec<f32> = (0..rows * cols)
            .map(|_| half::bf16::from_f64(rnd()).to_f32())
            .collect();
        let row_space = rows < cols;
        let dim = if row_space { rows } else { cols };
        let x = Mat::<f32>::from_fn(dim, b, |_, _| rnd() as f32);
        let path = Path::new("w.safetensors");
        let split_row = rows / 2 + 1;
        for dtype in [Dtype::BF16, Dtype::F32] {
            let bytes: Vec<u8> = match dtype {
                Dtype::BF16 => a
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            let esize = bytes.len() / (rows * cols);
            let segment = |r0: usize, r1: usize| Segment {
                bytes: ByteSource::Memory {
                    start: 0,
                    data: &bytes,
                },
                path,
                offset: (r0 * cols * esize) as u64,
                rows: r1 - r0,
            };
            let src = MatrixSource::new(
                vec![segment(0, split_row), segment(split_row, rows)],
                cols,
                dtype,
            );
            assert_eq!(in_row_space(&src), row_space);
            let panels = src.panels(panel_rows);
            assert!(panels.len() > 4);
            let at = |i: usize, k: usize| f64::from(a[i * cols + k]);
            // want = B·X in float64: A·(Aᵀ·X) in the row space, Aᵀ·(A·X) in the column space.
            let inner = if row_space { cols } else { rows };
            let first = |t: usize, j: usize| -> f64 {
                if row_space {
                    (0..rows).map(|i| at(i, t) * f64::from(x[(i, j)])).sum()
                } else {
                    (0..cols).map(|k| at(t, k) * f64::from(x[(k, j)])).sum()
                }
            };
            let z: Vec<f64> = (0..inner * b).map(|e| first(e / b, e % b)).collect();
            let term = |i: usize, t: usize| if row_space { at(i, t) } else { at(t, i) };
            let mut kernels = vec![PassKernel::Faer];
            if super::super::f32_kernels::available() {
                kernels.push(PassKernel::F32);
            }
            if uses_bf16_kernel(&src, PassKernel::Bf16) {
                kernels.push(PassKernel::Bf16);
            }
            for kernel in kernels {
                let cancel = AtomicBool::new(false);
                let (w, stats) = Pass {
                    src: &src,
                    panels: &panels,
                    x: x.as_ref(),
                    chunks: 2,
                    want_stats: true,
                    cancel: &cancel,
                    kernel,
                }
                .run()
                .unwrap();
                assert_eq!((w.nrows(), w.ncols()), (dim, b));
                let tol = if kernel == PassKernel::Bf16 {
                    1e-2
                } else {
                    1e-5
                };
                for i in 0..dim {
                    for j in 0..b {
                        let want: f64 = (0..inner).map(|t| term(i, t) * z[t * b + j]).sum();
                        let scale: f64 =
                            (0..inner).map(|t| (term(i, t) * z[t * b + j]).abs()).sum();
                        let err = (f64::from(w[(i, j)]) - want).abs() / scale;
                        assert!(err < tol, "{dtype:?} {kernel:?} ({i}, {j}): {err}");
                    }
                }
                let sum_sq: f64 = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                assert!(
                    (stats.sum_sq / sum_sq - 1.0).abs() < 1e-6,
                    "{kernel:?} {} {sum_sq}",
                    stats.sum_sq
                );
            }
        }
    }
}
