//! Streaming access to one weight matrix stored row-major in safetensors shards.
//!
//! A [`MatrixSource`] is a stack of row segments (one per stored tensor or expert slice; a
//! runtime matrix that transformers fuses from several stored tensors, e.g. an expert's
//! `gate_proj` and `up_proj`, is their row concatenation). Data is read with positioned reads
//! from a file or from bytes already in memory ([`ByteSource`]) into a byte buffer and decoded
//! into an `f32` working panel; nothing ever holds a full decoded copy of the matrix.
//!
//! A delta source (ΔW = W − W_base: a fine-tune against its base, [`MatrixSource::minus`])
//! reads the same panel of both matrices and subtracts, panel by panel: the update's spectrum
//! streams from the two files like a single matrix's, with one extra decoded panel of memory.

use std::path::Path;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::dtype::{decode_into, Dtype};
use crate::error::Result;
use crate::io::ByteSource;
use crate::quant::Dequant;

/// A contiguous run of `rows` full rows starting at byte `offset` of a shard.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub bytes: ByteSource<'a>,
    pub path: &'a Path,
    pub offset: u64,
    pub rows: usize,
}

/// A block of consecutive rows inside one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panel {
    pub segment: usize,
    /// First row inside the segment.
    pub row0: usize,
    pub rows: usize,
}

/// Running sum of squares (f64) and count of NaN/Inf elements over decoded data.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ElementStats {
    pub sum_sq: f64,
    pub nonfinite: u64,
}

impl ElementStats {
    /// Add the elements of `v`: squares are summed in f32 (16 lanes) over runs of 64 elements (exact
    /// enough for a 2⁻²⁴ relative error per run) and the runs in f64. A run of finite values
    /// whose f32 sum overflows (|x| ≳ 1.8e19, e.g. a corrupted bf16 file) is summed again in
    /// f64, so the Frobenius norm is never a silent infinity.
    pub fn add(&mut self, v: &[f32]) {
        self.add_converted(v, |x| x);
    }

    /// [`ElementStats::add`] on bf16 words (no decoded copy needed): the same runs and sums.
    pub fn add_bf16(&mut self, words: &[u16]) {
        self.add_converted(words, |w| f32::from_bits(u32::from(w) << 16));
    }

    /// [`ElementStats::add`] of `x(e)` for the elements `e` of `v`, with the widest vectors
    /// this CPU has: the same code compiled for AVX-512F or AVX2 (Rust never reassociates or
    /// fuses float operations, so every width gives the same bits).
    #[inline(always)]
    fn add_converted<T: Copy>(&mut self, v: &[T], x: impl Fn(T) -> f32 + Copy) {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                unsafe { self.add_avx512(v, x) };
                return;
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { self.add_avx2(v, x) };
                return;
            }
        }
        self.add_runs(v, x);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn add_avx512<T: Copy>(&mut self, v: &[T], x: impl Fn(T) -> f32 + Copy) {
        self.add_runs(v, x);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_avx2<T: Copy>(&mut self, v: &[T], x: impl Fn(T) -> f32 + Copy) {
        self.add_runs(v, x);
    }

    #[inline(always)]
    fn add_runs<T: Copy>(&mut self, v: &[T], x: impl Fn(T) -> f32 + Copy) {
        for run in v.chunks(64) {
            self.add_run(run, x);
        }
    }

    /// One run of at most 64 elements: squares summed in 16 f32 lanes (element `c + l` of the
    /// run into lane `l`, in order), whole 16-element chunks as arrays so that the loop has
    /// no bounds checks and vectorizes.
    #[inline(always)]
    fn add_run<T: Copy>(&mut self, run: &[T], x: impl Fn(T) -> f32) {
        let mut lanes = [0f32; 16];
        let mut bad = [0u32; 16];
        let mut chunks = run.chunks_exact(16);
        for chunk in &mut chunks {
            let chunk: &[T; 16] = chunk.try_into().expect("chunks of 16");
            for l in 0..16 {
                let v = x(chunk[l]);
                lanes[l] += v * v;
                bad[l] += u32::from(!v.is_finite());
            }
        }
        for (l, &e) in chunks.remainder().iter().enumerate() {
            let v = x(e);
            lanes[l] += v * v;
            bad[l] += u32::from(!v.is_finite());
        }
        let s: f32 = lanes.iter().sum();
        let bad: u32 = bad.iter().sum();
        self.sum_sq += if s.is_finite() || bad > 0 {
            f64::from(s)
        } else {
            run.iter()
                .map(|&e| {
                    let v = f64::from(x(e));
                    v * v
                })
                .sum()
        };
        self.nonfinite += u64::from(bad);
    }

    pub fn merge(&mut self, other: ElementStats) {
        self.sum_sq += other.sum_sq;
        self.nonfinite += other.nonfinite;
    }
}

