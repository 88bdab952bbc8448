//! The whole spectrum's shape: energy ranks, singular-value quantiles, the Marchenko–Pastur
//! noise edge and spikes, Spectrum's SNR (and a scale-invariant variant), and a
//! WeightWatcher-style power-law α with its x_min.
//!
//! Every statistic is computed by [`shape`] from a list of the N = min(rows, cols) eigenvalues
//! λᵢ = σᵢ² of WᵀW, descending. In exact mode that list is the spectrum itself; in randomized
//! mode it is the *pseudo-spectrum* [`Density::pseudo_spectrum`] read off a stochastic Lanczos
//! quadrature estimate of the spectral density (see [`Density`]), so both methods share one
//! definition of each statistic and the randomized value has an exact twin to test against.

/// Energy shares of the energy ranks.
pub const ENERGY_SHARES: [f64; 3] = [0.90, 0.95, 0.99];

/// Eigenvalues below this are dropped before the power-law fit (WeightWatcher's
/// `EVALS_THRESH`; absolute, as WeightWatcher has it).
pub const PL_EVALS_THRESH: f64 = 1e-5;

/// A discrete estimate of the eigenvalue distribution of B = WᵀW (on ℝⁿ, n = columns):
/// nodes with weights (how many eigenvalues each stands for), from block Gauss quadrature.
///
/// With H = QᵀBQ = YΘYᵀ over the block Krylov basis Q whose first block X₀ is the random
/// (Haar-orthonormal) start block of b columns, X₀ᵀf(B)X₀ ≈ Y₁f(Θ)Y₁ᵀ (Y₁ = the first b rows of
/// Y; exact for polynomials of degree < 2·blocks), and E[X₀X₀ᵀ] = (b/n)·I, so tr f(B) ≈
/// Σᵢ f(θᵢ)·(n/b)·‖Y₁[:, i]‖²: node θᵢ with weight (n/b)·‖Y₁[:, i]‖² (they sum to n). Each of the
/// b probes alone gives the weights n·Y₁[p, i]², used for error bars. Nodes whose Ritz residual
/// is negligible are eigenvalues: they get weight exactly 1 (`exact`), and the other weights
/// are rescaled to the remaining count.
#[derive(Debug, Clone, Default)]
pub struct Density {
    /// Node values (eigenvalue estimates of WᵀW), descending.
    pub nodes: Vec<f64>,
    /// Weights (eigenvalue counts), same order; they sum to `dim`.
    pub weights: Vec<f64>,
    /// The node is a point mass: a converged eigenvalue (weight 1) or the null space.
    pub exact: Vec<bool>,
    /// Per-probe weights, `probes[p][i]`, each row summing to `dim` (empty: no error bars).
    pub probes: Vec<Vec<f64>>,
    /// Dimension of the operator (columns of W).
    pub dim: usize,
}

