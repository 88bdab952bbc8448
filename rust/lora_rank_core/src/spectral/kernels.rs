//! AVX-512 BF16 kernels of the fused solver pass on bf16-stored and quantized matrices.
//!
//! One pass computes acc += Pᵀ(P·X) per row panel P (r × n, the stored bf16 words, never
//! decoded). `vdpbf16ps` multiplies pairs of bf16 and accumulates in f32, so both products
//! need a bf16 operand on the other side: X (orthonormal, n × b) and Y = P·X are rounded to
//! bf16 (relative 2⁻⁹ per element). P itself is exact when it *is* bf16; a quantized panel is
//! dequantized exactly (f32) and rounded to bf16 once, the same relative 2⁻⁹ per element. The rounding errors are
//! independent and nearly orthogonal to any fixed direction, so their effect on a Rayleigh
//! quotient is ≈ 2⁻⁹/√n relative (measured against f64 in benches/bench_spectra.py and the
//! tests: top-32 within the solver tolerance) — relative to σ₁², though: eigenvalues far below
//! it are lost, so the solver leaves these kernels past [`super::solver::BF16_RANGE`].
//!
//! - Y = P·X: pairs along the columns k; X is packed as `xp[k2·bpad + j]` = (X[2k2, j],
//!   X[2k2+1, j]); each stored 32-bit word of a row of P is such a pair and is broadcast.
//!   Register tile: `MR` rows × `NV` vectors of 16 columns of Y; when the last 16-column strip
//!   holds at most 8 live columns (block 40: 2 × 16 + 8) it takes a 256-bit accumulator.
//! - The element statistics of the first pass are summed from the same words
//!   ([`super::source::ElementStats::add_bf16`]), never from a decoded copy.
//! - acc += Pᵀ·Y: pairs along the rows i; two rows of P are interleaved on the fly
//!   (`vpunpck{l,h}wd`, which works per 128-bit lane, so the accumulators hold a fixed
//!   permutation of 32 consecutive k, undone when they are added to `acc`); the pair
//!   (Y[2i2, j], Y[2i2+1, j]) is broadcast. Register tile: 32 k × `JT` columns.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether this CPU runs the kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Accumulators of [`instruction_rates`]' loops: independent chains enough to hide either
/// instruction's latency on the CPUs we run on.
const RATE_CHAINS: usize = 16;

/// One core's throughput, in GFLOP/s, of the two instructions a pass can be built on, each
/// timed in a loop of `rounds` × [`RATE_CHAINS`] independent accumulations (least of 3
/// alternating runs): `(vdpbf16ps, vfmadd231ps)` on 512-bit registers (a bf16 pair-dot lane
/// is 4 flops, an FMA lane 2). None without the kernels. Measured: Intel Xeon (Emerald
/// Rapids, family 6 model 207) ≈ 82 vs 167, the dot product at *half* the FMA's rate, so
/// the f32 path wins there; on a Zen 4 the dot product should have twice the FMA's rate (not
/// yet measured here; its kernels' pass was 2.4× the f32 path's) (benches/README, "The pass
/// kernel per CPU").
pub fn instruction_rates(rounds: usize) -> Option<(f64, f64)> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let ops = (rounds * RATE_CHAINS) as f64;
        let (mut dot, mut fma) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            // SAFETY: `available()` checked the features these functions enable.
            unsafe {
                dot = dot.min(dot_rounds(rounds));
                fma = fma.min(fma_rounds(rounds));
            }
        }
        Some((ops * 64.0 / dot / 1e9, ops * 32.0 / fma / 1e9))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// `$name(rounds)`: seconds of `rounds` × [`RATE_CHAINS`] accumulations `acc = $op(acc, a)`
/// on 512-bit registers, `a` = `$a`, with the CPU features `$features`.
macro_rules! rate_loop {
    ($name:ident, $features:literal, $a:expr, $op:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(rounds: usize) -> f64 {
            let a = $a;
            let mut acc = [_mm512_setzero_ps(); RATE_CHAINS];
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                for r in acc.iter_mut() {
                    *r = $op(*r, a);
                }
            }
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(acc);
            s
        }
    };
}