/// A reusable, 8-byte aligned read buffer, so that 16-bit data can be decoded as `u16` words
/// (vectorized; F16 through the CPU's F16C instructions when present).
#[derive(Debug, Default)]
pub struct Scratch {
    words: Vec<u64>,
    /// The subtracted matrix's decoded panel, for a delta source.
    minus: Vec<f32>,
    /// The subtracted matrix's stored bytes, for a delta of two bf16 matrices.
    minus_words: Vec<u64>,
}

impl Scratch {
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        self.words.resize(len.div_ceil(8), 0);
        // SAFETY: any u64 storage is valid as bytes; the length is within the allocation.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.words.len() * 8);
        // SAFETY: as above, read-only.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), len) }
    }

    fn halves(&self, n: usize) -> &[u16] {
        assert!(n <= self.words.len() * 4);
        // SAFETY: u64 storage is 2-byte aligned and any bit pattern is a valid u16.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u16>(), n) }
    }

    /// Decode the first `out.len()` elements of `dtype` held in the buffer.
    fn decode(&self, dtype: Dtype, out: &mut [f32]) {
        let size = dtype.byte_size().unwrap_or(1);
        decode_bytes(dtype, self.bytes(out.len() * size), out);
    }
}

/// `bytes` as native 16-bit words, when they are 2-byte aligned (little-endian only).
fn as_words(bytes: &[u8]) -> Option<&[u16]> {
    if !cfg!(target_endian = "little") || bytes.as_ptr().align_offset(2) != 0 {
        return None;
    }
    // SAFETY: the pointer is 2-byte aligned (checked), the length is within `bytes`, and any
    // bit pattern is a valid u16.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u16>(), bytes.len() / 2) })
}

