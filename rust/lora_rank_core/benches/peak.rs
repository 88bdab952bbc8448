//! This CPU's properties the solver's choices rest on:
//! - one core's throughput of the two instructions a solver pass can be built on:
//!   `vdpbf16ps` (bf16 pair dot product: the bf16 kernels) and `vfmadd231ps` (f32 FMA: the
//!   f32 kernels), 512-bit registers, 16 independent accumulators
//!   (`lora_rank_core::spectral::kernels::instruction_rates`, the measurement the engine's
//!   choice of pass kernel rests on, here with 1000× its rounds);
//! - what scalar code (1M `f64::exp`, as the power-law fit runs them) costs right after a
//!   faer matmul, which leaves the vector registers' upper halves dirty, against after
//!   `vzeroupper` (`spectral::clear_upper_vector_state`, which the solver now calls).
//!
//! `cargo bench -p lora_rank_core --bench peak`; benches/README, "The pass kernel per CPU" and
//! "Scalar code after faer".

use std::hint::black_box;
use std::time::Instant;

/// Seconds of 1M `exp` after a small faer f32 product (then `vzeroupper` when `clear`).
fn scalar_after_faer(clear: bool) -> f64 {
    let a = faer::Mat::<f32>::from_fn(256, 256, |i, j| (i + j) as f32 * 1e-3);
    let mut c = faer::Mat::<f32>::zeros(256, 256);
    let xs: Vec<f64> = (0..1_000_000).map(|i| -(i as f64) * 1e-5).collect();
    faer::linalg::matmul::matmul(
        c.as_mut(),
        faer::Accum::Replace,
        a.as_ref(),
        a.as_ref(),
        1.0f32,
        faer::Par::Seq,
    );
    black_box(&c);
    if clear {
        lora_rank_core::spectral::clear_upper_vector_state();
    }
    let t = Instant::now();
    let s: f64 = black_box(&xs).iter().map(|x| x.exp()).sum();
    black_box(s);
    t.elapsed().as_secs_f64()
}

fn main() {
    use lora_rank_core::spectral::kernels::instruction_rates;
    match instruction_rates(20_000_000) {
        Some((dot, fma)) => {
            println!("vdpbf16ps zmm   {dot:7.1} GFLOP/s per core (a lane: 4 flops)");
            println!("vfmadd231ps zmm {fma:7.1} GFLOP/s per core (a lane: 2 flops)");
            println!(
                "ratio {:.2} (the engine takes the bf16 kernels from 0.75)",
                dot / fma
            );
        }
        None => println!("no AVX-512 BF16 here"),
    }
    println!(
        "engine's choice here: {}",
        lora_rank_core::spectral::solver::pass_kernel().name()
    );
    let (mut dirty, mut clean) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        dirty = dirty.min(scalar_after_faer(false));
        clean = clean.min(scalar_after_faer(true));
    }
    println!(
        "1M f64::exp after a faer matmul: {:.1} ms; after it and vzeroupper: {:.1} ms ({:.1}x)",
        dirty * 1e3,
        clean * 1e3,
        dirty / clean
    );
}
