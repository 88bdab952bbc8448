//! Exact spectra of low-rank products given by their factors: a LoRA adapter's update
//! ΔW = scaling·B·A (B: out × r, A: r × in), never formed.
//!
//! With Aᵀ = Q_a·R_a and B = Q_b·R_b (thin QR, f64), B·A = Q_b·(R_b·R_aᵀ)·Q_aᵀ, so the singular
//! values of ΔW are those of the r × r core scaling·R_b·R_aᵀ: O((in + out)·r²) work and
//! O((in + out)·r) memory, against O(in·out·min(in, out)) for an SVD of the dense product. All
//! other singular values are 0, so the spectrum is whole and every statistic exact.

use faer::Mat;
use rayon::prelude::*;

use super::{job_path, read_matrix, summarize, Job, Method, ShardBytes, ShardFile, Spectrum};
use crate::error::{Error, Result};
use crate::spectral::solver::Outcome;
use crate::spectral::source::ElementStats;

/// One adapter module: the factor `a` (r × in), the factor `b` (out × r) and the scaling.
#[derive(Debug, Clone)]
pub struct Factors {
    pub a: Job,
    pub b: Job,
    pub scaling: f64,
}

/// The singular values (descending, all min(r, in, out) of them) of `scaling·B·A`, with `a`
/// row-major r × in and `b` row-major out × r.
pub fn product_singular_values(a: &[f32], b: &[f32], r: usize, scaling: f64) -> Vec<f64> {
    let n_in = a.len().checked_div(r).unwrap_or(0);
    let n_out = b.len().checked_div(r).unwrap_or(0);
    if r == 0 || n_in == 0 || n_out == 0 {
        return Vec::new();
    }
    let at = Mat::<f64>::from_fn(n_in, r, |i, j| f64::from(a[j * n_in + i]));
    let bm = Mat::<f64>::from_fn(n_out, r, |i, j| f64::from(b[i * r + j]));
    let (qa, qb) = (at.qr(), bm.qr());
    let core = qb.thin_R() * qa.thin_R().transpose() * scaling;
    let mut sv = core
        .singular_values()
        .unwrap_or_else(|_| vec![f64::NAN; core.nrows().min(core.ncols())]);
    sv.sort_by(|x, y| y.total_cmp(x));
    sv
}

/// Spectra of `scaling·B·A` for each of `modules`, in parallel, as [`Spectrum`]s of the
/// out × in product (method `Exact`: the spectrum is whole, with `top_k` values reported).
pub fn product_spectra(
    shards: &[ShardFile],
    modules: &[Factors],
    top_k: usize,
) -> Result<Vec<Spectrum>> {
    modules
        .par_iter()
        .map(|f| {
            let (r, r_b) = (f.a.rows(), f.b.cols);
            if r != r_b {
                let files: Vec<ShardBytes> = shards.iter().map(ShardBytes::File).collect();
                return Err(Error::Unsupported {
                    path: job_path(&files, &f.a),
                    msg: format!(
                        "tensor {:?} has rank {r} but {:?} has rank {r_b}",
                        f.a.name, f.b.name
                    ),
                });
            }
            let a = read_matrix(shards, &f.a)?;
            let b = read_matrix(shards, &f.b)?;
            let mut stats = ElementStats::default();
            stats.add(&a);
            stats.add(&b);
            let sv = if stats.nonfinite > 0 {
                Vec::new()
            } else {
                product_singular_values(&a, &b, r, f.scaling)
            };
            let (rows, cols) = (f.b.rows(), f.a.cols);
            let outcome = Outcome {
                stats: ElementStats {
                    sum_sq: sv.iter().map(|s| s * s).sum(),
                    nonfinite: stats.nonfinite,
                },
                sv,
                iterations: 0,
                converged: true,
                full: true,
                density: None,
                sv_error: 0.0,
            };
            Ok(summarize(outcome, top_k, rows, cols, Method::Exact))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_values_are_those_of_the_dense_product() {
        let mut u = super::super::test_uniform(11);
        let (r, n_in, n_out, scaling) = (5, 40, 30, 0.75);
        let a: Vec<f32> = (0..r * n_in).map(|_| u() as f32).collect();
        let b: Vec<f32> = (0..n_out * r).map(|_| u() as f32).collect();
        let dense = Mat::<f64>::from_fn(n_out, n_in, |i, j| {
            (0..r)
                .map(|k| f64::from(b[i * r + k]) * f64::from(a[k * n_in + j]))
                .sum::<f64>()
                * scaling
        });
        let want = dense.singular_values().unwrap();
        let got = product_singular_values(&a, &b, r, scaling);
        assert_eq!(got.len(), r);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * want[0], "{got:?} vs {want:?}");
        }
        assert!(want[r] < 1e-12 * want[0]);
    }
}
