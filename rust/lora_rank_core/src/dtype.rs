//! Safetensors dtypes: names, storage sizes, and block decoding to `f32`.

use half::{bf16, f16};

/// Every dtype the safetensors format defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Dtype {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// Parse the header spelling (`"BF16"`); `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Dtype> {
        use Dtype::*;
        Some(match name {
            "BOOL" => BOOL,
            "F4" => F4,
            "F6_E2M3" => F6_E2M3,
            "F6_E3M2" => F6_E3M2,
            "U8" => U8,
            "I8" => I8,
            "F8_E5M2" => F8_E5M2,
            "F8_E4M3" => F8_E4M3,
            "F8_E8M0" => F8_E8M0,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "C64" => C64,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            BOOL => "BOOL",
            F4 => "F4",
            F6_E2M3 => "F6_E2M3",
            F6_E3M2 => "F6_E3M2",
            U8 => "U8",
            I8 => "I8",
            F8_E5M2 => "F8_E5M2",
            F8_E4M3 => "F8_E4M3",
            F8_E8M0 => "F8_E8M0",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            C64 => "C64",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }

    /// Storage size of one element in bits.
    pub fn bits(self) -> u64 {
        use Dtype::*;
        match self {
            F4 => 4,
            F6_E2M3 | F6_E3M2 => 6,
            BOOL | U8 | I8 | F8_E5M2 | F8_E4M3 | F8_E8M0 => 8,
            I16 | U16 | F16 | BF16 => 16,
            I32 | U32 | F32 => 32,
            C64 | F64 | I64 | U64 => 64,
        }
    }

    /// Whether [`decode_into`] can turn this dtype into `f32` values for spectral work.
    pub fn is_decodable_float(self) -> bool {
        matches!(
            self,
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 | Dtype::F8_E4M3 | Dtype::F8_E5M2
        )
    }

    /// Bytes per element for byte-addressable dtypes (`None` for sub-byte ones).
    pub fn byte_size(self) -> Option<usize> {
        let bits = self.bits();
        bits.is_multiple_of(8).then_some((bits / 8) as usize)
    }
}

/// Decode `F8_E4M3` (the OCP/`torch.float8_e4m3fn` variant: no infinities, S.1111.111 is NaN).
#[inline]
pub fn f8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Decode `F8_E5M2` (`torch.float8_e5m2`: IEEE-like, with infinities and NaNs).
#[inline]
pub fn f8_e5m2_to_f32(b: u8) -> f32 {
    // E5M2 is the top byte of an IEEE half.
    f16::from_bits((b as u16) << 8).to_f32()
}

/// Decode little-endian elements of `dtype` from `bytes` into `out` (`out.len()` elements).
///
/// Panics if `dtype` is not [`Dtype::is_decodable_float`] or `bytes` is too short: callers
/// validate both first.
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 4].chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 8].chunks_exact(8)) {
                *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Dtype::F8_E4M3 => {
            for (o, &b) in out.iter_mut().zip(&bytes[..n]) {
                *o = f8_e4m3_to_f32(b);
            }
        }
        Dtype::F8_E5M2 => {
            for (o, &b) in out.iter_mut().zip(&bytes[..n]) {
                *o = f8_e5m2_to_f32(b);
            }
        }
        other => panic!(
            "decode_into: {} is not a decodable float dtype",
            other.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16",
            "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
        ] {
            assert_eq!(Dtype::parse(name).unwrap().name(), name);
        }
        assert!(Dtype::parse("Q4_K").is_none());
        assert!(Dtype::parse("bf16").is_none());
    }

    #[test]
    fn f8_e4m3_reference_values() {
        // Values from the OCP FP8 specification (E4M3, bias 7).
        assert_eq!(f8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0xb8), -1.0);
        assert_eq!(f8_e4m3_to_f32(0x7e), 448.0); // largest finite
        assert_eq!(f8_e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(f8_e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn f8_e5m2_reference_values() {
        assert_eq!(f8_e5m2_to_f32(0x3c), 1.0);
        assert_eq!(f8_e5m2_to_f32(0x7b), 57344.0); // largest finite
        assert!(f8_e5m2_to_f32(0x7c).is_infinite());
        assert!(f8_e5m2_to_f32(0x7d).is_nan());
    }

    #[test]
    fn decodes_little_endian_blocks() {
        let vals = [1.5f32, -2.0, 0.25];
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let mut out = [0f32; 3];
        decode_into(Dtype::BF16, &bytes, &mut out);
        assert_eq!(out, vals);
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        decode_into(Dtype::F64, &bytes, &mut out);
        assert_eq!(out, vals);
    }
}
