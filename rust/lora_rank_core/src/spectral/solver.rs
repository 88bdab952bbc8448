//! Top singular values of a streamed matrix: randomized block Krylov, and an exact mode.
//!
//! **Randomized** (Halko–Martinsson–Tropp; Musco & Musco's block Krylov): the operator is
//! B = AᵀA on ℝⁿ (n = columns). Each iteration makes *one* pass over A, fused per row panel P:
//! Y = P·X, acc += Pᵀ·Y, so B·X costs one read of the matrix. Every block X₀, X₁, … is kept in
//! the orthonormal basis Q; the next block is B·Xᵢ orthogonalized against Q (block classical
//! Gram–Schmidt, twice) and QR-factored with faer. The Rayleigh quotient H = QᵀBQ needs no
//! extra pass: its new column block is Qᵀ(B·Xᵢ), the product just computed. The Ritz values
//! (eigenvalues of H, faer's self-adjoint eigensolver in f64) are σ² estimates from below; the
//! iteration stops when the estimated remaining error of every top-k σⱼ (from its last two
//! changes, see [`converged_estimate`]) is at most `rtol`·σⱼ, or after `max_iter` passes.
//!
//! **Exact**: the Gram matrix over the smaller dimension (AᵀA from row panels, or AAᵀ from
//! column blocks when the matrix is wide) accumulated in f64, then faer's symmetric
//! eigensolver: the whole spectrum, to f64 accuracy relative to σ₁².

use std::sync::atomic::{AtomicBool, Ordering};

use faer::linalg::matmul::matmul;
use faer::prelude::*;
use faer::{Accum, Mat, MatRef, Par, Side};
use rayon::prelude::*;

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