/// Decode `out.len()` elements of `dtype` from `bytes`: 16-bit floats through the fast
/// paths when the bytes are aligned words, anything else through [`decode_into`].
fn decode_bytes(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match (dtype, as_words(bytes)) {
        (Dtype::BF16, Some(words)) => bf16_to_f32(&words[..n], out),
        (Dtype::F16, Some(words)) => {
            let h: &[f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(&words[..n]);
            h.convert_to_f32_slice(out);
        }
        _ => decode_into(dtype, &bytes[..n * dtype.byte_size().unwrap_or(1)], out),
    }
}

/// bf16 words to f32 (exact: a shift), with the widest vectors this CPU has.
fn bf16_to_f32(words: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { bf16_to_f32_avx2(words, out) };
        return;
    }
    bf16_to_f32_scalar(words, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_to_f32_avx2(words: &[u16], out: &mut [f32]) {
    bf16_to_f32_scalar(words, out);
}

#[inline(always)]
fn bf16_to_f32_scalar(words: &[u16], out: &mut [f32]) {
    for (o, &h) in out.iter_mut().zip(words) {
        *o = f32::from_bits(u32::from(h) << 16);
    }
}

/// `a − b` of bf16 words into `out` (f32, exact decode then one rounding of the difference),
/// with the widest vectors this CPU has.
fn bf16_difference(a: &[u16], b: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { bf16_difference_avx2(a, b, out) };
        return;
    }
    bf16_difference_scalar(a, b, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_difference_avx2(a: &[u16], b: &[u16], out: &mut [f32]) {
    bf16_difference_scalar(a, b, out);
}

#[inline(always)]
fn bf16_difference_scalar(a: &[u16], b: &[u16], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f32::from_bits(u32::from(x) << 16) - f32::from_bits(u32::from(y) << 16);
    }
}

/// One 2-D matrix (`rows` × `cols`, row-major) of one decodable dtype, possibly made of
/// several row segments.
#[derive(Debug, Clone)]
pub struct MatrixSource<'a> {
    pub segments: Vec<Segment<'a>>,
    pub cols: usize,
    pub dtype: Dtype,
    /// Bytes per element.
    esize: usize,
    /// One per segment for a quantized matrix (rows and cols are then the logical ones),
    /// else empty.
    dequant: Vec<Dequant>,
    /// For a delta, the matrix subtracted from this one (same rows, columns and segment rows).
    minus: Option<Box<MatrixSource<'a>>>,
}

impl<'a> MatrixSource<'a> {
    /// `dtype` must be [`Dtype::is_decodable_float`] (checked by the caller, who knows the
    /// tensor's name for the error message).
    pub fn new(segments: Vec<Segment<'a>>, cols: usize, dtype: Dtype) -> Self {
        debug_assert!(dtype.is_decodable_float());
        let esize = dtype.byte_size().expect("decodable dtypes are byte-sized");
        MatrixSource {
            segments,
            cols,
            dtype,
            esize,
            dequant: Vec::new(),
            minus: None,
        }
    }

    /// A quantized matrix: segment `i` is dequantized by `dequant[i]` (see [`crate::quant`]).
    pub fn quantized(
        segments: Vec<Segment<'a>>,
        cols: usize,
        dtype: Dtype,
        dequant: Vec<Dequant>,
    ) -> Self {
        assert_eq!(segments.len(), dequant.len());
        MatrixSource {
            segments,
            cols,
            dtype,
            esize: 1,
            dequant,
            minus: None,
        }
    }

    /// The delta `self − base`, read panel by panel from both (ΔW = W_ft − W_base). `base`
    /// must have the same columns and the same rows in every segment (checked by the caller,
    /// who names the tensors in the message); either side may be quantized.
    pub fn minus(mut self, base: MatrixSource<'a>) -> Self {
        assert_eq!(
            self.cols, base.cols,
            "a delta's matrices have the same columns"
        );
        let rows = |s: &MatrixSource<'_>| s.segments.iter().map(|g| g.rows).collect::<Vec<_>>();
        assert_eq!(
            rows(&self),
            rows(&base),
            "a delta's matrices have the same segments"
        );
        self.minus = Some(Box::new(base));
        self
    }

    /// Whether the matrix is quantized (decoded by [`Dequant`] while streaming).
    pub fn is_quantized(&self) -> bool {
        !self.dequant.is_empty()
    }

    /// Whether the matrix is a delta of two stored matrices ([`MatrixSource::minus`]).
    pub fn is_delta(&self) -> bool {
        self.minus.is_some()
    }

    /// Whether the values are computed from the stored bytes (dequantized or subtracted), so
    /// that no stored word is the value itself: passes read them through
    /// [`MatrixSource::read_panel_as_bf16`] and they are never held as stored bytes.
    pub fn is_computed(&self) -> bool {
        self.is_quantized() || self.is_delta()
    }

    /// The subtracted matrix of a delta.
    pub fn base(&self) -> Option<&MatrixSource<'a>> {
        self.minus.as_deref()
    }

    /// Total number of rows.
    pub fn rows(&self) -> usize {
        self.segments.iter().map(|s| s.rows).sum()
    }

    /// Number of stored bytes (of both matrices, for a delta).
    pub fn nbytes(&self) -> u64 {
        self.own_nbytes() + self.minus.as_ref().map_or(0, |m| m.nbytes())
    }

    /// Number of stored bytes of this matrix alone.
    pub(crate) fn own_nbytes(&self) -> u64 {
        if self.dequant.is_empty() {
            return (self.rows() * self.cols * self.esize) as u64;
        }
        let seg_bytes = |(s, d): (&Segment<'_>, &Dequant)| s.rows.div_ceil(d.pack) * d.row_bytes;
        self.segments
            .iter()
            .zip(&self.dequant)
            .map(seg_bytes)
            .sum::<usize>() as u64
    }

    /// Split the rows into panels of at most `panel_rows` rows (panels never straddle two
    /// segments).
    pub fn panels(&self, panel_rows: usize) -> Vec<Panel> {
        let mut out = Vec::new();
        for (segment, seg) in self.segments.iter().enumerate() {
            // Quantized panels start on a stored row (GPTQ packs several logical rows in one),
            // of both matrices for a delta.
            let pack = self.row_pack(segment);
            let r = panel_rows.max(1).next_multiple_of(pack);
            let mut row0 = 0;
            while row0 < seg.rows {
                let rows = r.min(seg.rows - row0);
                out.push(Panel {
                    segment,
                    row0,
                    rows,
                });
                row0 += rows;
            }
        }
        out
    }

    /// Logical rows per stored row in `segment` (1 but for packed quantized formats); for a
    /// delta, the least common multiple of both matrices'.
    fn row_pack(&self, segment: usize) -> usize {
        let own = self.dequant.get(segment).map_or(1, |d| d.pack);
        match &self.minus {
            Some(m) => {
                let other = m.row_pack(segment);
                let gcd = |mut a: usize, mut b: usize| {
                    while b != 0 {
                        (a, b) = (b, a % b);
                    }
                    a
                };
                own / gcd(own, other) * other
            }
            None => own,
        }
    }

    /// Read `panel` and decode it row-major into `out[..rows * cols]` (for a delta, this
    /// matrix's panel minus the base's), adding its elements to `stats` when given. `scratch`
    /// is a reusable buffer.
    pub fn read_panel(
        &self,
        panel: Panel,
        scratch: &mut Scratch,
        out: &mut [f32],
        stats: Option<&mut ElementStats>,
    ) -> Result<()> {
        let out = &mut out[..panel.rows * self.cols];
        if let Some(base) = self.minus.as_deref().filter(|b| b.is_plain_bf16()) {
            if self.is_plain_bf16() {
                // Both bf16: one fused loop from the two panels' words to the difference (the
                // same values as decoding both and subtracting).
                let Scratch {
                    words, minus_words, ..
                } = scratch;
                let ours = self.panel_bytes_in(panel, words)?;
                let theirs = base.panel_bytes_in(panel, minus_words)?;
                if let (Some(a), Some(b)) = (as_words(ours), as_words(theirs)) {
                    bf16_difference(&a[..out.len()], &b[..out.len()], out);
                    if let Some(s) = stats {
                        s.add(out);
                    }
                    return Ok(());
                }
            }
        }
        self.read_own_panel(panel, scratch, out)?;
        if let Some(base) = &self.minus {
            let mut theirs = std::mem::take(&mut scratch.minus);
            theirs.resize(out.len(), 0.0);
            let read = base.read_panel(panel, scratch, &mut theirs, None);
            for (o, t) in out.iter_mut().zip(&theirs) {
                *o -= t;
            }
            scratch.minus = theirs;
            read?;
        }
        if let Some(s) = stats {
            s.add(out);
        }
        Ok(())
    }

    /// [`MatrixSource::read_panel`] of this matrix alone (no delta, no statistics).
    fn read_own_panel(&self, panel: Panel, scratch: &mut Scratch, out: &mut [f32]) -> Result<()> {
        let seg = &self.segments[panel.segment];
        if let Some(d) = self.dequant.get(panel.segment) {
            let len = panel.rows.div_ceil(d.pack) * d.row_bytes;
            let offset = seg.offset + ((panel.row0 / d.pack) * d.row_bytes) as u64;
            seg.bytes
                .read_exact_at(scratch.bytes_mut(len), offset, seg.path)?;
            d.decode(scratch.bytes(len), panel.row0, panel.rows, out);
            return Ok(());
        }
        let bytes = self.panel_bytes(panel, scratch)?;
        decode_bytes(self.dtype, bytes, out);
        Ok(())
    }

    /// The stored bytes of `panel` of a matrix that is not quantized: a slice of the bytes
    /// held in memory (no copy), or read from the file into `scratch`.
    fn panel_bytes<'s>(&'s self, panel: Panel, scratch: &'s mut Scratch) -> Result<&'s [u8]> {
        self.panel_bytes_in(panel, &mut scratch.words)
    }

    /// [`MatrixSource::panel_bytes`] read into `words` when not held in memory.
    fn panel_bytes_in<'s>(&'s self, panel: Panel, words: &'s mut Vec<u64>) -> Result<&'s [u8]> {
        let seg = &self.segments[panel.segment];
        let (len, offset) = self.panel_range(panel);
        if let Some(held) = seg.bytes.held(len, offset, seg.path)? {
            return Ok(held);
        }
        words.resize(len.div_ceil(8), 0);
        // SAFETY: any u64 storage is valid as bytes; the length is within the allocation.
        let buf = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
        seg.bytes.read_exact_at(buf, offset, seg.path)?;
        Ok(buf)
    }

    /// Whether the matrix is stored bf16, neither quantized nor a delta.
    fn is_plain_bf16(&self) -> bool {
        self.dtype == Dtype::BF16 && !self.is_computed() && cfg!(target_endian = "little")
    }

    /// (length, shard offset) of the stored bytes of `panel` of a matrix that is not quantized.
    fn panel_range(&self, panel: Panel) -> (usize, u64) {
        let row_bytes = self.cols * self.esize;
        let offset = self.segments[panel.segment].offset + (panel.row0 * row_bytes) as u64;
        (panel.rows * row_bytes, offset)
    }

    /// Read `panel` of a BF16 matrix and return its stored words (row-major), without
    /// decoding, and without a copy when the bytes are held in memory (2-byte aligned);
    /// `stats` (when given) gets its elements straight from the words.
    pub fn read_panel_bf16<'s>(
        &'s self,
        panel: Panel,
        scratch: &'s mut Scratch,
        stats: Option<&mut ElementStats>,
    ) -> Result<&'s [u16]> {
        debug_assert!(
            self.dtype == Dtype::BF16 && !self.is_computed() && cfg!(target_endian = "little")
        );
        let seg = &self.segments[panel.segment];
        let n = panel.rows * self.cols;
        let (len, offset) = self.panel_range(panel);
        let words = match seg.bytes.held(len, offset, seg.path)? {
            Some(held) => match as_words(held) {
                Some(words) => words,
                None => {
                    // Held at an odd address: copied into the aligned scratch.
                    scratch.bytes_mut(len).copy_from_slice(held);
                    scratch.halves(n)
                }
            },
            None => {
                seg.bytes
                    .read_exact_at(scratch.bytes_mut(len), offset, seg.path)?;
                scratch.halves(n)
            }
        };
        if let Some(s) = stats {
            s.add_bf16(words);
        }
        Ok(words)
    }

    /// Read `panel` of a quantized matrix or a delta, compute its values exactly into
    /// `decoded` (f32; `stats` get these values) and return them rounded to bf16 words (round
    /// to nearest even, relative error ≤ 2⁻⁹ per element) for the bf16 kernels.
    pub fn read_panel_as_bf16<'w>(
        &self,
        panel: Panel,
        scratch: &mut Scratch,
        decoded: &mut Vec<f32>,
        words: &'w mut Vec<u16>,
        stats: Option<&mut ElementStats>,
    ) -> Result<&'w [u16]> {
        debug_assert!(self.is_computed());
        let n = panel.rows * self.cols;
        decoded.resize(n, 0.0);
        self.read_panel(panel, scratch, decoded, stats)?;
        words.resize(n, 0);
        let w: &mut [half::bf16] =
            half::slice::HalfBitsSliceExt::reinterpret_cast_mut(&mut words[..]);
        w.convert_from_f32_slice(decoded);
        Ok(&words[..n])
    }

    /// Read columns `c0..c1` of every row and decode them row-major into
    /// `out[..rows * (c1 - c0)]` (one positioned read per row); for a delta, this matrix's
    /// columns minus the base's.
    pub fn read_columns(
        &self,
        c0: usize,
        c1: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
        stats: Option<&mut ElementStats>,
    ) -> Result<()> {
        let Some(base) = &self.minus else {
            return self.read_own_columns(c0, c1, scratch, out, stats);
        };
        let width = c1 - c0;
        let out = &mut out[..self.rows() * width];
        self.read_own_columns(c0, c1, scratch, out, None)?;
        let mut theirs = std::mem::take(&mut scratch.minus);
        theirs.resize(out.len(), 0.0);
        let read = base.read_columns(c0, c1, scratch, &mut theirs, None);
        for (o, t) in out.iter_mut().zip(&theirs) {
            *o -= t;
        }
        scratch.minus = theirs;
        read?;
        if let Some(s) = stats {
            // Row by row, as a plain matrix's columns are added.
            for row in out.chunks(width.max(1)) {
                s.add(row);
            }
        }
        Ok(())
    }

    /// [`MatrixSource::read_columns`] of this matrix alone.
    fn read_own_columns(
        &self,
        c0: usize,
        c1: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
        mut stats: Option<&mut ElementStats>,
    ) -> Result<()> {
        let width = c1 - c0;
        if !self.dequant.is_empty() {
            return self.read_quantized_columns(c0..c1, scratch, out, stats);
        }
        let row_bytes = self.cols * self.esize;
        let len = width * self.esize;
        let mut row = 0;
        for seg in &self.segments {
            for r in 0..seg.rows {
                let offset = seg.offset + (r * row_bytes + c0 * self.esize) as u64;
                seg.bytes
                    .read_exact_at(scratch.bytes_mut(len), offset, seg.path)?;
                let dst = &mut out[row * width..(row + 1) * width];
                scratch.decode(self.dtype, dst);
                if let Some(s) = stats.as_deref_mut() {
                    s.add(dst);
                }
                row += 1;
            }
        }
        Ok(())
    }

    /// [`MatrixSource::read_columns`] of a quantized matrix: whole stored rows are read and
    /// dequantized a few at a time, and the columns kept (packed words span columns).
    fn read_quantized_columns(
        &self,
        columns: std::ops::Range<usize>,
        scratch: &mut Scratch,
        out: &mut [f32],
        mut stats: Option<&mut ElementStats>,
    ) -> Result<()> {
        let (c0, c1, width) = (columns.start, columns.end, columns.len());
        let rows = (super::PANEL_ELEMENTS / self.cols.max(1)).max(1);
        let mut full = vec![0f32; rows.next_multiple_of(32) * self.cols];
        let mut row = 0;
        for p in self.panels(rows) {
            self.read_own_panel(p, scratch, &mut full[..p.rows * self.cols])?;
            for r in 0..p.rows {
                let dst = &mut out[(row + r) * width..(row + r + 1) * width];
                dst.copy_from_slice(&full[r * self.cols + c0..r * self.cols + c1]);
                if let Some(s) = stats.as_deref_mut() {
                    s.add(dst);
                }
            }
            row += p.rows;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn element_stats_are_the_same_bits_at_every_vector_width() {
        // Random bf16 words: all exponents, so runs that overflow f32 (summed again in f64),
        // NaN and Inf words among them.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let words: Vec<u16> = (0..2000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 48) as u16
            })
            .collect();
        let small: Vec<u16> = words.iter().map(|&w| w & 0x3fff).collect(); // |x| < 2
        for w in [&words, &small] {
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 130, 2000] {
                let w = &w[..len];
                let f: Vec<f32> = w
                    .iter()
                    .map(|&h| half::bf16::from_bits(h).to_f32())
                    .collect();
                let (mut dispatched, mut words, mut baseline) = (
                    ElementStats::default(),
                    ElementStats::default(),
                    ElementStats::default(),
                );
                dispatched.add(&f);
                words.add_bf16(w);
                baseline.add_runs(&f, |x| x);
                for other in [words, baseline] {
                    assert_eq!(dispatched.sum_sq.to_bits(), other.sum_sq.to_bits(), "{len}");
                    assert_eq!(dispatched.nonfinite, other.nonfinite, "{len}");
                }
                let bad = f.iter().filter(|v| !v.is_finite()).count() as u64;
                assert_eq!(dispatched.nonfinite, bad);
                if bad == 0 {
                    let want: f64 = f.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    let err = (dispatched.sum_sq - want).abs() / want.max(f64::MIN_POSITIVE);
                    assert!(err < 1e-5, "len {len}: {} vs {want}", dispatched.sum_sq);
                }
            }
        }
    }

    #[test]
    fn huge_finite_values_do_not_overflow_the_sum_of_squares() {
        let mut stats = ElementStats::default();
        stats.add(&[3.0e19f32; 100]);
        assert_eq!(stats.nonfinite, 0);
        let expect = 100.0 * 3.0e19f64 * 3.0e19f64;
        assert!(stats.sum_sq.is_finite());
        assert!((stats.sum_sq - expect).abs() / expect < 1e-6);
    }

    use super::*;
    use std::io::Write;

    #[test]
    fn panels_and_columns_read_back_what_was_written() {
        // Two segments of a 5 x 3 f32 matrix: rows 0..2 at byte 4, rows 2..5 at byte 100.
        let vals: Vec<f32> = (0..15).map(|i| i as f32 - 3.5).collect();
        let mut raw = vec![0u8; 200];
        for (i, v) in vals[..6].iter().enumerate() {
            raw[4 + 4 * i..8 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        for (i, v) in vals[6..].iter().enumerate() {
            raw[100 + 4 * i..104 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&raw).unwrap();
        let file = f.reopen().unwrap();
        let path = f.path().to_path_buf();
        let src = MatrixSource::new(
            vec![
                Segment {
                    bytes: ByteSource::File(&file),
                    path: &path,
                    offset: 4,
                    rows: 2,
                },
                Segment {
                    bytes: ByteSource::File(&file),
                    path: &path,
                    offset: 100,
                    rows: 3,
                },
            ],
            3,
            Dtype::F32,
        );
        assert_eq!(src.rows(), 5);
        let panels = src.panels(2);
        assert_eq!(panels.len(), 3);
        let mut bytes = Scratch::default();
        let mut out = vec![0f32; 6];
        let mut all = Vec::new();
        let mut stats = ElementStats::default();
        for p in panels {
            src.read_panel(p, &mut bytes, &mut out, Some(&mut stats))
                .unwrap();
            all.extend_from_slice(&out[..p.rows * 3]);
        }
        assert_eq!(all, vals);
        let expect: f64 = vals.iter().map(|v| f64::from(v * v)).sum();
        assert!((stats.sum_sq - expect).abs() < 1e-9);
        let mut cols = vec![0f32; 10];
        src.read_columns(1, 3, &mut bytes, &mut cols, None).unwrap();
        let expect_cols: Vec<f32> = (0..5)
            .flat_map(|r| [vals[3 * r + 1], vals[3 * r + 2]])
            .collect();
        assert_eq!(cols, expect_cols);
    }

    #[test]
    fn panels_held_in_memory_read_as_from_the_file_at_any_alignment() {
        // A 4 × 5 matrix of 16-bit floats at byte 6 of a shard, read from the file and from
        // copies of the shard held at an even and at an odd address.
        let (rows, cols) = (4, 5);
        let vals: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 2.0).collect();
        for dtype in [Dtype::BF16, Dtype::F16] {
            let mut raw = vec![0u8; 6];
            for v in &vals {
                raw.extend_from_slice(&match dtype {
                    Dtype::BF16 => half::bf16::from_f32(*v).to_le_bytes(),
                    _ => f16::from_f32(*v).to_le_bytes(),
                });
            }
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&raw).unwrap();
            let file = f.reopen().unwrap();
            let path = f.path().to_path_buf();
            let mut held = vec![0u8; raw.len() + 1];
            let read = |bytes: ByteSource<'_>| {
                let seg = Segment {
                    bytes,
                    path: &path,
                    offset: 6,
                    rows,
                };
                let src = MatrixSource::new(vec![seg], cols, dtype);
                let (mut scratch, mut out) = (Scratch::default(), vec![0f32; rows * cols]);
                let mut words = Vec::new();
                for p in src.panels(3) {
                    let at = p.row0 * cols;
                    src.read_panel(p, &mut scratch, &mut out[at..], None)
                        .unwrap();
                    if dtype == Dtype::BF16 {
                        words
                            .extend_from_slice(src.read_panel_bf16(p, &mut scratch, None).unwrap());
                    }
                }
                (out, words)
            };
            let from_file = read(ByteSource::File(&file));
            assert_eq!(from_file.0, vals, "{dtype:?}");
            for shift in [0, 1] {
                held[shift..shift + raw.len()].copy_from_slice(&raw);
                let data = &held[shift..shift + raw.len()];
                let from_memory = read(ByteSource::Memory { start: 0, data });
                assert_eq!(from_memory, from_file, "{dtype:?}, shifted by {shift}");
            }
        }
    }

    #[test]
    fn a_bf16_delta_reads_the_difference_of_the_decoded_values() {
        // W_ft and W_base bf16, held at an even address (the fused word loop) and at an odd
        // one (decode both, subtract): the same bits, and those of the f32 difference.
        let (rows, cols) = (5, 7);
        let mut u = super::super::test_uniform(3);
        let words = |u: &mut dyn FnMut() -> f64| -> Vec<u16> {
            (0..rows * cols)
                .map(|_| half::bf16::from_f64(u()).to_bits())
                .collect()
        };
        let (ft, base) = (words(&mut u), words(&mut u));
        let want: Vec<f32> = ft
            .iter()
            .zip(&base)
            .map(|(&a, &b)| half::bf16::from_bits(a).to_f32() - half::bf16::from_bits(b).to_f32())
            .collect();
        let bytes = |w: &[u16]| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let path = std::path::PathBuf::from("mem");
        for shift in [0, 1] {
            let mut held = vec![0u8; 2 * rows * cols * 2 + 1];
            let n = rows * cols * 2;
            held[shift..shift + n].copy_from_slice(&bytes(&ft));
            held[shift + n..shift + 2 * n].copy_from_slice(&bytes(&base));
            let seg = |start: usize| Segment {
                bytes: ByteSource::Memory {
                    start: 0,
                    data: &held[start..start + n],
                },
                path: &path,
                offset: 0,
                rows,
            };
            let src = MatrixSource::new(vec![seg(shift)], cols, Dtype::BF16)
                .minus(MatrixSource::new(vec![seg(shift + n)], cols, Dtype::BF16));
            let (mut scratch, mut out) = (Scratch::default(), vec![0f32; rows * cols]);
            let mut stats = ElementStats::default();
            for p in src.panels(2) {
                let at = p.row0 * cols;
                src.read_panel(p, &mut scratch, &mut out[at..], Some(&mut stats))
                    .unwrap();
            }
            let same = out
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "shift {shift}: {out:?} vs {want:?}");
            let sq: f64 = want.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            assert!((stats.sum_sq - sq).abs() <= 1e-6 * sq, "shift {shift}");
        }
    }

    #[test]
    fn counts_nonfinite() {
        let mut s = ElementStats::default();
        s.add(&[1.0, f32::NAN, f32::INFINITY, -2.0]);
        assert_eq!(s.nonfinite, 2);
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn fast_paths_match_the_reference_decoder() {
        let vals = [1.5f32, -2.0, 0.1, 65504.0, -1e-5, f32::INFINITY, 3.0e38];
        for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32, Dtype::F8_E4M3] {
            let size = dtype.byte_size().unwrap();
            let bytes: Vec<u8> = vals
                .iter()
                .flat_map(|&v| match dtype {
                    Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                    Dtype::F16 => f16::from_f32(v).to_le_bytes().to_vec(),
                    Dtype::F32 => v.to_le_bytes().to_vec(),
                    _ => vec![(v.to_bits() >> 24) as u8],
                })
                .collect();
            let mut scratch = Scratch::default();
            scratch.bytes_mut(bytes.len()).copy_from_slice(&bytes);
            let mut fast = vec![0f32; vals.len()];
            scratch.decode(dtype, &mut fast);
            let mut reference = vec![0f32; vals.len()];
            decode_into(dtype, &bytes[..vals.len() * size], &mut reference);
            for (a, b) in fast.iter().zip(&reference) {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{dtype:?}"
                );
            }
        }
    }
}