impl Density {
    /// Build from Ritz values `theta` (any order), first-block eigenvector components
    /// `first[p][i]` (probe p, node i) and per-node convergence flags; `dim` = columns,
    /// `n_total` = min(rows, cols). Converged nodes get weight 1. A wide matrix (dim > n_total)
    /// has a null space of dimension dim − n_total, which the quadrature smears over its lowest
    /// nodes: that much mass is peeled off the bottom nodes into a point mass at 0. The other
    /// nodes share the remaining count in proportion to their quadrature weights.
    pub fn from_quadrature(
        theta: &[f64],
        first: &[Vec<f64>],
        converged: &[bool],
        dim: usize,
        n_total: usize,
    ) -> Density {
        let mut order: Vec<usize> = (0..theta.len()).collect();
        order.sort_by(|&a, &b| theta[b].total_cmp(&theta[a]));
        let null_dim = dim.saturating_sub(n_total) as f64;
        let mut nodes: Vec<f64> = order.iter().map(|&i| theta[i].max(0.0)).collect();
        let mut exact: Vec<bool> = order.iter().map(|&i| converged[i]).collect();
        let n_unit = exact.iter().filter(|&&e| e).count() as f64;
        let normalize = |raw: Vec<f64>| -> Vec<f64> {
            let sum: f64 = raw.iter().sum();
            let mut w: Vec<f64> = raw
                .iter()
                .map(|v| if sum > 0.0 { v * dim as f64 / sum } else { 0.0 })
                .collect();
            // Peel the null space off the bottom.
            let mut left = null_dim;
            for (wi, _) in w.iter_mut().zip(&exact).rev().filter(|(_, &e)| !e) {
                if left <= 0.0 {
                    break;
                }
                let take = wi.min(left);
                *wi -= take;
                left -= take;
            }
            let free = sum_where(&w, &exact, false);
            let rest = (n_total as f64 - n_unit).max(0.0);
            let scale = if free > 0.0 { rest / free } else { 0.0 };
            for (wi, &e) in w.iter_mut().zip(&exact) {
                *wi = if e { 1.0 } else { *wi * scale };
            }
            if null_dim > 0.0 {
                w.push(null_dim);
            }
            w
        };
        let b = first.len().max(1) as f64;
        let total: Vec<f64> = order
            .iter()
            .map(|&i| first.iter().map(|row| row[i] * row[i]).sum::<f64>() / b)
            .collect();
        let probes = first
            .iter()
            .map(|row| normalize(order.iter().map(|&i| row[i] * row[i]).collect()))
            .collect();
        let weights = normalize(total);
        if null_dim > 0.0 {
            nodes.push(0.0);
            exact.push(true);
        }
        Density {
            nodes,
            weights,
            exact,
            probes,
            dim,
        }
    }

    /// N eigenvalues (descending) read off the density, see [`pseudo_spectrum`].
    pub fn pseudo_spectrum(&self, n_total: usize, frob_sq: f64) -> Vec<f64> {
        pseudo_spectrum(&self.nodes, &self.weights, &self.exact, n_total, frob_sq)
    }
}

/// The `n_total` largest eigenvalues implied by nodes (descending) with weights: eigenvalue
/// number r (1-based) is the value at count position r − ½ of the count-from-the-top function.
/// An exact node is a point mass (its positions all take its value). Inexact nodes stand for a
/// stretch of the density: between the mid-count positions of consecutive inexact nodes the
/// *singular value* √λ is interpolated linearly (the density of σ is smooth where that of λ is
/// not: at a hard edge at 0, the λ density of a square matrix diverges like 1/√λ); beyond the
/// first and last mid positions of a run of inexact nodes it is extrapolated with the slope of
/// the nearest interval, kept between the neighbouring point masses (or 0). The inexact values
/// are then scaled so that the sum of all `n_total` equals `frob_sq` (the exact ‖W‖_F²).
pub fn pseudo_spectrum(
    nodes: &[f64],
    weights: &[f64],
    exact: &[bool],
    n_total: usize,
    frob_sq: f64,
) -> Vec<f64> {
    if nodes.is_empty() {
        return vec![0.0; n_total];
    }
    let len = nodes.len();
    let sig: Vec<f64> = nodes.iter().map(|v| v.max(0.0).sqrt()).collect();
    let mut ends = Vec::with_capacity(len);
    let mut c = 0.0;
    for w in weights {
        c += w.max(0.0);
        ends.push(c);
    }
    let mid = |i: usize| ends[i] - 0.5 * weights[i].max(0.0);
    let inexact = |i: usize| i < len && !exact[i];
    // Value at position t along the segment from node i to node j (mid positions).
    let line = |i: usize, j: usize, t: f64| {
        let (t0, t1) = (mid(i), mid(j));
        if t1 <= t0 {
            return sig[i];
        }
        sig[i] + (t - t0) / (t1 - t0) * (sig[j] - sig[i])
    };
    let mut out = Vec::with_capacity(n_total);
    let mut is_exact = Vec::with_capacity(n_total);
    let mut i = 0;
    for r in 0..n_total {
        let t = r as f64 + 0.5;
        while i + 1 < len && ends[i] <= t {
            i += 1;
        }
        let v = if exact[i] || t >= ends[len - 1] {
            sig[i]
        } else if t < mid(i) {
            if i > 0 && inexact(i - 1) {
                line(i - 1, i, t)
            } else if inexact(i + 1) {
                // Upper end of a run: extrapolate, at most the point mass above.
                let cap = if i > 0 { sig[i - 1] } else { f64::INFINITY };
                line(i, i + 1, t).min(cap)
            } else {
                sig[i]
            }
        } else if inexact(i + 1) {
            line(i, i + 1, t)
        } else if i > 0 && inexact(i - 1) {
            // Lower end of a run: extrapolate, at least the point mass below (or 0).
            let floor = if i + 1 < len { sig[i + 1] } else { 0.0 };
            line(i - 1, i, t).max(floor)
        } else {
            sig[i]
        };
        let v = v.max(0.0);
        out.push(v * v);
        is_exact.push(exact[i] && t < ends[i]);
    }
    let known = sum_where(&out, &is_exact, true);
    let free = sum_where(&out, &is_exact, false);
    let want = frob_sq - known;
    if free > 0.0 && want > 0.0 {
        let s = want / free;
        for (v, &e) in out.iter_mut().zip(&is_exact) {
            if !e {
                *v *= s;
            }
        }
    }
    // Interpolation and extrapolation keep the order except next to point masses.
    out.sort_by(|a, b| b.total_cmp(a));
    out
}

