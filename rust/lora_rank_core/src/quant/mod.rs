//! Dequantization of quantized linear weights, panel by panel, while streaming.
//!
//! A quantized weight is read in its stored layout and turned into `f32` rows of its *logical*
//! matrix; the auxiliary tensors (scales, zero points, `g_idx`) are small (1/128 of the
//! weight or less) and are read whole once per matrix. Never a full dequantized copy.
//!
//! Formats (the logical matrix streamed is given per format; singular values do not depend
//! on the orientation):
//! - [`Format::Fp8Block`] (DeepSeek-V3 / transformers `FineGrainedFP8`): `weight` F8_E4M3 or
//!   F8_E5M2 `[out, in]`, `weight_scale_inv` F32/BF16/F16 `[⌈out/b₀⌉, ⌈in/b₁⌉]`;
//!   W\[i, j\] = w\[i, j\] · s\[i / b₀, j / b₁\] (partial last blocks allowed). Streamed as
//!   `[out, in]`.
//! - [`Format::Gptq`]: `qweight` I32 `[in·bits/32, out]` (32/bits values per word along the
//!   input dim, lowest bits first), `qzeros` I32 `[groups, out·bits/32]` (packed along out),
//!   `scales` F16 `[groups, out]`, optional `g_idx` I32 `[in]` (act-order);
//!   W\[j, i\] = s\[g, j\] · (q\[i, j\] − (z\[g, j\] + zero_offset)) with g = g_idx\[i\] or
//!   i / group. `zero_offset` is 1 for GPTQ v1 checkpoints (they store z − 1), 0 for v2.
//!   Streamed as Wᵀ `[in, out]`.
//! - [`Format::Awq`] (AutoAWQ GEMM): `qweight` I32 `[in, out/8]`, `qzeros` I32
//!   `[groups, out/8]`, `scales` F16 `[groups, out]`; nibble n of a word holds column
//!   8k + [`AWQ_ORDER`]\[n\]; W\[j, i\] = s\[g, j\] · (q − z), g = i / group. Streamed as Wᵀ.
//! - [`Format::CtPacked`] (compressed-tensors `pack-quantized`, symmetric): `weight_packed`
//!   I32 `[out, ⌈in·bits/32⌉]`, each row a dense little-endian bit stream (value j at bit
//!   j·bits, stored as q + 2^(bits−1)); `weight_scale` `[out or 1, groups]`, optional
//!   `weight_g_idx` I32 `[in]` (activation order); W\[i, j\] = s\[i, g\] · (q\[i, j\] −
//!   2^(bits−1)) with g = g_idx\[j\] or j / group. Streamed as `[out, in]`. Its FP8 variant
//!   (`float-quantized`) is [`Format::Fp8Block`] with the block its scale shape implies.
//! - [`Format::CtInt`] (compressed-tensors `int-quantized` / `naive-quantized` int, e.g.
//!   llm-compressor's W8A8): `weight` I8 `[out, in]` holding q (2 to 8 bits, signed),
//!   `weight_scale` `[out or 1, groups]` (tensor: one scale; channel: one group; group:
//!   groups of `block[0]` input features), optional `weight_zero_point` of the scales' shape
//!   (asymmetric); W\[i, j\] = (q\[i, j\] − z\[i, g\]) · s\[i, g\] with g = j / group, in f32 as
//!   compressed-tensors' `dequantize` computes it with f32 scales. Streamed as `[out, in]`.
//! - [`Format::Bnb4`] (bitsandbytes NF4/FP4, `Params4bit`): `weight` U8 `[⌈out·in/2⌉, 1]`
//!   (or those bytes viewed as the `bnb_4bit_quant_storage` dtype: I8, F16, BF16, F32, F64),
//!   element e of the flattened `[out, in]` matrix in the high (e even) or low nibble of byte
//!   e/2; `absmax` F32 `[⌈out·in/b⌉]` per block of b = `block[0]` elements, or, nested
//!   (double quantization), U8 codes with `extra` = `[quant_map, nested_absmax,
//!   nested_quant_map]` and `offset`: absmax\[k\] = c₂\[a\[k\]\] · m₂\[k / block\[1\]\] +
//!   offset; W = quant_map\[q\] · absmax\[e / b\] (float32, as bitsandbytes computes it).
//!   Streamed as `[out, in]` (`in` even).
//! - [`Format::Mxfp4`] (OCP MXFP4, gpt-oss experts): one expert's `*_blocks` U8
//!   `[rows, cols/32, 16]` (two E2M1 values a byte, the even column in the low nibble) with
//!   its `*_scales` U8 `[rows, cols/32]` (E8M0); W\[i, j\] = fp4\[q\] · 2^(s\[i, j/32\] −
//!   127), as transformers' `convert_moe_packed_tensors` computes it (before its transpose).
//!   Streamed as `[rows, cols]`.
//! - [`Format::Bnb8`] (bitsandbytes LLM.int8, `Int8Params`): `weight` I8 `[out, in]`, `SCB`
//!   F32 `[out]`; W\[i, j\] = (q · SCB\[i\]) · (1/127 as bitsandbytes rounds it).

use std::path::Path;

use crate::dtype::{decode_into, f8_e4m3_to_f32, f8_e5m2_to_f32, Dtype};
use crate::error::{Error, Result};
use crate::io::ByteSource;

/// AutoAWQ's packing order: nibble `n` of a packed word holds column `8k + AWQ_ORDER[n]`.
pub const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// A quantization format the solver can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fp8Block,
    Gptq,
    Awq,
    CtPacked,
    CtInt,
    Bnb4,
    Bnb8,
    Mxfp4,
}

