//! Statistics derived from (top) singular values and the exact Frobenius norm.

/// Smallest `r` such that the top-`r` energy Σᵢ≤ᵣ σᵢ² reaches `share` of ‖W‖_F², for each
/// share in [`ENERGY_SHARES`], plus whether every rank was read off the known σ (`true`) or
/// estimated (`false`).
///
/// `sv` are the known singular values (descending), `frob_sq` = ‖W‖_F², `n_total` =
/// min(rows, cols), the number of singular values of the matrix. When `sv` holds the whole
/// spectrum, or its top values already reach the share, the rank is counted from `sv`.
///
/// Otherwise the M = `n_total − k` unknown tail values are modelled as
/// λ_{k+i} = c·σ²ₖ·(1 − tᵢ)^p with tᵢ = (i − ½)/M: a profile starting at σ²ₖ and decaying over
/// the whole remaining range, with p = M·σ²ₖ/R − 1 so that it holds the known remaining energy
/// R = ‖W‖_F² − Σᵢ≤ₖ σᵢ² (c rescales the discrete sum to exactly R; p = 0, a flat tail, when R
/// is at least M·σ²ₖ). On the real MiniLM weights (top-32 known) it underestimates the 90%
/// and 99% ranks by 12% on average (at most 22%). The estimate is never below the rigorous lower
/// bound `k + ⌈(share·‖W‖_F² − Σᵢ≤ₖ σᵢ²) / σ²ₖ⌉` (every tail value is ≤ σ²ₖ).
pub fn energy_ranks(sv: &[f64], frob_sq: f64, n_total: usize) -> ([usize; 3], bool) {
    let mut ranks = [0usize; 3];
    let mut exact = true;
    for (slot, &share) in ranks.iter_mut().zip(ENERGY_SHARES.iter()) {
        let (r, e) = energy_rank(sv, frob_sq, n_total, share);
        *slot = r;
        exact &= e;
    }
    (ranks, exact)
}

/// The energy shares of [`energy_ranks`].
pub const ENERGY_SHARES: [f64; 3] = [0.90, 0.95, 0.99];

fn energy_rank(sv: &[f64], frob_sq: f64, n_total: usize, share: f64) -> (usize, bool) {
    let target = share * frob_sq;
    let mut cum = 0.0;
    for (i, s) in sv.iter().enumerate() {
        cum += s * s;
        // A tiny slack absorbs rounding when the known σ are the whole spectrum.
        if cum >= target * (1.0 - 1e-12) {
            return (i + 1, true);
        }
    }
    let k = sv.len();
    if k >= n_total || k == 0 {
        return (n_total.max(k), k >= n_total);
    }
    let lam_k = sv[k - 1] * sv[k - 1];
    let rest = (frob_sq - cum).max(0.0);
    let need = target - cum;
    let m = n_total - k;
    let lower = if lam_k > 0.0 {
        k + ((need / lam_k).ceil() as usize).min(m)
    } else {
        n_total
    };
    if lam_k <= 0.0 || rest <= 0.0 {
        return (lower, false);
    }
    let p = (m as f64 * lam_k / rest - 1.0).max(0.0);
    let profile = |i: usize| (1.0 - (i as f64 - 0.5) / m as f64).powf(p);
    let total: f64 = (1..=m).map(profile).sum();
    let scale = rest / total;
    let mut acc = 0.0;
    for i in 1..=m {
        acc += scale * profile(i);
        if acc >= need {
            return ((k + i).max(lower), false);
        }
    }
    (n_total, false)
}

/// ‖W‖_F² / σ₁² (NaN when σ₁ is zero).
pub fn stable_rank(frob_sq: f64, sigma1: f64) -> f64 {
    if sigma1 > 0.0 {
        frob_sq / (sigma1 * sigma1)
    } else {
        f64::NAN
    }
}

/// Hill estimate of the power-law exponent α of the eigenvalues λᵢ = σᵢ² of WᵀW.
///
/// The tail is the top `t = sv.len()` eigenvalues (the top_k computed), with x_min = λ_t:
/// `α = 1 + t / Σᵢ≤ₜ ln(λᵢ / λ_t)`. This is the `PL_Alpha_Hill` formula of TempBalance /
/// AlphaLoRA / AlphaPruning, which take the top half of the full spectrum as the tail; here
/// the tail is the top-k so that the randomized and exact methods agree. NaN when fewer than
/// two values are known, λ_t is zero, or the top values are all equal.
pub fn hill_alpha(sv: &[f64]) -> f64 {
    let t = sv.len();
    if t < 2 {
        return f64::NAN;
    }
    let lam_min = sv[t - 1] * sv[t - 1];
    if lam_min <= 0.0 || !lam_min.is_finite() {
        return f64::NAN;
    }
    let s: f64 = sv.iter().map(|s| (s * s / lam_min).ln()).sum();
    if s <= 0.0 {
        return f64::NAN;
    }
    1.0 + t as f64 / s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_ranks_exact_from_full_spectrum() {
        let sv = [3.0, 2.0, 1.0, 1.0]; // energies 9, 4, 1, 1 of 15
        let (r, exact) = energy_ranks(&sv, 15.0, 4);
        assert!(exact);
        assert_eq!(r, [3, 4, 4]); // 13/15 < .9 <= 14/15 < .95 <= 15/15
    }

    #[test]
    fn energy_rank_estimate_matches_its_model_tail() {
        // Known top 3, then a tail of exactly the modelled shape: λ = λ₃·(1 − t)² over 200 values.
        let mut lam = vec![100.0, 50.0, 20.0];
        let m = 200;
        lam.extend((1..=m).map(|i| 20.0 * (1.0 - (i as f64 - 0.5) / m as f64).powi(2)));
        let sv: Vec<f64> = lam.iter().map(|l| l.sqrt()).collect();
        let total: f64 = lam.iter().sum();
        let (exact_r, exact) = energy_ranks(&sv, total, sv.len());
        assert!(exact);
        let (est, exact) = energy_ranks(&sv[..3], total, sv.len());
        assert!(!exact);
        for (e, x) in est.iter().zip(exact_r) {
            assert!(e.abs_diff(x) <= 2, "{est:?} vs {exact_r:?}");
        }
    }

    #[test]
    fn energy_rank_estimate_respects_lower_bound() {
        let sv = [2.0, 1.0];
        let frob_sq = 4.0 + 1.0 + 20.0; // 20 units of energy in 100 unknown values ≤ 1
        let (r, exact) = energy_ranks(&sv, frob_sq, 102);
        assert!(!exact);
        let lower = 2 + ((0.9 * frob_sq - 5.0) / 1.0_f64).ceil() as usize;
        assert!(r[0] >= lower && r[0] <= 102, "{r:?} lower {lower}");
    }

    #[test]
    fn hill_alpha_of_a_pure_power_law() {
        // λᵢ ∝ i^(-1/(α-1)) has Hill estimate ≈ α for a long tail.
        let alpha: f64 = 3.0;
        let sv: Vec<f64> = (1..=2000)
            .map(|i| (i as f64).powf(-1.0 / (alpha - 1.0)).sqrt())
            .collect();
        let a = hill_alpha(&sv);
        assert!((a - alpha).abs() < 0.1, "{a}");
        assert!(hill_alpha(&[1.0, 1.0]).is_nan());
        assert!(hill_alpha(&[1.0]).is_nan());
    }

    #[test]
    fn stable_rank_basic() {
        assert_eq!(stable_rank(8.0, 2.0), 2.0);
        assert!(stable_rank(0.0, 0.0).is_nan());
    }
}