/// One pass over the matrix: returns AᵀA·X (n × b) and, if asked, the element statistics.
fn fused_pass(
    src: &MatrixSource<'_>,
    panels: &[Panel],
    x: MatRef<'_, f32>,
    chunks: usize,
    want_stats: bool,
    cancel: &AtomicBool,
) -> Result<(Mat<f32>, ElementStats)> {
    let n = src.cols;
    let b = x.ncols();
    let max_rows = panels.iter().map(|p| p.rows).max().unwrap_or(0);
    let groups = split(panels, chunks);
    let parts: Vec<Result<(Mat<f32>, ElementStats)>> = groups
        .par_iter()
        .map(|group| {
            let mut acc = Mat::<f32>::zeros(n, b);
            let mut bytes = Scratch::default();
            let mut buf = vec![0f32; max_rows * n];
            let mut y = Mat::<f32>::zeros(max_rows, b);
            let mut st = ElementStats::default();
            for &p in *group {
                check_cancel(cancel)?;
                src.read_panel(p, &mut bytes, &mut buf, want_stats.then_some(&mut st))?;
                // The row-major panel P (rows × n) is the column-major matrix Pᵀ (n × rows).
                let pt = MatRef::from_column_major_slice(&buf[..p.rows * n], n, p.rows);
                let mut yv = y.as_mut().subrows_mut(0, p.rows);
                matmul(
                    yv.rb_mut(),
                    Accum::Replace,
                    pt.transpose(),
                    x,
                    1.0f32,
                    Par::Seq,
                );
                matmul(acc.as_mut(), Accum::Add, pt, yv.rb(), 1.0f32, Par::Seq);
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

/// Remove from `z` its components along the (orthonormal) blocks of `basis`, twice.
fn project_out(basis: &[Mat<f32>], z: &mut Mat<f32>) {
    for _ in 0..2 {
        for q in basis {
            let c = q.transpose() * z.as_ref();
            matmul(
                z.as_mut(),
                Accum::Add,
                q.as_ref(),
                c.as_ref(),
                -1.0f32,
                Par::Seq,
            );
        }
    }
}

/// An orthonormal block spanning the part of `z` orthogonal to `basis`; columns that vanish
/// (the Krylov space became invariant, or `z` was rank-deficient) are replaced by random
/// directions. `None` when no room is left (the basis would exceed ℝⁿ).
fn next_block(basis: &[Mat<f32>], mut z: Mat<f32>, rng: &mut Gaussian) -> Option<Mat<f32>> {
    let n = z.nrows();
    let b = z.ncols();
    let dim: usize = basis.iter().map(|q| q.ncols()).sum();
    if dim + b > n {
        return None;
    }
    let scale = (0..b)
        .map(|j| z.col(j).norm_l2())
        .fold(0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let (q, bad) = orthonormalize(basis, &mut z, scale);
    if bad.is_empty() {
        return Some(q);
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
    let (q, bad) = orthonormalize(basis, &mut z, 1.0);
    bad.is_empty().then_some(q)
}

/// Project `basis` out of `z` and QR-factor it: the Q factor and the columns whose R diagonal
/// is negligible against `scale`.
fn orthonormalize(basis: &[Mat<f32>], z: &mut Mat<f32>, scale: f32) -> (Mat<f32>, Vec<usize>) {
    project_out(basis, z);
    let qr = z.qr();
    let r = qr.thin_R();
    let bad = (0..z.ncols())
        .filter(|&j| {
            r[(j, j)].abs().partial_cmp(&(1e-5 * scale)) != Some(std::cmp::Ordering::Greater)
        })
        .collect();
    (qr.compute_thin_Q(), bad)
}

/// Eigenvalues of the symmetric `h`, descending.
fn sym_eigenvalues_desc(h: MatRef<'_, f64>) -> Vec<f64> {
    let mut ev = h
        .self_adjoint_eigenvalues(Side::Lower)
        .unwrap_or_else(|_| vec![f64::NAN; h.nrows()]);
    ev.reverse();
    ev
}

fn nan_outcome(k: usize, stats: ElementStats, iterations: usize) -> Outcome {
    Outcome {
        sv: vec![f64::NAN; k],
        stats,
        iterations,
        converged: false,
        full: false,
    }
}

/// Whether every Ritz value `sv[j]` is within `rtol` (relative) of its limit, judged from its
/// last two changes: the last change `deltas[j]` must be below the tolerance, and so must the
/// remaining error if the changes keep shrinking at the last observed rate ρ = δᵢ/δᵢ₋₁
/// (geometric tail δᵢ·ρ/(1−ρ), ρ capped at 0.95). Block Krylov converges at least that fast
/// once the rate settles, so the estimate is conservative; it needs three iterations.
fn converged_estimate(sv: &[f64], deltas: &[f64], prev_deltas: &[f64], rtol: f64) -> bool {
    if prev_deltas.len() != deltas.len() {
        return false;
    }
    let s1 = sv.first().copied().unwrap_or(0.0);
    sv.iter()
        .zip(deltas.iter().zip(prev_deltas))
        .all(|(&s, (&d, &pd))| {
            let tol = rtol * s + 1e-7 * s1;
            let rho = if pd > 0.0 {
                (d / pd).min(0.95)
            } else if d == 0.0 {
                0.0
            } else {
                0.95
            };
            d <= tol && d * rho / (1.0 - rho) <= tol
        })
}

/// Top singular values by randomized block Krylov (see the module docs).
pub fn randomized(
    src: &MatrixSource<'_>,
    cfg: &SolverConfig,
    cancel: &AtomicBool,
) -> Result<Outcome> {
    let m = src.rows();
    let n = src.cols;
    let k = cfg.top_k.min(m.min(n));
    let b = cfg.block.max(k).min(n).max(1);
    let panels = src.panels(panel_rows(n, cfg.panel_elems));
    let mut rng = Gaussian::new(cfg.seed);
    let mut x = {
        let g = rng.matrix(n, b);
        g.qr().compute_thin_Q()
    };
    let max_blocks = cfg.max_iter.max(1);
    let mut h = Mat::<f64>::zeros(b * max_blocks, b * max_blocks);
    let mut basis: Vec<Mat<f32>> = Vec::new();
    let mut stats = ElementStats::default();
    let mut prev: Vec<f64> = Vec::new();
    let mut prev_deltas: Vec<f64> = Vec::new();
    let mut sv: Vec<f64> = Vec::new();
    let mut converged = false;
    let mut iterations = 0;
    while iterations < max_blocks {
        let (w, st) = fused_pass(
            src,
            &panels,
            x.as_ref(),
            cfg.chunks,
            iterations == 0,
            cancel,
        )?;
        iterations += 1;
        if iterations == 1 {
            stats = st;
            if stats.nonfinite > 0 {
                return Ok(nan_outcome(k, stats, iterations));
            }
        }
        basis.push(x);
        let i = basis.len() - 1;
        // New column block of H = QᵀBQ: Q_jᵀ·(B·X_i) for every block j ≤ i.
        for (j, q) in basis.iter().enumerate() {
            let c = q.transpose() * w.as_ref();
            for r in 0..b {
                for s in 0..b {
                    let v = f64::from(c[(r, s)]);
                    if j == i {
                        // Symmetrize the diagonal block.
                        let t = f64::from(c[(s, r)]);
                        h[(j * b + r, i * b + s)] = 0.5 * (v + t);
                    } else {
                        h[(j * b + r, i * b + s)] = v;
                        h[(i * b + s, j * b + r)] = v;
                    }
                }
            }
        }
        let dim = basis.len() * b;
        let ritz = sym_eigenvalues_desc(h.as_ref().get(..dim, ..dim));
        sv = ritz.iter().take(k).map(|l| l.max(0.0).sqrt()).collect();
        if !prev.is_empty() {
            let deltas: Vec<f64> = sv.iter().zip(&prev).map(|(s, p)| (s - p).abs()).collect();
            converged = converged_estimate(&sv, &deltas, &prev_deltas, cfg.rtol);
            prev_deltas = deltas;
        }
        if converged || iterations == max_blocks {
            break;
        }
        prev.clone_from(&sv);
        match next_block(&basis, w, &mut rng) {
            Some(next) => x = next,
            None => {
                // The basis spans ℝⁿ (or an invariant subspace): the Ritz values are exact.
                converged = true;
                break;
            }
        }
    }
    Ok(Outcome {
        sv,
        stats,
        iterations,
        converged,
        full: false,
    })
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
            matmul(g.as_mut(), Accum::Add, pt, pt.transpose(), 1.0f64, cfg.par);
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
            matmul(g.as_mut(), Accum::Add, ct.transpose(), ct, 1.0f64, cfg.par);
            c0 = c1;
        }
        g
    };
    let nmin = m.min(n);
    if stats.nonfinite > 0 {
        return Ok(nan_outcome(cfg.top_k.min(nmin), stats, 1));
    }
    let sv = sym_eigenvalues_desc(gram.as_ref())
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    Ok(Outcome {
        sv,
        stats,
        iterations: 1,
        converged: true,
        full: true,
    })
}