impl Format {
    /// Parse `"fp8_block"`, `"gptq"`, `"awq"`, `"ct_packed"`, `"ct_int"`, `"bnb4"`, `"bnb8"`
    /// or `"mxfp4"`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "fp8_block" => Some(Format::Fp8Block),
            "gptq" => Some(Format::Gptq),
            "awq" => Some(Format::Awq),
            "ct_packed" => Some(Format::CtPacked),
            "ct_int" => Some(Format::CtInt),
            "bnb4" => Some(Format::Bnb4),
            "bnb8" => Some(Format::Bnb8),
            "mxfp4" => Some(Format::Mxfp4),
            _ => None,
        }
    }
}

/// One auxiliary tensor (scales, zero points, `g_idx`) at an absolute byte offset of a shard.
#[derive(Debug, Clone)]
pub struct AuxTensor {
    pub name: String,
    pub shard: usize,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl AuxTensor {
    /// Bytes of data.
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.bits() / 8
    }
}

/// How one stored segment of a matrix is quantized.
#[derive(Debug, Clone)]
pub struct QuantSpec {
    pub format: Format,
    /// Name of the stored (packed) weight tensor, for messages.
    pub weight: String,
    pub bits: u32,
    /// FP8: the block `[rows, cols]`; GPTQ/AWQ: `[group size along the input dim, 0]`.
    pub block: [usize; 2],
    /// Added to the stored zero point (GPTQ v1: 1).
    pub zero_offset: u32,
    pub scales: AuxTensor,
    pub zeros: Option<AuxTensor>,
    pub g_idx: Option<AuxTensor>,
    /// Further auxiliary tensors of the format (bitsandbytes 4-bit: see [`Format::Bnb4`]).
    pub extra: Vec<AuxTensor>,
    /// A constant of the format (bitsandbytes' nested absmax offset), else 0.
    pub offset: f32,
}

impl QuantSpec {
    /// Logical rows held by one stored row.
    pub fn pack(&self) -> usize {
        match self.format {
            Format::Gptq => (32 / self.bits.max(1)) as usize,
            _ => 1,
        }
    }

    /// Bytes of one stored row of a matrix with `cols` logical columns.
    pub fn stored_row_bytes(&self, cols: usize) -> usize {
        match self.format {
            Format::Fp8Block => cols,
            Format::Gptq => cols * 4,
            Format::Awq => cols * self.bits as usize / 8,
            Format::CtPacked => (cols * self.bits as usize).div_ceil(32) * 4,
            Format::Bnb4 | Format::Mxfp4 => cols / 2,
            Format::Bnb8 | Format::CtInt => cols,
        }
    }

    /// Bytes of the stored weight holding `rows` logical rows.
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> u64 {
        (rows.div_ceil(self.pack()) * self.stored_row_bytes(cols)) as u64
    }

    /// The auxiliary tensors.
    pub fn aux(&self) -> impl Iterator<Item = &AuxTensor> {
        std::iter::once(&self.scales)
            .chain(self.zeros.as_ref())
            .chain(self.g_idx.as_ref())
            .chain(&self.extra)
    }
}

/// A quantized segment ready to dequantize: the auxiliary tensors decoded.
#[derive(Debug, Clone)]
pub struct Dequant {
    /// Logical rows per stored row.
    pub pack: usize,
    /// Bytes per stored row.
    pub row_bytes: usize,
    cols: usize,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Fp8 {
        lut: Box<[f32; 256]>,
        scale: Vec<f32>,
        scale_cols: usize,
        block: [usize; 2],
    },
    Int {
        bits: u32,
        awq: bool,
        /// `[groups, cols]`, columns in logical order.
        scale: Vec<f32>,
        /// Zero point (plus the format's `zero_offset`) as f32, `[groups, cols]`.
        zero: Vec<f32>,
        /// Group of each logical row.
        group: Vec<u32>,
    },
    Dense {
        bits: u32,
        /// `[scale_rows, groups]`; `scale_rows` is 1 (one scale row for every row) or `rows`.
        scale: Vec<f32>,
        scale_rows: usize,
        groups: usize,
        /// Group of each logical column.
        group: Vec<u32>,
        /// Columns per group when the groups are consecutive runs (no `g_idx`), else 0.
        run: usize,
        /// For 2, 4 and 8 bits: the `8 / bits` values q − 2^(bits−1) of each byte, in order
        /// (`[256, 8 / bits]`), else empty.
        byte_values: Vec<f32>,
    },
    Nibbles {
        code: [f32; 16],
        /// Per block of `block` elements of the flattened matrix.
        absmax: Vec<f32>,
        block: usize,
    },
    Mx {
        /// E8M0 exponent of each block of 32 columns, row-major `[rows, cols/32]`.
        scales: Vec<u8>,
    },
    RowScaled {
        /// Per row: the scale of every element (SCB · 1/127 is applied as two products).
        scb: Vec<f32>,
    },
    Int8 {
        /// `[scale_rows, groups]`; `scale_rows` is 1 (one scale row for every row) or `rows`.
        scale: Vec<f32>,
        /// Zero points as f32 in the layout of `scale`; empty when symmetric.
        zero: Vec<f32>,
        scale_rows: usize,
        groups: usize,
        /// Columns per group (consecutive runs; the last may be shorter).
        run: usize,
    },
}

fn header_error(path: &Path, tensor: &str, rule: String) -> Error {
    Error::Header {
        path: path.to_path_buf(),
        msg: format!("quantized tensor {tensor:?}: {rule}"),
    }
}

/// Read a whole auxiliary tensor's bytes.
fn read_aux<'f>(
    aux: &AuxTensor,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
) -> Result<Vec<u8>> {
    let (file, path) = open(aux.shard)?;
    let mut buf = vec![0u8; aux.nbytes() as usize];
    file.read_exact_at(&mut buf, aux.offset, path)?;
    Ok(buf)
}

/// The bytes of an auxiliary tensor whose dtype is one of `allowed` (else an error naming the
/// tensor and saying `what` is expected).
fn read_typed<'f>(
    aux: &AuxTensor,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
    allowed: &[Dtype],
    what: &str,
) -> Result<Vec<u8>> {
    let (_, path) = open(aux.shard)?;
    if !allowed.contains(&aux.dtype) {
        let msg = format!("dtype {} where {what}", aux.dtype.name());
        return Err(header_error(path, &aux.name, msg));
    }
    read_aux(aux, open)
}