/// Everything [`shape`] derives from a spectrum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Smallest r with Σᵢ≤ᵣ λᵢ ≥ share·‖W‖_F², shares [`ENERGY_SHARES`].
    pub energy_ranks: [usize; 3],
    /// 25%, 50%, 75% quantiles of the N singular values (linear interpolation, as
    /// numpy/torch `quantile`).
    pub sv_quantiles: [f64; 3],
    /// Marchenko–Pastur noise scale s (per-element standard deviation of the noise), from
    /// the bulk's mean eigenvalue ([`mp_fit`]).
    pub mp_sigma: f64,
    /// Marchenko–Pastur bulk edge in singular values, s·(√rows + √cols).
    pub mp_edge: f64,
    /// Singular values above the edge.
    pub mp_spikes: usize,
    /// Spectrum's SNR, as its spectrum.py computes it (see [`spectrum_snr`]).
    pub spectrum_snr: f64,
    /// Σσ above the MP edge / Σσ below it: scale-invariant.
    pub mp_snr: f64,
    /// WeightWatcher-style power-law exponent of the eigenvalues and its x_min (eigenvalue).
    pub pl_alpha: f64,
    pub pl_xmin: f64,
}

/// All statistics of the spectrum `lam` (N = min(rows, cols) eigenvalues of WᵀW, descending)
/// of a `rows × cols` matrix with ‖W‖_F² = `frob_sq`.
pub fn shape(lam: &[f64], frob_sq: f64, rows: usize, cols: usize) -> Shape {
    let mut sh = shape_without_alpha(lam, frob_sq, rows, cols);
    (sh.pl_alpha, sh.pl_xmin) = power_law_fit(lam);
    sh
}

/// [`shape`] without the power-law fit (the one statistic whose cost grows faster than N):
/// `pl_alpha` and `pl_xmin` are NaN.
pub fn shape_without_alpha(lam: &[f64], frob_sq: f64, rows: usize, cols: usize) -> Shape {
    let sv: Vec<f64> = lam.iter().map(|l| l.max(0.0).sqrt()).collect();
    let mut energy_ranks = [0usize; 3];
    for (slot, share) in energy_ranks.iter_mut().zip(ENERGY_SHARES) {
        *slot = energy_rank(lam, frob_sq, share);
    }
    let mut asc = sv.clone();
    asc.reverse();
    let q = |p: f64| quantile_sorted(&asc, p);
    let sv_quantiles = [q(0.25), q(0.5), q(0.75)];
    let (mp_sigma, mp_edge, mp_spikes) = mp_fit(lam, frob_sq, rows, cols);
    let (pl_alpha, pl_xmin) = (f64::NAN, f64::NAN);
    Shape {
        energy_ranks,
        sv_quantiles,
        mp_sigma,
        mp_edge,
        mp_spikes,
        spectrum_snr: spectrum_snr(&sv, rows, cols),
        mp_snr: mp_snr(&sv, mp_edge),
        pl_alpha,
        pl_xmin,
    }
}

