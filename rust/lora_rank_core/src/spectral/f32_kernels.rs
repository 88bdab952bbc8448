//! AVX-512F kernels of a pass on f32 panels: bf16, f16 and quantized panels decoded to f32,
//! f32 panels as stored. They replace faer's matmul in both products of a pass where the CPU
//! has AVX-512F ([`super::solver::PassKernel::F32`]).
//!
//! faer's general GEMM is tuned for large square-ish products; a pass multiplies a panel of
//! 16–1024 rows by a block of b ≈ 40 columns, so it packs its operands for every panel (Xᵀ,
//! n × b, copied once per panel of the same size) and its register tiles fit b badly. Here
//! nothing is packed per panel: X is stored once per pass row-major with its rows padded to
//! a multiple of 16 ([`RowsX`]), and the panel is read where it was decoded.
//!
//! - Y = P·X ([`panel_times`]): each element of P is broadcast against rows of X. Register
//!   tile: `MR` rows × `NV` vectors of 16 columns of Y (block 40: 3 vectors, the last half
//!   padding; a 256-bit strip for those 8 columns, as the bf16 kernels have, was slower here:
//!   121 against 101 GFLOP/s of useful flops, one core of an Intel Xeon). The columns k run in blocks
//!   of [`KC`], so the block of X's rows stays in the core's cache while every `MR`-row block
//!   of the panel uses it (a whole X is larger than L2 for n = 14336).
//! - acc += Pᵀ·Y ([`panel_transpose_times`]): acc is b × n (row j = column j of the result), so
//!   each row of P is loaded as vectors of 16 consecutive k and every Y[i, j] is broadcast.
//!   Register tile: `KV` vectors of k × `JT` columns j, summed over the panel's rows, then
//!   added to acc.
//!
//! Both are plain f32 FMAs, the f32 path's arithmetic (faer's too): no rounding is added, so
//! the results agree with faer's to f32 rounding (tests below: against f64).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Columns k per block of the first product: KC rows of X (KC × 48 f32 = 24 KiB for a block of
/// 40) are reused from L1 by every `MR`-row block of the panel before the next KC.
const KC: usize = 128;

/// X (n × b, `x(k, j)`) stored row-major, each row padded with zeros to [`RowsX::bpad`]
/// columns (a multiple of 16).
pub struct RowsX {
    data: Vec<f32>,
    n: usize,
    cols: usize,
    bpad: usize,
}

impl RowsX {
    pub fn new(n: usize, b: usize, x: impl Fn(usize, usize) -> f32) -> RowsX {
        let bpad = super::kernels::padded_cols(b);
        let mut data = vec![0f32; n * bpad];
        for (k, row) in data.chunks_exact_mut(bpad).enumerate() {
            for (j, v) in row[..b].iter_mut().enumerate() {
                *v = x(k, j);
            }
        }
        RowsX {
            data,
            n,
            cols: b,
            bpad,
        }
    }

    /// The row stride of X and of the Y that [`panel_times`] writes.
    pub fn bpad(&self) -> usize {
        self.bpad
    }

    /// Columns of X (b).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// acc (b × n, row j = column j of AᵀA·X) += Pᵀ(P·X) for the panel `p` (rows × n f32,
/// row-major): [`panel_times`] then [`panel_transpose_times`]. `y` is scratch. Must only be
/// called when [`available`].
pub fn panel_pass(p: &[f32], rows: usize, n: usize, x: &RowsX, acc: &mut [f32], y: &mut Vec<f32>) {
    panel_times(p, rows, n, x, y);
    panel_transpose_times(p, rows, n, x.cols, y, x.bpad, acc);
}

/// Y = P·X for the panel `p` (rows × n f32, row-major) into `y` (rows × [`RowsX::bpad`], row
/// i at `y[i·bpad..]`; the padding columns are zero). Must only be called when [`available`].
pub fn panel_times(p: &[f32], rows: usize, n: usize, x: &RowsX, y: &mut Vec<f32>) {
    assert!(p.len() >= rows * n && x.n == n && x.data.len() == n * x.bpad);
    y.clear();
    y.resize(rows * x.bpad, 0.0);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `available()`; every index is below the asserted lengths.
    unsafe {
        times_x(p, rows, n, x, y);
    }
}

/// acc[j·n + k] += Σᵢ P[i, k]·Y[i, j] for j < b, k < n, with P the panel `p` (rows × n f32,
/// row-major) and Y[i, j] = `y[i·ystride + j]`. Must only be called when [`available`].
pub fn panel_transpose_times(
    p: &[f32],
    rows: usize,
    n: usize,
    b: usize,
    y: &[f32],
    ystride: usize,
    acc: &mut [f32],
) {
    assert!(p.len() >= rows * n && acc.len() >= b * n && ystride >= b);
    assert!(rows == 0 || y.len() >= (rows - 1) * ystride + b);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `available()`; every index is below the asserted lengths.
    unsafe {
        transpose_times(p, rows, n, b, y, ystride, acc);
    }
}

/// The raw parts of one product Y = P·X, for the tiles.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Times {
    p: *const f32,
    n: usize,
    x: *const f32,
    bpad: usize,
    y: *mut f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn times_x(p: &[f32], rows: usize, n: usize, x: &RowsX, y: &mut [f32]) {
    let t = Times {
        p: p.as_ptr(),
        n,
        x: x.data.as_ptr(),
        bpad: x.bpad,
        y: y.as_mut_ptr(),
    };
    let b = x.cols;
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + KC).min(n);
        let first = k0 == 0;
        // Column groups of at most 4 vectors of 16.
        let mut c0 = 0;
        while c0 < b {
            let left = b - c0;
            // Vectors of 16 columns in this group; the last may be partly padding.
            match left.div_ceil(16).min(4) {
                4 => rows_of::<4, 6>(t, rows, c0, k0, k1, first),
                3 => rows_of::<3, 8>(t, rows, c0, k0, k1, first),
                2 => rows_of::<2, 12>(t, rows, c0, k0, k1, first),
                _ => rows_of::<1, 16>(t, rows, c0, k0, k1, first),
            }
            c0 += 64;
        }
        k0 = k1;
    }
}