fn read_floats<'f>(
    aux: &AuxTensor,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
) -> Result<Vec<f32>> {
    let float = [Dtype::F32, Dtype::F16, Dtype::BF16];
    let bytes = read_typed(aux, open, &float, "F32, F16 or BF16 scales are expected")?;
    let mut out = vec![0f32; aux.shape.iter().product()];
    decode_into(aux.dtype, &bytes, &mut out);
    Ok(out)
}

fn read_words<'f>(
    aux: &AuxTensor,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
) -> Result<Vec<u32>> {
    let bytes = read_typed(aux, open, &[Dtype::I32, Dtype::U32], "I32 is expected")?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn expect_shape(path: &Path, aux: &AuxTensor, want: &[usize], rule: &str) -> Result<()> {
    if aux.shape != want {
        return Err(header_error(
            path,
            &aux.name,
            format!("shape {:?}, but {rule} needs {want:?}", aux.shape),
        ));
    }
    Ok(())
}

/// The group of each of the `len` input features from `g_idx` (activation order), each
/// checked to be below `groups`.
fn read_g_idx<'f>(
    g: &AuxTensor,
    len: usize,
    groups: usize,
    path: &Path,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
) -> Result<Vec<u32>> {
    expect_shape(path, g, &[len], "g_idx of the input features")?;
    let words = read_words(g, open)?;
    if let Some((i, &v)) = words
        .iter()
        .enumerate()
        .find(|(_, &v)| v as usize >= groups)
    {
        let rule = format!(
            "g_idx[{i}] = {} is not a group index below {groups}",
            v as i32
        );
        return Err(header_error(path, &g.name, rule));
    }
    Ok(words)
}

/// A stored matrix being checked before it is dequantized: its spec, logical `rows × cols`,
/// stored dtype, shard path (for messages) and the opener of its auxiliary tensors.
struct Stored<'s, 'f> {
    spec: &'s QuantSpec,
    rows: usize,
    cols: usize,
    dtype: Dtype,
    path: &'s Path,
    open: &'s dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
}

/// The scales' `(rows, groups)` of a compressed-tensors weight of `rows` × `cols`: they must
/// be `[rows or 1, groups]`.
fn scale_groups(spec: &QuantSpec, rows: usize, cols: usize, path: &Path) -> Result<(usize, usize)> {
    match spec.scales.shape[..] {
        [r, g] if (r == rows || r == 1) && g > 0 => Ok((r, g)),
        _ => {
            let rule = format!(
                "shape {:?}, but the scales of a [{rows}, {cols}] weight must be [{rows} or 1, groups]",
                spec.scales.shape
            );
            Err(header_error(path, &spec.scales.name, rule))
        }
    }
}

/// The columns of each of `groups` consecutive groups of `cols` input features (all of them
/// for one group, else the spec's group size), checked to make exactly `groups`.
fn group_run(spec: &QuantSpec, groups: usize, cols: usize, path: &Path) -> Result<usize> {
    let run = if groups == 1 { cols } else { spec.block[0] };
    if run == 0 || groups != cols.div_ceil(run) {
        let rule = format!(
            "{groups} groups, but {cols} input features in groups of {run} make {}",
            cols.div_ceil(run.max(1))
        );
        return Err(header_error(path, &spec.scales.name, rule));
    }
    Ok(run)
}

/// [`Kind::Dense`] for a compressed-tensors `pack-quantized` weight (see the module docs).
fn dense(stored: &Stored<'_, '_>) -> Result<Kind> {
    let (spec, rows, cols) = (stored.spec, stored.rows, stored.cols);
    let (dtype, path, open) = (stored.dtype, stored.path, stored.open);
    let bad = |rule: String| header_error(path, &spec.weight, rule);
    let bits = spec.bits;
    if !(2..=8).contains(&bits) {
        return Err(bad(format!(
            "{bits}-bit pack-quantized weights are not supported (supported: 2 to 8)"
        )));
    }
    if !matches!(dtype, Dtype::I32 | Dtype::U32) {
        return Err(bad(format!(
            "packed weights must be I32, not {}",
            dtype.name()
        )));
    }
    let (scale_rows, groups) = scale_groups(spec, rows, cols, path)?;
    let (group, run) = match &spec.g_idx {
        Some(g) => (read_g_idx(g, cols, groups, path, open)?, 0),
        None => {
            let size = group_run(spec, groups, cols, path)?;
            ((0..cols).map(|j| (j / size) as u32).collect(), size)
        }
    };
    let byte_values = if 8 % bits == 0 {
        let (per, half) = (8 / bits, (1u32 << (bits - 1)) as f32);
        let mask = (1u32 << bits) - 1;
        (0..256u32 * per)
            .map(|i| (((i / per) >> ((i % per) * bits)) & mask) as f32 - half)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Kind::Dense {
        bits,
        scale: read_floats(&spec.scales, open)?,
        scale_rows,
        groups,
        group,
        run,
        byte_values,
    })
}

