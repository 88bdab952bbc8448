//! What several benches share.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use half::bf16;

/// Write `rows × cols` pseudo-random bf16 values (xorshift, in [-1, 1)) to `path`.
pub fn write_bf16_matrix(path: &Path, rows: usize, cols: usize) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut bytes = Vec::with_capacity(cols * 2);
    let mut f = File::create(path).expect("create");
    for _ in 0..rows {
        bytes.clear();
        for _ in 0..cols {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            bytes.extend_from_slice(&bf16::from_f32(x).to_le_bytes());
        }
        f.write_all(&bytes).expect("write");
    }
}