/// Columns k0..k1 of Y's columns c0..c0 + 16·NV for every row of the panel, `MR` rows at a
/// time, then the rest.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_of<const NV: usize, const MR: usize>(
    t: Times,
    rows: usize,
    c0: usize,
    k0: usize,
    k1: usize,
    first: bool,
) {
    let mut i0 = 0;
    while i0 + MR <= rows {
        tile::<NV, MR>(t, i0, c0, k0, k1, first);
        i0 += MR;
    }
    // The rest in tiles of 4, 2 and 1 rows (a 4096 × 14336 panel has 18 rows).
    if i0 + 4 <= rows && MR > 4 {
        tile::<NV, 4>(t, i0, c0, k0, k1, first);
        i0 += 4;
    }
    if i0 + 2 <= rows && MR > 2 {
        tile::<NV, 2>(t, i0, c0, k0, k1, first);
        i0 += 2;
    }
    while i0 < rows {
        tile::<NV, 1>(t, i0, c0, k0, k1, first);
        i0 += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const NV: usize, const MR: usize>(
    t: Times,
    i0: usize,
    c0: usize,
    k0: usize,
    k1: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut row = [t.p; MR];
    for (r, ptr) in row.iter_mut().enumerate() {
        *ptr = t.p.add((i0 + r) * t.n);
    }
    for k in k0..k1 {
        let xr = t.x.add(k * t.bpad + c0);
        let mut xv = [_mm512_setzero_ps(); NV];
        for (v, slot) in xv.iter_mut().enumerate() {
            *slot = _mm512_loadu_ps(xr.add(16 * v));
        }
        for (a, r) in acc.iter_mut().zip(&row) {
            let bc = _mm512_set1_ps(*r.add(k));
            for (av, x) in a.iter_mut().zip(&xv) {
                *av = _mm512_fmadd_ps(bc, *x, *av);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let yr = t.y.add((i0 + r) * t.bpad + c0);
        for (v, av) in a.iter().enumerate() {
            let d = yr.add(16 * v);
            let s = if first {
                *av
            } else {
                _mm512_add_ps(_mm512_loadu_ps(d), *av)
            };
            _mm512_storeu_ps(d, s);
        }
    }
}

/// The raw parts of one product acc += Pᵀ·Y, for the strips.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct TransposeTimes {
    p: *const f32,
    rows: usize,
    n: usize,
    y: *const f32,
    ystride: usize,
    acc: *mut f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_times(
    p: &[f32],
    rows: usize,
    n: usize,
    b: usize,
    y: &[f32],
    ystride: usize,
    acc: &mut [f32],
) {
    let t = TransposeTimes {
        p: p.as_ptr(),
        rows,
        n,
        y: y.as_ptr(),
        ystride,
        acc: acc.as_mut_ptr(),
    };
    // The k of each strip in the outer loop: the panel's KV vectors of every row stay in L1
    // while every group of JT columns uses them.
    let mut k0 = 0;
    while k0 + 48 <= n {
        columns::<3, false>(t, b, k0, 0xffff);
        k0 += 48;
    }
    while k0 + 16 <= n {
        columns::<1, false>(t, b, k0, 0xffff);
        k0 += 16;
    }
    if k0 < n {
        columns::<1, true>(t, b, k0, (1u16 << (n - k0)) - 1);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns<const KV: usize, const MASKED: bool>(
    t: TransposeTimes,
    b: usize,
    k0: usize,
    mask: u16,
) {
    let mut j0 = 0;
    while j0 + 8 <= b {
        strip::<KV, 8, MASKED>(t, k0, j0, mask);
        j0 += 8;
    }
    while j0 < b {
        strip::<KV, 1, MASKED>(t, k0, j0, mask);
        j0 += 1;
    }
}

/// acc[j·n + k] += Σᵢ P[i, k]·Y[i, j] for k in k0..k0 + 16·KV (the last vector masked by
/// `mask` when `MASKED`) and j in j0..j0 + JT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn strip<const KV: usize, const JT: usize, const MASKED: bool>(
    t: TransposeTimes,
    k0: usize,
    j0: usize,
    mask: u16,
) {
    let mut acc = [[_mm512_setzero_ps(); KV]; JT];
    for i in 0..t.rows {
        let pr = t.p.add(i * t.n + k0);
        let mut pv = [_mm512_setzero_ps(); KV];
        for (v, slot) in pv.iter_mut().enumerate() {
            *slot = if MASKED && v + 1 == KV {
                _mm512_maskz_loadu_ps(mask, pr.add(16 * v))
            } else {
                _mm512_loadu_ps(pr.add(16 * v))
            };
        }
        let yr = t.y.add(i * t.ystride + j0);
        for (c, a) in acc.iter_mut().enumerate() {
            let yb = _mm512_set1_ps(*yr.add(c));
            for (av, pvv) in a.iter_mut().zip(&pv) {
                *av = _mm512_fmadd_ps(*pvv, yb, *av);
            }
        }
    }
    for (c, a) in acc.iter().enumerate() {
        let dst = t.acc.add((j0 + c) * t.n + k0);
        for (v, av) in a.iter().enumerate() {
            let d = dst.add(16 * v);
            if MASKED && v + 1 == KV {
                let s = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), *av);
                _mm512_mask_storeu_ps(d, mask, s);
            } else {
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *av));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_pass_matches_f64() {
        if !available() {
            eprintln!("no AVX-512F: skipped");
            return;
        }
        // Every tile and strip shape: the bf16 kernels' shapes, then b from 1 to 130 (1–4
        // vectors, wider blocks in groups of 4), n below, at and across KC and the 48/16-column
        // strips, row counts that leave remainders of every tile height.
        let more = [
            (25, 300, 40),
            (3, 517, 16),
            (14, 129, 48),
            (8, 48, 56),
            (17, 257, 64),
            (6, 97, 130),
            (1, 15, 1),
            (11, 31, 9),
        ];
        for (rows, n, b) in super::super::kernels::tests::PANEL_SHAPES
            .into_iter()
            .chain(more)
        {
            let mut uniform = super::super::test_uniform(7);
            let mut rnd = || uniform() as f32;
            let p: Vec<f32> = (0..rows * n).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..n * b).map(|_| rnd()).collect();
            let xr = RowsX::new(n, b, |k, j| x[k * b + j]);
            let mut acc: Vec<f32> = (0..b * n).map(|_| rnd()).collect();
            let acc0 = acc.clone();
            let mut y = Vec::new();
            panel_pass(&p, rows, n, &xr, &mut acc, &mut y);
            let pf = |i: usize, k: usize| f64::from(p[i * n + k]);
            let mut worst = 0f64;
            for j in 0..b {
                let yj: Vec<f64> = (0..rows)
                    .map(|i| (0..n).map(|k| pf(i, k) * f64::from(x[k * b + j])).sum())
                    .collect();
                for (i, want) in yj.iter().enumerate() {
                    let got = f64::from(y[i * xr.bpad() + j]);
                    let scale: f64 = (0..n)
                        .map(|k| (pf(i, k) * f64::from(x[k * b + j])).abs())
                        .sum();
                    worst = worst.max((got - want).abs() / scale.max(1e-30));
                }
                for k in 0..n {
                    let want: f64 = f64::from(acc0[j * n + k])
                        + (0..rows).map(|i| pf(i, k) * yj[i]).sum::<f64>();
                    let scale: f64 = f64::from(acc0[j * n + k]).abs()
                        + (0..rows).map(|i| (pf(i, k) * yj[i]).abs()).sum::<f64>();
                    let err = (f64::from(acc[j * n + k]) - want).abs() / scale.max(1e-30);
                    worst = worst.max(err);
                }
            }
            assert!(worst < 1e-5, "{rows}x{n} b={b}: {worst}");
            for i in 0..rows {
                for j in b..xr.bpad() {
                    assert_eq!(y[i * xr.bpad() + j], 0.0, "padding of row {i}");
                }
            }
        }
    }
}