/// Smallest r with Σᵢ≤ᵣ λᵢ ≥ share·total (a tiny slack absorbs rounding); N if never.
pub fn energy_rank(lam: &[f64], total: f64, share: f64) -> usize {
    let target = share * total * (1.0 - 1e-12);
    let mut cum = 0.0;
    for (i, l) in lam.iter().enumerate() {
        cum += l;
        if cum >= target {
            return i + 1;
        }
    }
    lam.len()
}

/// Quantile `p` of ascending `x` with linear interpolation (numpy's default, torch.quantile's).
pub fn quantile_sorted(x: &[f64], p: f64) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let pos = p * (x.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(x.len() - 1);
    x[lo] + (pos - lo as f64) * (x[hi] - x[lo])
}

/// Marchenko–Pastur fit of the bulk by its mean (second moment of the singular values): an
/// M × N noise matrix (M = max(rows, cols), N = min) of entry variance s² has N eigenvalues of
/// mean s²·M and bulk edge λ₊ = s²(√M + √N)². With the k largest eigenvalues taken as spikes,
/// s² = (‖W‖_F² − Σᵢ≤ₖ λᵢ) / (M·(N − k)); k = #{λ > λ₊}, iterated from k = 0 until it settles
/// (k only grows: each removed value exceeds the mean, so s² and the edge only fall). Only
/// ‖W‖_F² (exact) and the values above the edge enter, never a quantile of the bulk: the
/// randomized solver's converged Ritz values determine it. Returns (s, √λ₊, k).
pub fn mp_fit(lam: &[f64], frob_sq: f64, rows: usize, cols: usize) -> (f64, f64, usize) {
    let n = lam.len();
    if n == 0 {
        return (0.0, 0.0, 0);
    }
    let (big, small) = (rows.max(cols) as f64, rows.min(cols) as f64);
    let width = (big.sqrt() + small.sqrt()).powi(2);
    let mut spikes = 0usize;
    let mut top = 0.0; // Σᵢ≤ₖ λᵢ
    loop {
        let s2 = ((frob_sq - top) / (big * (small - spikes as f64))).max(0.0);
        let edge2 = s2 * width;
        let next = lam.iter().take_while(|&&l| l > edge2).count().min(n - 1);
        if next <= spikes {
            return (s2.sqrt(), edge2.sqrt(), spikes);
        }
        top += lam[spikes..next].iter().sum::<f64>();
        spikes = next;
    }
}

/// Spectrum's SNR exactly as `cognitivecomputations/spectrum` codes it, on all N singular
/// values S (descending): σ = (q75(S) − q25(S))/1.349, β = N/M, τ = σ·(1 + √β),
/// snr = ΣS[S > τ] / ΣS[S ≤ τ], reported as snr / S[0]. Where Spectrum would divide by zero
/// (nothing, or only exact zeros, below τ) its own empty-noise rule (noise := 1) is used, so
/// the value is finite for every finite non-zero matrix (NaN for the zero matrix, where S[0]=0).
pub fn spectrum_snr(sv: &[f64], rows: usize, cols: usize) -> f64 {
    if sv.is_empty() || sv[0] <= 0.0 {
        return f64::NAN;
    }
    let mut asc = sv.to_vec();
    asc.reverse();
    let sigma = (quantile_sorted(&asc, 0.75) - quantile_sorted(&asc, 0.25)) / 1.349;
    let beta = rows.min(cols) as f64 / rows.max(cols) as f64;
    let tau = sigma * (1.0 + beta.sqrt());
    let signal: f64 = sv.iter().filter(|&&s| s > tau).sum();
    let noise: f64 = sv.iter().filter(|&&s| s <= tau).sum();
    let noise = if noise > 0.0 { noise } else { 1.0 };
    signal / noise / sv[0]
}

/// Σσ above `edge` / Σσ at or below it. The denominator is floored at N·σ₁·2⁻²⁴ (singular values
/// below σ₁·2⁻²⁴ are f32 rounding), so it is finite for every non-zero matrix; 0 when nothing is
/// above the edge; NaN for the zero matrix.
pub fn mp_snr(sv: &[f64], edge: f64) -> f64 {
    if sv.is_empty() || sv[0] <= 0.0 {
        return f64::NAN;
    }
    let signal: f64 = sv.iter().filter(|&&s| s > edge).sum();
    let noise: f64 = sv.iter().filter(|&&s| s <= edge).sum();
    let floor = sv.len() as f64 * sv[0] * f64::from(f32::EPSILON) / 2.0;
    signal / noise.max(floor)
}