// bf16 2⁻³¹ in every half: products far from overflow and from subnormals.
rate_loop!(
    dot_rounds,
    "avx512f,avx512bf16",
    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(std::hint::black_box(0x3000_3000))),
    |r, a| _mm512_dpbf16_ps(r, a, a)
);
rate_loop!(
    fma_rounds,
    "avx512f",
    _mm512_set1_ps(std::hint::black_box(1e-9)),
    |r, a| _mm512_fmadd_ps(a, a, r)
);

fn bf16_bits(x: f32) -> u32 {
    u32::from(half::bf16::from_f32(x).to_bits())
}

/// X (n × b, `x(k, j)`) packed as bf16 pairs along k, columns padded to a multiple of 16.
pub struct PackedX {
    data: Vec<u32>,
    pairs: usize,
    cols: usize,
    bpad: usize,
}

/// The row stride of the kernels' f32 blocks Y (and of [`PackedX`]'s rows) for b columns: b
/// rounded up to a multiple of 16 (one AVX-512 register of f32).
pub fn padded_cols(b: usize) -> usize {
    b.div_ceil(16) * 16
}

impl PackedX {
    pub fn new(n: usize, b: usize, x: impl Fn(usize, usize) -> f32) -> PackedX {
        let pairs = n.div_ceil(2);
        let bpad = padded_cols(b);
        let mut data = vec![0u32; pairs * bpad];
        for k2 in 0..pairs {
            for j in 0..b {
                let lo = bf16_bits(x(2 * k2, j));
                let hi = if 2 * k2 + 1 < n {
                    bf16_bits(x(2 * k2 + 1, j))
                } else {
                    0
                };
                data[k2 * bpad + j] = lo | (hi << 16);
            }
        }
        PackedX {
            data,
            pairs,
            cols: b,
            bpad,
        }
    }

    pub fn bpad(&self) -> usize {
        self.bpad
    }