/// [`Kind::Int8`] for a compressed-tensors `int-quantized` weight (see the module docs).
fn int8(stored: &Stored<'_, '_>) -> Result<Kind> {
    let (spec, rows, cols) = (stored.spec, stored.rows, stored.cols);
    let (dtype, path, open) = (stored.dtype, stored.path, stored.open);
    let bad = |rule: String| header_error(path, &spec.weight, rule);
    let bits = spec.bits;
    if !(2..=8).contains(&bits) {
        return Err(bad(format!(
            "{bits}-bit int-quantized weights are not supported (supported: 2 to 8)"
        )));
    }
    if dtype != Dtype::I8 {
        return Err(bad(format!(
            "int-quantized weights must be I8, not {}",
            dtype.name()
        )));
    }
    if spec.g_idx.is_some() {
        return Err(bad(
            "activation-ordered int-quantized weights (weight_g_idx) are not supported".into(),
        ));
    }
    let (scale_rows, groups) = scale_groups(spec, rows, cols, path)?;
    let run = group_run(spec, groups, cols, path)?;
    let zero = match &spec.zeros {
        None => Vec::new(),
        Some(z) => {
            expect_shape(
                path,
                z,
                &spec.scales.shape,
                "zero points of the scales' groups",
            )?;
            let bytes = read_typed(z, open, &[Dtype::I8, Dtype::I32], "I8 or I32 is expected")?;
            if z.dtype == Dtype::I8 {
                bytes.iter().map(|&b| f32::from(b as i8)).collect()
            } else {
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                    .collect()
            }
        }
    };
    Ok(Kind::Int8 {
        scale: read_floats(&spec.scales, open)?,
        zero,
        scale_rows,
        groups,
        run,
    })
}

/// One row of a [`Kind::Dense`] weight of `8 / PB` bits whose groups are consecutive runs of
/// `run` columns: W = (q − half) · scale, each byte's `PB` values q − half from `byte_values`.
fn dense_run<const PB: usize>(
    dst: &mut [f32],
    bytes: &[u8],
    s: &[f32],
    run: usize,
    byte_values: &[f32],
) {
    for ((d, bytes), &sc) in dst.chunks_mut(run).zip(bytes.chunks(run / PB)).zip(s) {
        for (o, &b) in d.chunks_exact_mut(PB).zip(bytes) {
            let v = &byte_values[b as usize * PB..][..PB];
            for (x, &v) in o.iter_mut().zip(v) {
                *x = v * sc;
            }
        }
    }
}

/// [`Kind::Nibbles`] for a bitsandbytes 4-bit weight (see the module docs).
fn nibbles(stored: &Stored<'_, '_>) -> Result<Kind> {
    let (spec, dtype, path, open) = (stored.spec, stored.dtype, stored.path, stored.open);
    let (rows, cols) = (stored.rows, stored.cols);
    let bad = |rule: String| header_error(path, &spec.weight, rule);
    // `bnb_4bit_quant_storage`: the packed bytes viewed as another dtype (same bytes).
    let storages = [
        Dtype::U8,
        Dtype::I8,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
    ];
    if !storages.contains(&dtype) {
        return Err(bad(format!(
            "4-bit weights must be stored as U8 (or I8, F16, BF16, F32, F64: \
             bnb_4bit_quant_storage), not {}",
            dtype.name()
        )));
    }
    if !cols.is_multiple_of(2) {
        return Err(bad(format!(
            "in_features {cols} is odd: rows of 4-bit weights would share a byte"
        )));
    }
    let block = spec.block[0];
    let blocks = (rows * cols).div_ceil(block.max(1));
    if block == 0 {
        return Err(bad("block size must be positive".into()));
    }
    expect_shape(path, &spec.scales, &[blocks], "absmax (one per block)")?;
    let [code, rest @ ..] = &spec.extra[..] else {
        return Err(bad("quant_map is missing".into()));
    };
    expect_shape(path, code, &[16], "quant_map (16 code values)")?;
    let code: [f32; 16] = read_typed_floats(code, open, &[Dtype::F32])?
        .try_into()
        .map_err(|_| bad("quant_map must hold 16 values".into()))?;
    let absmax = match (spec.scales.dtype, rest) {
        (Dtype::F32, []) => read_typed_floats(&spec.scales, open, &[Dtype::F32])?,
        (Dtype::U8, [nested_absmax, nested_code]) => {
            let per = spec.block[1];
            if per == 0 {
                return Err(bad("nested block size must be positive".into()));
            }
            let nested = blocks.div_ceil(per);
            expect_shape(
                path,
                nested_absmax,
                &[nested],
                "nested_absmax (one per nested block)",
            )?;
            expect_shape(
                path,
                nested_code,
                &[256],
                "nested_quant_map (256 code values)",
            )?;
            let m2 = read_typed_floats(nested_absmax, open, &[Dtype::F32])?;
            let c2 = read_typed_floats(nested_code, open, &[Dtype::F32])?;
            let codes = read_typed(&spec.scales, open, &[Dtype::U8], "U8")?;
            codes
                .iter()
                .enumerate()
                .map(|(k, &a)| c2[a as usize] * m2[k / per] + spec.offset)
                .collect()
        }
        _ => {
            let rule = format!(
                "dtype {} with {} further tensors: absmax must be F32, or U8 codes with \
                 nested_absmax and nested_quant_map",
                spec.scales.dtype.name(),
                rest.len()
            );
            return Err(header_error(path, &spec.scales.name, rule));
        }
    };
    Ok(Kind::Nibbles {
        code,
        absmax,
        block,
    })
}

/// 2^e as f32 for e in −149..=127 (exact; below −126 subnormal).
fn pow2(e: i32) -> f32 {
    debug_assert!((-149..=127).contains(&e));
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// [`read_floats`] of a tensor whose dtype must be one of `allowed`.
fn read_typed_floats<'f>(
    aux: &AuxTensor,
    open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
    allowed: &[Dtype],
) -> Result<Vec<f32>> {
    let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
    read_typed(
        aux,
        open,
        allowed,
        &format!("{} is expected", names.join(" or ")),
    )?;
    read_floats(aux, open)
}