/// WeightWatcher's power-law fit (its `WWFit`, the default since 0.7) of the eigenvalues
/// above [`PL_EVALS_THRESH`]: for every candidate x_min (each eigenvalue but the largest), the
/// continuous MLE α = 1 + n / Σ ln(x/x_min) over the n values ≥ x_min and the Kolmogorov–Smirnov
/// distance D = max |1 − (x/x_min)^(1−α) − j/n|; the candidate of least D wins (the first one
/// on ties, as `numpy.argmin`). Returns (α, x_min), NaN when fewer than two eigenvalues are
/// above the threshold.
///
/// The search is exact but not O(N²): every candidate first gets a lower bound of its D from
/// every [`KS_STRIDE`]-th point (the same deviations, so never above D), and only candidates
/// whose bound can still beat the best D found so far are scanned in full, in order of their
/// bounds, each scan stopping as soon as it cannot win. In a Llama-8B scan (4096 eigenvalues
/// per fit) the fit's share of the CPU fell from 10.7% to 2.5% that way (benches/README,
/// "2026-12-05").
pub fn power_law_fit(lam: &[f64]) -> (f64, f64) {
    super::clear_upper_vector_state();
    let x = fit_values(lam);
    let n_all = x.len();
    if n_all < 2 {
        return (f64::NAN, f64::NAN);
    }
    let logs: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    // Suffix sums of the logs.
    let mut suffix = vec![0.0; n_all + 1];
    for i in (0..n_all).rev() {
        suffix[i] = suffix[i + 1] + logs[i];
    }
    // (lower bound of D, candidate index, α) of every candidate with a finite α > 1.
    let mut candidates: Vec<(f64, usize, f64)> = (0..n_all - 1)
        .filter_map(|i| {
            let n = (n_all - i) as f64;
            let alpha = 1.0 + n / (suffix[i] - n * logs[i]);
            (alpha.is_finite() && alpha > 1.0).then(|| {
                let bound = ks_distance(&logs, i, alpha, KS_STRIDE, f64::INFINITY);
                (bound, i, alpha)
            })
        })
        .collect();
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Best (D, index, α): the least D, then the least index.
    let mut best = (f64::INFINITY, usize::MAX, f64::NAN);
    let beats =
        |d: f64, i: usize, best: &(f64, usize, f64)| d < best.0 || (d == best.0 && i < best.1);
    for &(bound, i, alpha) in &candidates {
        if !beats(bound, i, &best) {
            // Every later candidate has a bound ≥ this one (and a larger index on ties).
            break;
        }
        let d = ks_distance(&logs, i, alpha, 1, best.0);
        if d.is_finite() && beats(d, i, &best) {
            best = (d, i, alpha);
        }
    }
    if best.1 == usize::MAX {
        return (f64::NAN, f64::NAN);
    }
    (best.2, x[best.1])
}

/// The power-law fit of [`power_law_fit`] with x_min fixed at the first of its values ≥
/// `xmin`: (α, its KS distance). For tests that score another spectrum's fit on this one.
#[cfg(test)]
pub fn power_law_fit_at(lam: &[f64], xmin: f64) -> (f64, f64) {
    let x = fit_values(lam);
    let i = x.partition_point(|&v| v < xmin).min(x.len() - 1);
    let logs: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    let n = (x.len() - i) as f64;
    let alpha = 1.0 + n / (logs[i..].iter().sum::<f64>() - n * logs[i]);
    (alpha, ks_distance(&logs, i, alpha, 1, f64::INFINITY))
}

/// The eigenvalues the power-law fit uses: those above [`PL_EVALS_THRESH`], ascending.
fn fit_values(lam: &[f64]) -> Vec<f64> {
    let mut x: Vec<f64> = lam
        .iter()
        .copied()
        .filter(|&l| l > PL_EVALS_THRESH)
        .collect();
    x.sort_by(f64::total_cmp);
    x
}

/// Every how many points [`power_law_fit`] takes a candidate's deviations for its lower bound.
const KS_STRIDE: usize = 16;