    /// Columns of X (b).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// acc (b × n, row j = column j of AᵀA·X) += Pᵀ(P·X) for the panel `p` (rows × n bf16 words):
/// [`panel_times`] then [`panel_transpose_times`]. `y` and `ypair` are scratch. Must only be
/// called when [`available`].
#[allow(clippy::too_many_arguments)]
pub fn panel_pass(
    p: &[u16],
    rows: usize,
    n: usize,
    b: usize,
    xp: &PackedX,
    acc: &mut [f32],
    y: &mut Vec<f32>,
    ypair: &mut Vec<u32>,
) {
    panel_times(p, rows, n, xp, y);
    panel_transpose_times(p, rows, n, b, y, acc, ypair);
}

/// Y = P·X for the panel `p` (rows × n bf16 words) into `y` (rows × [`PackedX::bpad`], row
/// i at `y[i·bpad..]`, f32). Must only be called when [`available`].
pub fn panel_times(p: &[u16], rows: usize, n: usize, xp: &PackedX, y: &mut Vec<f32>) {
    assert!(p.len() >= rows * n && xp.pairs == n.div_ceil(2));
    let bpad = xp.bpad;
    y.resize(rows * bpad, 0.0);
    let b = xp.cols;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `available()`; all indices are within the asserted lengths.
    unsafe {
        // A last strip of at most 8 columns takes a 256-bit accumulator (half the work).
        let half = b + 8 <= bpad;
        match (bpad / 16, half) {
            (2, true) => times_x_half::<1, 12>(p, n, xp, y),
            (3, true) => times_x_half::<2, 8>(p, n, xp, y),
            (1, _) => times_x::<1, 16>(p, n, xp, y),
            (2, _) => times_x::<2, 10>(p, n, xp, y),
            (3, _) => times_x::<3, 7>(p, n, xp, y),
            _ => times_x_generic(p, rows, n, xp, y),
        }
    }
}

/// acc (b × n, row j = column j of Pᵀ·Y) += Pᵀ·Y for the panel `p` (rows × n bf16 words) and
/// Y (rows × b) in `y` as [`panel_times`] leaves it (row i at `y[i·bpad..]`, f32, bpad =
/// [`padded_cols`]`(b)`); Y is rounded to bf16 pairs in `ypair` (scratch). Must only be called
/// when [`available`].
pub fn panel_transpose_times(
    p: &[u16],
    rows: usize,
    n: usize,
    b: usize,
    y: &[f32],
    acc: &mut [f32],
    ypair: &mut Vec<u32>,
) {
    let bpad = padded_cols(b);
    assert!(p.len() >= rows * n && acc.len() >= b * n && y.len() >= rows * bpad);
    let rows2 = rows.div_ceil(2);
    ypair.resize(rows2 * b, 0);
    for i2 in 0..rows2 {
        for j in 0..b {
            let lo = bf16_bits(y[2 * i2 * bpad + j]);
            let hi = if 2 * i2 + 1 < rows {
                bf16_bits(y[(2 * i2 + 1) * bpad + j])
            } else {
                0
            };
            ypair[i2 * b + j] = lo | (hi << 16);
        }
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `available()`; all indices are within the asserted lengths.
    unsafe {
        transpose_times_y(Words { p, rows, n }, b, ypair, acc, &y[..rows * bpad]);
    }
}

/// A panel driver: `$rows::<NV, MR>` over every row of the panel, `MR` rows at a time, then
/// one at a time; `y` holds exactly rows × bpad.
macro_rules! panel_driver {
    ($(#[$doc:meta])* $name:ident, $rows:ident, $features:literal) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const NV: usize, const MR: usize>(
            p: &[u16],
            n: usize,
            xp: &PackedX,
            y: &mut [f32],
        ) {
            let rows = y.len() / xp.bpad;
            let mut i0 = 0;
            while i0 + MR <= rows {
                $rows::<NV, MR>(p, i0, n, xp, y);
                i0 += MR;
            }
            while i0 < rows {
                $rows::<NV, 1>(p, i0, n, xp, y);
                i0 += 1;
            }
        }
    };
}

panel_driver!(
    /// Y = P·X for every row of the panel, `MR` rows at a time; `y` holds exactly rows × bpad.
    times_x,
    rows_times_x,
    "avx512f,avx512bw,avx512bf16"
);
panel_driver!(
    /// [`times_x`] for blocks whose last 16-column strip has at most 8 live columns: `NV` full
    /// strips and one 8-column (256-bit) strip; the 8 padding columns of `y` are left unwritten.
    times_x_half,
    rows_times_x_half,
    "avx512f,avx512bw,avx512vl,avx512bf16"
);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn rows_times_x_half<const NV: usize, const MR: usize>(
    p: &[u16],
    i0: usize,
    n: usize,
    xp: &PackedX,
    y: &mut [f32],
) {
    let bpad = xp.bpad;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut acch = [_mm256_setzero_ps(); MR];
    let base = p.as_ptr();
    let xd = xp.data.as_ptr();
    // One pair of columns k2 of the MR rows, the row's word given by `$w(r)`.
    macro_rules! step {
        ($k2:expr, $w:expr) => {{
            let k2 = $k2;
            let mut xv = [_mm512_setzero_si512(); NV];
            for (v, slot) in xv.iter_mut().enumerate() {
                *slot = _mm512_loadu_si512(xd.add(k2 * bpad + 16 * v).cast());
            }
            let xh = bh256(_mm256_loadu_si256(xd.add(k2 * bpad + 16 * NV).cast()));
            for (r, (row, h)) in acc.iter_mut().zip(acch.iter_mut()).enumerate() {
                let wv = _mm512_set1_epi32($w(r) as i32);
                let bc = bh(wv);
                for (a, x) in row.iter_mut().zip(&xv) {
                    *a = _mm512_dpbf16_ps(*a, bc, bh(*x));
                }
                *h = _mm256_dpbf16_ps(*h, bh256(_mm512_castsi512_si256(wv)), xh);
            }
        }};
    }
    let full = n / 2;
    for k2 in 0..full {
        step!(k2, |r: usize| base
            .add((i0 + r) * n + 2 * k2)
            .cast::<u32>()
            .read_unaligned());
    }
    if full < xp.pairs {
        step!(full, |r: usize| pair_word(p, i0 + r, n, full));
    }
    for (r, (row, h)) in acc.iter().zip(&acch).enumerate() {
        for (v, a) in row.iter().enumerate() {
            _mm512_storeu_ps(y.as_mut_ptr().add((i0 + r) * bpad + 16 * v), *a);
        }
        _mm256_storeu_ps(y.as_mut_ptr().add((i0 + r) * bpad + 16 * NV), *h);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn times_x_generic(p: &[u16], rows: usize, n: usize, xp: &PackedX, y: &mut [f32]) {
    // Wide blocks: one 16-column strip at a time.
    let bpad = xp.bpad;
    for i in 0..rows {
        for v in 0..bpad / 16 {
            let mut acc = _mm512_setzero_ps();
            for k2 in 0..xp.pairs {
                let w = pair_word(p, i, n, k2);
                let xv = _mm512_loadu_si512(xp.data.as_ptr().add(k2 * bpad + 16 * v).cast());
                acc = _mm512_dpbf16_ps(acc, bh(_mm512_set1_epi32(w as i32)), bh(xv));
            }
            _mm512_storeu_ps(y.as_mut_ptr().add(i * bpad + 16 * v), acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: same size; any bit pattern is a valid bf16 vector.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bh256(v: __m256i) -> __m256bh {
    // SAFETY: same size; any bit pattern is a valid bf16 vector.
    unsafe { std::mem::transmute::<__m256i, __m256bh>(v) }
}

/// The 32-bit word of row i holding columns 2k2, 2k2+1 (the high half 0 past an odd end).
#[inline(always)]
fn pair_word(p: &[u16], i: usize, n: usize, k2: usize) -> u32 {
    let lo = u32::from(p[i * n + 2 * k2]);
    let hi = if 2 * k2 + 1 < n {
        u32::from(p[i * n + 2 * k2 + 1])
    } else {
        0
    };
    lo | (hi << 16)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn rows_times_x<const NV: usize, const MR: usize>(
    p: &[u16],
    i0: usize,
    n: usize,
    xp: &PackedX,
    y: &mut [f32],
) {
    let bpad = xp.bpad;
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let full = n / 2;
    let base = p.as_ptr();
    let xd = xp.data.as_ptr();
    for k2 in 0..full {
        let mut xv = [_mm512_setzero_si512(); NV];
        for (v, slot) in xv.iter_mut().enumerate() {
            *slot = _mm512_loadu_si512(xd.add(k2 * bpad + 16 * v).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let w = base
                .add((i0 + r) * n + 2 * k2)
                .cast::<u32>()
                .read_unaligned();
            let bc = bh(_mm512_set1_epi32(w as i32));
            for (a, x) in row.iter_mut().zip(&xv) {
                *a = _mm512_dpbf16_ps(*a, bc, bh(*x));
            }
        }
    }
    if full < xp.pairs {
        for (r, row) in acc.iter_mut().enumerate() {
            let bc = bh(_mm512_set1_epi32(pair_word(p, i0 + r, n, full) as i32));
            for (v, a) in row.iter_mut().enumerate() {
                let xv = _mm512_loadu_si512(xd.add(full * bpad + 16 * v).cast());
                *a = _mm512_dpbf16_ps(*a, bc, bh(xv));
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            _mm512_storeu_ps(y.as_mut_ptr().add((i0 + r) * bpad + 16 * v), *a);
        }
    }
}

/// A panel of bf16 words: `rows` × `n`, row-major, in `p`.
#[derive(Clone, Copy)]
struct Words<'a> {
    p: &'a [u16],
    rows: usize,
    n: usize,
}

/// acc[j·n + k] += Σᵢ P[i, k]·Y[i, j] with Y as bf16 row pairs; `yf` holds Y in f32
/// (`bpad` columns) for the scalar tail of k past the last multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn transpose_times_y(
    panel: Words<'_>,
    b: usize,
    ypair: &[u32],
    acc: &mut [f32],
    yf: &[f32],
) {
    let Words { p, rows, n } = panel;
    const JT: usize = 10;
    let n32 = n / 32 * 32;
    let mut k0 = 0;
    while k0 < n32 {
        let mut j0 = 0;
        while j0 + JT <= b {
            strip::<JT>(panel, b, ypair, acc, k0, j0);
            j0 += JT;
        }
        while j0 < b {
            strip::<1>(panel, b, ypair, acc, k0, j0);
            j0 += 1;
        }
        k0 += 32;
    }
    if n32 < n {
        let bpad = yf.len() / rows.max(1);
        for j in 0..b {
            for k in n32..n {
                let mut s = 0f32;
                for i in 0..rows {
                    let pv = f32::from_bits(u32::from(p[i * n + k]) << 16);
                    s += pv * yf[i * bpad + j];
                }
                acc[j * n + k] += s;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn strip<const JT: usize>(
    panel: Words<'_>,
    b: usize,
    ypair: &[u32],
    acc: &mut [f32],
    k0: usize,
    j0: usize,
) {
    let Words { p, rows, n } = panel;
    let mut lo = [_mm512_setzero_ps(); JT];
    let mut hi = [_mm512_setzero_ps(); JT];
    let base = p.as_ptr();
    let yp = ypair.as_ptr();
    let rows2 = rows.div_ceil(2);
    for i2 in 0..rows2 {
        let a = _mm512_loadu_si512(base.add(2 * i2 * n + k0).cast());
        let c = if 2 * i2 + 1 < rows {
            _mm512_loadu_si512(base.add((2 * i2 + 1) * n + k0).cast())
        } else {
            _mm512_setzero_si512()
        };
        let pl = bh(_mm512_unpacklo_epi16(a, c));
        let ph = bh(_mm512_unpackhi_epi16(a, c));
        for (t, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            let yb = bh(_mm512_set1_epi32(*yp.add(i2 * b + j0 + t) as i32));
            *l = _mm512_dpbf16_ps(*l, pl, yb);
            *h = _mm512_dpbf16_ps(*h, ph, yb);
        }
    }
    // lo lane 4L+t holds k0+8L+t, hi lane 4L+t holds k0+8L+4+t.
    let i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (t, (l, h)) in lo.iter().zip(&hi).enumerate() {
        let dst = acc.as_mut_ptr().add((j0 + t) * n + k0);
        let a0 = _mm512_permutex2var_ps(*l, i0, *h);
        let a1 = _mm512_permutex2var_ps(*l, i1, *h);
        _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), a0));
        _mm512_storeu_ps(dst.add(16), _mm512_add_ps(_mm512_loadu_ps(dst.add(16)), a1));
    }
}

#[cfg(test)]
pub(in crate::spectral) mod tests {
    use super::*;

    /// Panel shapes (rows, n, b) the kernels' tests run on: partial register tiles, odd n,
    /// blocks of 1–5 vectors (the f32 kernels' test adds its own).
    pub(in crate::spectral) const PANEL_SHAPES: [(usize, usize, usize); 7] = [
        (7, 70, 40),
        (16, 64, 40),
        (9, 33, 5),
        (12, 96, 20),
        (5, 40, 70),
        (19, 66, 24),
        (13, 50, 36),
    ];

    #[test]
    fn panel_pass_matches_f64_on_bf16_rounded_operands() {
        if !available() {
            eprintln!("no AVX-512 BF16: skipped");
            return;
        }
        for (rows, n, b) in PANEL_SHAPES {
            let mut uniform = super::super::test_uniform(1);
            let mut rnd = || uniform() as f32;
            let p: Vec<u16> = (0..rows * n)
                .map(|_| half::bf16::from_f32(rnd()).to_bits())
                .collect();
            let x: Vec<f32> = (0..n * b).map(|_| rnd()).collect();
            let xp = PackedX::new(n, b, |k, j| x[k * b + j]);
            let mut acc = vec![0f32; b * n];
            let (mut y, mut yp) = (Vec::new(), Vec::new());
            panel_pass(&p, rows, n, b, &xp, &mut acc, &mut y, &mut yp);
            let pf = |i: usize, k: usize| f64::from(half::bf16::from_bits(p[i * n + k]).to_f32());
            let r = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
            let mut worst = 0f64;
            for j in 0..b {
                let yj: Vec<f64> = (0..rows)
                    .map(|i| (0..n).map(|k| pf(i, k) * r(x[k * b + j])).sum())
                    .collect();
                for k in 0..n {
                    let want: f64 = (0..rows).map(|i| pf(i, k) * r(yj[i] as f32)).sum();
                    let scale: f64 = (0..rows).map(|i| (pf(i, k) * yj[i]).abs()).sum();
                    let err = (f64::from(acc[j * n + k]) - want).abs() / scale.max(1e-30);
                    worst = worst.max(err);
                }
            }
            assert!(worst < 5e-3, "{rows}x{n} b={b}: {worst}");
        }
    }
}