impl Dequant {
    /// Check `spec` against the logical `rows × cols` matrix stored as `dtype` and read its
    /// auxiliary tensors through `open(shard) → (file, path)`.
    pub fn load<'f>(
        spec: &QuantSpec,
        rows: usize,
        cols: usize,
        dtype: Dtype,
        open: &dyn Fn(usize) -> Result<(ByteSource<'f>, &'f Path)>,
    ) -> Result<Dequant> {
        let (_, path) = open(spec.scales.shard)?;
        let bad = |rule: String| header_error(path, &spec.weight, rule);
        let stored = Stored {
            spec,
            rows,
            cols,
            dtype,
            path,
            open,
        };
        let kind = match spec.format {
            Format::Fp8Block => {
                let decode: fn(u8) -> f32 = match dtype {
                    Dtype::F8_E4M3 => f8_e4m3_to_f32,
                    Dtype::F8_E5M2 => f8_e5m2_to_f32,
                    other => {
                        return Err(bad(format!(
                            "FP8 block-scaled weights must be F8_E4M3 or F8_E5M2, not {}",
                            other.name()
                        )))
                    }
                };
                let [br, bc] = spec.block;
                if br == 0 || bc == 0 {
                    return Err(bad(format!("block size {br}×{bc} must be positive")));
                }
                let want = [rows.div_ceil(br), cols.div_ceil(bc)];
                expect_shape(
                    path,
                    &spec.scales,
                    &want,
                    &format!("a [{rows}, {cols}] weight in {br}×{bc} blocks"),
                )?;
                let mut lut = Box::new([0f32; 256]);
                for (b, v) in lut.iter_mut().enumerate() {
                    *v = decode(b as u8);
                }
                Kind::Fp8 {
                    lut,
                    scale: read_floats(&spec.scales, open)?,
                    scale_cols: want[1],
                    block: spec.block,
                }
            }
            Format::Gptq | Format::Awq => {
                let awq = spec.format == Format::Awq;
                let bits = spec.bits;
                let ok_bits = if awq {
                    bits == 4
                } else {
                    matches!(bits, 2 | 4 | 8)
                };
                if !ok_bits {
                    return Err(bad(format!(
                        "{bits}-bit {} packing is not supported (supported: {})",
                        if awq { "AWQ" } else { "GPTQ" },
                        if awq { "4" } else { "2, 4, 8" }
                    )));
                }
                if !matches!(dtype, Dtype::I32 | Dtype::U32) {
                    return Err(bad(format!(
                        "packed weights must be I32, not {}",
                        dtype.name()
                    )));
                }
                let per_word = (32 / bits) as usize;
                if !awq && !rows.is_multiple_of(per_word) {
                    return Err(bad(format!(
                        "in_features {rows} is not a multiple of {per_word} ({bits}-bit packing)"
                    )));
                }
                if !cols.is_multiple_of(per_word) {
                    return Err(bad(format!(
                        "out_features {cols} is not a multiple of {per_word} (packed zero points)"
                    )));
                }
                let group = spec.block[0];
                if group == 0 {
                    return Err(bad("group size must be positive".into()));
                }
                let groups = spec.scales.shape.first().copied().unwrap_or(0);
                expect_shape(
                    path,
                    &spec.scales,
                    &[groups, cols],
                    "the scales of the weight",
                )?;
                let zeros = spec
                    .zeros
                    .as_ref()
                    .ok_or_else(|| bad("zero points (qzeros) are missing".into()))?;
                expect_shape(
                    path,
                    zeros,
                    &[groups, cols / per_word],
                    "packed zero points of the scales' groups",
                )?;
                let group_of: Vec<u32> = match &spec.g_idx {
                    Some(g) if !awq => read_g_idx(g, rows, groups, path, open)?,
                    _ => {
                        if groups != rows.div_ceil(group) {
                            return Err(header_error(
                                path,
                                &spec.scales.name,
                                format!(
                                    "{groups} groups, but {rows} input features in groups of \
                                     {group} make {}",
                                    rows.div_ceil(group)
                                ),
                            ));
                        }
                        (0..rows).map(|i| (i / group) as u32).collect()
                    }
                };
                let scale = read_floats(&spec.scales, open)?;
                let packed = read_words(zeros, open)?;
                let mask = (1u32 << bits) - 1;
                let zpw = cols / per_word;
                // Column of nibble n within a word's run of per_word columns.
                let col_of = |n: usize| if awq { AWQ_ORDER[n] } else { n };
                let mut zero = vec![0f32; groups * cols];
                for g in 0..groups {
                    for k in 0..zpw {
                        let w = packed[g * zpw + k];
                        for n in 0..per_word {
                            let c = k * per_word + col_of(n);
                            let z = ((w >> (n as u32 * bits)) & mask) + spec.zero_offset;
                            zero[g * cols + c] = z as f32;
                        }
                    }
                }
                Kind::Int {
                    bits,
                    awq,
                    scale,
                    zero,
                    group: group_of,
                }
            }
            Format::CtPacked => dense(&stored)?,
            Format::CtInt => int8(&stored)?,
            Format::Bnb4 => nibbles(&stored)?,
            Format::Mxfp4 => {
                if dtype != Dtype::U8 || !cols.is_multiple_of(32) {
                    return Err(bad(format!(
                        "MXFP4 blocks must be U8 with a multiple of 32 columns, not {} with {cols}",
                        dtype.name()
                    )));
                }
                let want = [rows, cols / 32];
                expect_shape(
                    path,
                    &spec.scales,
                    &want,
                    "E8M0 scales (one per 32 columns)",
                )?;
                Kind::Mx {
                    scales: read_typed(&spec.scales, open, &[Dtype::U8], "U8 is expected")?,
                }
            }
            Format::Bnb8 => {
                if dtype != Dtype::I8 {
                    return Err(bad(format!(
                        "LLM.int8 weights must be I8, not {}",
                        dtype.name()
                    )));
                }
                expect_shape(
                    path,
                    &spec.scales,
                    &[rows],
                    "SCB (one scale per output row)",
                )?;
                Kind::RowScaled {
                    scb: read_typed_floats(&spec.scales, open, &[Dtype::F32])?,
                }
            }
        };
        Ok(Dequant {
            pack: spec.pack(),
            row_bytes: spec.stored_row_bytes(cols),
            cols,
            kind,
        })
    }

    /// Dequantize logical rows `row0..row0 + rows` (`row0` a multiple of [`Dequant::pack`])
    /// from `raw`, the stored rows holding them, into `out[..rows * cols]` (row-major).
    pub fn decode(&self, raw: &[u8], row0: usize, rows: usize, out: &mut [f32]) {
        let cols = self.cols;
        match &self.kind {
            Kind::Fp8 {
                lut,
                scale,
                scale_cols,
                block,
            } => {
                for r in 0..rows {
                    let src = &raw[r * cols..(r + 1) * cols];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    let srow = &scale[((row0 + r) / block[0]) * scale_cols..];
                    for ((d, s), &sc) in
                        dst.chunks_mut(block[1]).zip(src.chunks(block[1])).zip(srow)
                    {
                        for (o, &b) in d.iter_mut().zip(s) {
                            *o = lut[b as usize] * sc;
                        }
                    }
                }
            }
            Kind::Int {
                bits,
                awq: false,
                scale,
                zero,
                group,
            } => {
                let pack = self.pack;
                let mask = (1u32 << bits) - 1;
                for r in 0..rows {
                    let i = row0 + r;
                    let words = &raw[(r / pack) * self.row_bytes..][..self.row_bytes];
                    let shift = ((i % pack) as u32) * bits;
                    let g = group[i] as usize;
                    let s = &scale[g * cols..(g + 1) * cols];
                    let z = &zero[g * cols..(g + 1) * cols];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    for (((o, w), &s), &z) in
                        dst.iter_mut().zip(words.chunks_exact(4)).zip(s).zip(z)
                    {
                        let q = (u32::from_le_bytes([w[0], w[1], w[2], w[3]]) >> shift) & mask;
                        // s · (q − z): q − z is exact, one rounding (the reference's formula).
                        *o = (q as f32 - z) * s;
                    }
                }
            }
            Kind::Dense {
                bits,
                scale,
                scale_rows,
                groups,
                group,
                run,
                byte_values,
            } => {
                let bits = *bits as usize;
                let mask = (1u64 << bits) - 1;
                let half = (1u64 << (bits - 1)) as f32;
                for r in 0..rows {
                    let words = &raw[r * self.row_bytes..(r + 1) * self.row_bytes];
                    let srow = if *scale_rows == 1 { 0 } else { row0 + r };
                    let s = &scale[srow * groups..(srow + 1) * groups];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    let word = |k: usize| -> u64 {
                        words.get(4 * k..4 * k + 4).map_or(0, |w| {
                            u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                        })
                    };
                    if 32 % bits == 0 && *run > 0 && run.is_multiple_of(32 / bits) {
                        // Consecutive groups of whole words: one scale per run of columns,
                        // each stored byte (values in order, little-endian words) looked up.
                        match bits {
                            2 => dense_run::<4>(dst, words, s, *run, byte_values),
                            4 => dense_run::<2>(dst, words, s, *run, byte_values),
                            _ => dense_run::<1>(dst, words, s, *run, byte_values),
                        }
                        continue;
                    }
                    if 32 % bits == 0 {
                        // 2, 4 or 8 bits: whole values per word, lowest bits first.
                        let per = 32 / bits;
                        for ((d, w), gs) in dst
                            .chunks_mut(per)
                            .zip(words.chunks_exact(4))
                            .zip(group.chunks(per))
                        {
                            let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                            for (n, (o, &g)) in d.iter_mut().zip(gs).enumerate() {
                                let q = (w >> (n * bits)) & mask as u32;
                                *o = (q as f32 - half) * s[g as usize];
                            }
                        }
                        continue;
                    }
                    for (j, (o, &g)) in dst.iter_mut().zip(group).enumerate() {
                        // A value may straddle two words (bits that do not divide 32).
                        let bit = j * bits;
                        let pair = word(bit / 32) | (word(bit / 32 + 1) << 32);
                        let q = (pair >> (bit % 32)) & mask;
                        *o = (q as f32 - half) * s[g as usize];
                    }
                }
            }
            Kind::Nibbles {
                code,
                absmax,
                block,
            } => {
                for r in 0..rows {
                    let bytes = &raw[r * self.row_bytes..(r + 1) * self.row_bytes];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    let first = (row0 + r) * cols;
                    for (k, &b) in bytes.iter().enumerate() {
                        let e = first + 2 * k;
                        dst[2 * k] = code[(b >> 4) as usize] * absmax[e / block];
                        dst[2 * k + 1] = code[(b & 15) as usize] * absmax[(e + 1) / block];
                    }
                }
            }
            Kind::Mx { scales } => {
                const FP4: [f32; 16] = [
                    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0,
                    -4.0, -6.0,
                ];
                let blocks = cols / 32;
                for r in 0..rows {
                    let bytes = &raw[r * self.row_bytes..(r + 1) * self.row_bytes];
                    let row_scales = &scales[(row0 + r) * blocks..(row0 + r + 1) * blocks];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    for ((d, b), &e) in dst.chunks_mut(32).zip(bytes.chunks(16)).zip(row_scales) {
                        // ldexp(v, e − 127); e = 255 (2^128) as two products, so 0 stays 0.
                        let (scale, twice) = match e {
                            255 => (pow2(127), 2.0),
                            _ => (pow2(i32::from(e) - 127), 1.0),
                        };
                        for (k, &byte) in b.iter().enumerate() {
                            d[2 * k] = FP4[(byte & 15) as usize] * scale * twice;
                            d[2 * k + 1] = FP4[(byte >> 4) as usize] * scale * twice;
                        }
                    }
                }
            }
            Kind::Int8 {
                scale,
                zero,
                scale_rows,
                groups,
                run,
            } => {
                for r in 0..rows {
                    let src = &raw[r * cols..(r + 1) * cols];
                    let srow = if *scale_rows == 1 { 0 } else { row0 + r };
                    let s = &scale[srow * groups..(srow + 1) * groups];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    let runs = dst.chunks_mut(*run).zip(src.chunks(*run)).zip(s);
                    if zero.is_empty() {
                        for ((d, q), &sc) in runs {
                            for (o, &b) in d.iter_mut().zip(q) {
                                *o = f32::from(b as i8) * sc;
                            }
                        }
                    } else {
                        // (q − z) · s: q − z is exact, one rounding (the library's order).
                        let z = &zero[srow * groups..(srow + 1) * groups];
                        for (((d, q), &sc), &zp) in runs.zip(z) {
                            for (o, &b) in d.iter_mut().zip(q) {
                                *o = (f32::from(b as i8) - zp) * sc;
                            }
                        }
                    }
                }
            }
            Kind::RowScaled { scb } => {
                // bitsandbytes: A * SCB * 7.874015718698502e-3 (two float32 products).
                let inv = 7.874_015_718_698_502e-3_f64 as f32;
                for r in 0..rows {
                    let s = scb[row0 + r];
                    let src = &raw[r * cols..(r + 1) * cols];
                    for (o, &b) in out[r * cols..(r + 1) * cols].iter_mut().zip(src) {
                        *o = (f32::from(b as i8) * s) * inv;
                    }
                }
            }
            Kind::Int {
                awq: true,
                scale,
                zero,
                group,
                ..
            } => {
                for r in 0..rows {
                    let i = row0 + r;
                    let words = &raw[r * self.row_bytes..(r + 1) * self.row_bytes];
                    let g = group[i] as usize;
                    let s = &scale[g * cols..(g + 1) * cols];
                    let z = &zero[g * cols..(g + 1) * cols];
                    let dst = &mut out[r * cols..(r + 1) * cols];
                    for (k, w) in words.chunks_exact(4).enumerate() {
                        let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                        for (n, &c) in AWQ_ORDER.iter().enumerate() {
                            let q = (w >> (4 * n as u32)) & 15;
                            let c = 8 * k + c;
                            dst[c] = (q as f32 - z[c]) * s[c];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A spec over shard 0 without zero points or `g_idx` (a test adds those it needs).
    fn plain_spec(
        format: Format,
        weight: &str,
        bits: u32,
        block: [usize; 2],
        scales: AuxTensor,
    ) -> QuantSpec {
        QuantSpec {
            format,
            weight: weight.into(),
            bits,
            block,
            zero_offset: 0,
            scales,
            zeros: None,
            g_idx: None,
            extra: Vec::new(),
            offset: 0.0,
        }
    }

    fn aux(name: &str, offset: u64, shape: &[usize], dtype: Dtype) -> AuxTensor {
        AuxTensor {
            name: name.into(),
            shard: 0,
            offset,
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// A file holding `parts` back to back; returns it and each part's offset.
    /// A test file reopened for reading, handed out as the shard source of every aux tensor.
    struct Opened {
        file: std::fs::File,
        path: std::path::PathBuf,
    }

    impl Opened {
        fn new(f: &tempfile::NamedTempFile) -> Self {
            Opened {
                file: f.reopen().unwrap(),
                path: f.path().to_path_buf(),
            }
        }

        fn source(&self) -> Result<(ByteSource<'_>, &Path)> {
            Ok((ByteSource::File(&self.file), self.path.as_path()))
        }
    }

    fn file_of(parts: &[Vec<u8>]) -> (tempfile::NamedTempFile, Vec<u64>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for p in parts {
            offsets.push(at);
            f.write_all(p).unwrap();
            at += p.len() as u64;
        }
        f.flush().unwrap();
        (f, offsets)
    }

    fn words(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn halves(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect()
    }

    #[test]
    fn gptq_v1_act_order_and_awq_order_dequantize_by_hand() {
        // 8 inputs × 8 outputs, 2 groups; q[i, j] = (i + j) % 16; stored zeros z − 1 = 3 / 6.
        let (rows, cols) = (8usize, 8usize);
        let q = |i: usize, j: usize| ((i + j) % 16) as u32;
        let qweight: Vec<u32> = (0..cols)
            .map(|j| (0..8).fold(0, |w, i| w | (q(i, j) << (4 * i))))
            .collect();
        let zeros: Vec<u32> = [3u32, 6]
            .iter()
            .map(|&z| (0..8).fold(0, |w, n| w | (z << (4 * n))))
            .collect();
        let scales: Vec<f32> = (0..16).map(|k| 0.5 + k as f32 / 16.0).collect();
        let g_idx: Vec<u32> = vec![1, 0, 1, 0, 1, 0, 1, 0];
        let (f, off) = file_of(&[
            words(&qweight),
            words(&zeros),
            halves(&scales),
            words(&g_idx),
        ]);
        let opened = Opened::new(&f);
        let open = |_: usize| opened.source();
        let spec = QuantSpec {
            zero_offset: 1,
            zeros: Some(aux("w.qzeros", off[1], &[2, 1], Dtype::I32)),
            g_idx: Some(aux("w.g_idx", off[3], &[rows], Dtype::I32)),
            ..plain_spec(
                Format::Gptq,
                "w.qweight",
                4,
                [4, 0],
                aux("w.scales", off[2], &[2, cols], Dtype::F16),
            )
        };
        let d = Dequant::load(&spec, rows, cols, Dtype::I32, &open).unwrap();
        let mut out = vec![0f32; rows * cols];
        d.decode(&words(&qweight), 0, rows, &mut out);
        for i in 0..rows {
            let g = g_idx[i] as usize;
            let z = [4.0f32, 7.0][g];
            for j in 0..cols {
                let s = half::f16::from_f32(scales[g * cols + j]).to_f32();
                let want = s * (q(i, j) as f32 - z);
                assert!((out[i * cols + j] - want).abs() <= 1e-6 * want.abs().max(1.0));
            }
        }

        // AWQ: one input row per stored row, columns interleaved within each word.
        let awq_q: Vec<u32> = (0..rows)
            .map(|i| (0..8).fold(0, |w, n| w | (q(i, AWQ_ORDER[n]) << (4 * n))))
            .collect();
        let spec = QuantSpec {
            format: Format::Awq,
            zero_offset: 0,
            g_idx: None,
            ..spec
        };
        let d = Dequant::load(&spec, rows, cols, Dtype::I32, &open).unwrap();
        d.decode(&words(&awq_q), 0, rows, &mut out);
        for i in 0..rows {
            let g = i / 4;
            for j in 0..cols {
                let s = half::f16::from_f32(scales[g * cols + j]).to_f32();
                let want = s * (q(i, j) as f32 - [3.0f32, 6.0][g]);
                assert!((out[i * cols + j] - want).abs() <= 1e-6 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn ct_int_groups_zero_points_and_one_scale_row_dequantize_by_hand() {
        // 3 rows × 10 columns in groups of 4 (the last group 2 wide); q[i, j] = 7i − 3j + 5.
        let (rows, cols, group) = (3usize, 10usize, 4usize);
        let q = |i: usize, j: usize| (7 * i as i32 - 3 * j as i32 + 5) as i8;
        let weight: Vec<u8> = (0..rows * cols)
            .map(|e| q(e / cols, e % cols) as u8)
            .collect();
        let scales: Vec<f32> = (0..rows * 3).map(|k| 0.25 + k as f32 / 8.0).collect();
        let zeros: Vec<u8> = (0..rows * 3).map(|k| (k as i8 - 4) as u8).collect();
        let scale_bytes: Vec<u8> = scales.iter().flat_map(|x| x.to_le_bytes()).collect();
        let (f, off) = file_of(&[scale_bytes, zeros.clone()]);
        let opened = Opened::new(&f);
        let open = |_: usize| opened.source();
        let spec = QuantSpec {
            zeros: Some(aux("w.weight_zero_point", off[1], &[rows, 3], Dtype::I8)),
            ..plain_spec(
                Format::CtInt,
                "w.weight",
                8,
                [group, 0],
                aux("w.weight_scale", off[0], &[rows, 3], Dtype::F32),
            )
        };
        let d = Dequant::load(&spec, rows, cols, Dtype::I8, &open).unwrap();
        let mut out = vec![0f32; rows * cols];
        d.decode(&weight[cols..], 1, rows - 1, &mut out);
        for i in 1..rows {
            for j in 0..cols {
                let k = i * 3 + j / group;
                let want = (f32::from(q(i, j)) - f32::from(zeros[k] as i8)) * scales[k];
                assert_eq!(out[(i - 1) * cols + j], want, "{i} {j}");
            }
        }
        // Symmetric, one scale for the whole tensor ([1, 1]).
        let one = QuantSpec {
            zeros: None,
            ..plain_spec(
                Format::CtInt,
                "w.weight",
                8,
                [cols, 0],
                aux("w.weight_scale", off[0], &[1, 1], Dtype::F32),
            )
        };
        let d = Dequant::load(&one, rows, cols, Dtype::I8, &open).unwrap();
        d.decode(&weight, 0, rows, &mut out);
        for (e, &v) in out.iter().enumerate() {
            assert_eq!(v, f32::from(q(e / cols, e % cols)) * scales[0]);
        }
        // Checks: stored dtype, scale groups, zero-point shape.
        let err = Dequant::load(&one, rows, cols, Dtype::U8, &open).unwrap_err();
        assert!(err.to_string().contains("must be I8, not U8"), "{err}");
        let groups = QuantSpec {
            block: [3, 0],
            ..spec.clone()
        };
        let err = Dequant::load(&groups, rows, cols, Dtype::I8, &open).unwrap_err();
        assert!(err.to_string().contains("groups of 3 make 4"), "{err}");
        let zeros_shape = QuantSpec {
            zeros: Some(aux("w.weight_zero_point", off[1], &[rows, 2], Dtype::I8)),
            ..spec
        };
        let err = Dequant::load(&zeros_shape, rows, cols, Dtype::I8, &open).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"w.weight_zero_point\": shape [3, 2]"),
            "{err}"
        );
    }

    #[test]
    fn malformed_specs_name_tensor_and_rule() {
        let (f, _) = file_of(&[vec![0u8; 4096]]);
        let opened = Opened::new(&f);
        let open = |_: usize| opened.source();
        let fp8 = plain_spec(
            Format::Fp8Block,
            "l.weight",
            8,
            [128, 128],
            aux("l.weight_scale_inv", 0, &[2, 2], Dtype::F32),
        );
        let err = Dequant::load(&fp8, 300, 256, Dtype::F8_E4M3, &open).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"l.weight_scale_inv\"") && msg.contains("[3, 2]"),
            "{msg}"
        );
        let err = Dequant::load(&fp8, 256, 256, Dtype::BF16, &open).unwrap_err();
        assert!(err.to_string().contains("F8_E4M3 or F8_E5M2"), "{err}");
        let gptq = QuantSpec {
            zero_offset: 1,
            zeros: Some(aux("l.qzeros", 0, &[1, 8], Dtype::I32)),
            ..plain_spec(
                Format::Gptq,
                "l.qweight",
                3,
                [128, 0],
                aux("l.scales", 0, &[1, 64], Dtype::F16),
            )
        };
        let err = Dequant::load(&gptq, 64, 64, Dtype::I32, &open).unwrap_err();
        assert!(err.to_string().contains("3-bit GPTQ"), "{err}");
        let no_zeros = QuantSpec {
            bits: 4,
            zeros: None,
            ..gptq.clone()
        };
        let err = Dequant::load(&no_zeros, 64, 64, Dtype::I32, &open).unwrap_err();
        assert!(err.to_string().contains("qzeros) are missing"), "{err}");
        let groups = QuantSpec {
            bits: 4,
            block: [16, 0],
            ..gptq
        };
        let err = Dequant::load(&groups, 64, 64, Dtype::I32, &open).unwrap_err();
        assert!(err.to_string().contains("make 4"), "{err}");
    }
}