/// The Kolmogorov–Smirnov distance of candidate x_min = exp(`logs[i]`) with exponent `alpha`
/// over the points `i, i + stride, …` of the sorted `logs` (`stride` 1: the distance itself;
/// larger: a lower bound of it). Stops once the distance exceeds `stop` (it then cannot win);
/// NaN deviations are skipped (`numpy.max` would return NaN; they do not occur for finite
/// positive eigenvalues).
fn ks_distance(logs: &[f64], i: usize, alpha: f64, stride: usize, stop: f64) -> f64 {
    let n = (logs.len() - i) as f64;
    let e = 1.0 - alpha;
    let mut d = 0.0f64;
    for (j, &lx) in logs[i..].iter().enumerate().step_by(stride) {
        let dev = (1.0 - (e * (lx - logs[i])).exp() - j as f64 / n).abs();
        if dev > d {
            d = dev;
            if d > stop {
                break;
            }
        }
    }
    d
}

/// Standard errors of the energy ranks from the per-probe densities: the rank each probe's
/// pseudo-spectrum gives, their standard deviation / √probes.
pub fn energy_rank_stderr(density: &Density, n_total: usize, frob_sq: f64) -> [f64; 3] {
    let p = density.probes.len();
    if p < 2 {
        return [0.0; 3];
    }
    let mut out = [0.0; 3];
    let ranks: Vec<[f64; 3]> = density
        .probes
        .iter()
        .map(|w| {
            let lam = pseudo_spectrum(&density.nodes, w, &density.exact, n_total, frob_sq);
            let mut r = [0.0; 3];
            for (slot, share) in r.iter_mut().zip(ENERGY_SHARES) {
                *slot = energy_rank(&lam, frob_sq, share) as f64;
            }
            r
        })
        .collect();
    for (k, slot) in out.iter_mut().enumerate() {
        let mean = ranks.iter().map(|r| r[k]).sum::<f64>() / p as f64;
        let var = ranks.iter().map(|r| (r[k] - mean).powi(2)).sum::<f64>() / (p - 1) as f64;
        *slot = (var / p as f64).sqrt();
    }
    out
}

/// The sum of the `values` whose `exact` flag is `flag`.
fn sum_where(values: &[f64], exact: &[bool], flag: bool) -> f64 {
    values
        .iter()
        .zip(exact)
        .filter(|&(_, &e)| e == flag)
        .map(|(v, _)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp_fit_of_spikes_on_a_flat_bulk() {
        // 4 spikes of 100 over 96 eigenvalues of 1 (rows 200, cols 100): the bulk mean 1 is
        // s²·200, the edge λ₊ = s²(√200 + √100)² ≈ 2.91; the first round (k = 0: mean 4.96,
        // λ₊ ≈ 14.5) puts the 4 spikes above its edge, the second settles.
        let mut lam = vec![100.0; 4];
        lam.extend(vec![1.0; 96]);
        let frob: f64 = lam.iter().sum();
        let (s, edge, k) = mp_fit(&lam, frob, 200, 100);
        assert_eq!(k, 4);
        assert!((s * s * 200.0 - 1.0).abs() < 1e-12, "{s}");
        let want = (1.0f64 / 200.0).sqrt() * (200f64.sqrt() + 10.0);
        assert!((edge - want).abs() < 1e-12, "{edge} {want}");
    }

    #[test]
    fn pseudo_spectrum_of_unit_exact_nodes_is_the_spectrum() {
        let nodes = [9.0, 4.0, 1.0, 0.5];
        let lam = pseudo_spectrum(&nodes, &[1.0; 4], &[true; 4], 4, 14.5);
        for (a, b) in lam.iter().zip(nodes) {
            assert!((a - b).abs() < 1e-12, "{lam:?}");
        }
        // Inexact nodes standing for 2 eigenvalues each: interpolated, summing to frob_sq.
        let lam = pseudo_spectrum(&[4.0, 2.0], &[2.0, 2.0], &[false; 2], 4, 12.0);
        assert_eq!(lam.len(), 4);
        assert!((lam.iter().sum::<f64>() - 12.0).abs() < 1e-12);
        assert!(lam.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn spectrum_snr_and_mp_snr_are_finite_for_rank_one() {
        let mut sv = vec![0.0; 100];
        sv[0] = 3.0;
        let s = spectrum_snr(&sv, 100, 200);
        assert!(s.is_finite(), "{s}");
        let lam: Vec<f64> = sv.iter().map(|s| s * s).collect();
        let (_, edge, spikes) = mp_fit(&lam, 9.0, 100, 200);
        assert_eq!(spikes, 1);
        assert!(mp_snr(&sv, edge).is_finite());
        assert!(spectrum_snr(&[0.0; 4], 4, 4).is_nan());
    }

    /// The plain O(N²) search: every candidate's whole distance, the first least one wins.
    fn power_law_fit_every_candidate(lam: &[f64]) -> (f64, f64) {
        let x = fit_values(lam);
        if x.len() < 2 {
            return (f64::NAN, f64::NAN);
        }
        let logs: Vec<f64> = x.iter().map(|v| v.ln()).collect();
        // Σ ln x over the tail, summed from the largest value down (as the fit sums it).
        let tail_sum = |i: usize| logs[i..].iter().rev().fold(0.0, |s, l| s + l);
        let mut best = (f64::INFINITY, f64::NAN, f64::NAN);
        for i in 0..x.len() - 1 {
            let n = (x.len() - i) as f64;
            let alpha = 1.0 + n / (tail_sum(i) - n * logs[i]);
            if !(alpha.is_finite() && alpha > 1.0) {
                continue;
            }
            let d = logs[i..]
                .iter()
                .enumerate()
                .map(|(j, &lx)| (1.0 - ((1.0 - alpha) * (lx - logs[i])).exp() - j as f64 / n).abs())
                .fold(0.0, f64::max);
            if d < best.0 {
                best = (d, alpha, x[i]);
            }
        }
        (best.1, best.2)
    }

    #[test]
    fn power_law_fit_equals_the_search_over_every_candidate() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut cases: Vec<Vec<f64>> = vec![
            vec![],
            vec![1.0],
            vec![2.0, 2.0, 2.0],
            vec![1e-9, 1e-7, 3.0, 5.0],
            vec![1.0, 2.0],
        ];
        for &(n, tail) in &[(40, 1.5), (300, 2.5), (1024, 3.0), (4096, 4.0), (4096, 8.0)] {
            // Marchenko–Pastur-like bulk (uniform on [a, b]) plus a Pareto tail of n / 20.
            let mut lam: Vec<f64> = (0..n).map(|_| 0.5 + uniform()).collect();
            for v in lam.iter_mut().take(n / 20) {
                *v = 1.5 * uniform().powf(-1.0 / (tail - 1.0));
            }
            cases.push(lam.clone());
            // Ties: every value rounded to 2 decimals.
            cases.push(lam.iter().map(|v| (v * 100.0).round() / 100.0).collect());
            // Pure Pareto and pure bulk.
            cases.push(
                (0..n)
                    .map(|_| uniform().powf(-1.0 / (tail - 1.0)))
                    .collect(),
            );
            cases.push((0..n).map(|_| 1.0 + 0.01 * uniform()).collect());
        }
        for (c, lam) in cases.iter().enumerate() {
            let (a, xmin) = power_law_fit(lam);
            let (ra, rxmin) = power_law_fit_every_candidate(lam);
            assert!(
                (a.to_bits() == ra.to_bits() || (a.is_nan() && ra.is_nan()))
                    && (xmin.to_bits() == rxmin.to_bits() || (xmin.is_nan() && rxmin.is_nan())),
                "case {c} ({} values): ({a}, {xmin}) vs every candidate ({ra}, {rxmin})",
                lam.len()
            );
        }
    }

    #[test]
    fn power_law_fit_recovers_a_pareto_sample() {
        // Quantiles of a Pareto law with density ∝ x^-α, α = 2.5, x_min = 1.
        let alpha: f64 = 2.5;
        let n = 3000;
        let lam: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-1.0 / (alpha - 1.0)))
            .collect();
        let (a, xmin) = power_law_fit(&lam);
        assert!((a - alpha).abs() < 0.05, "{a} {xmin}");
    }
}
