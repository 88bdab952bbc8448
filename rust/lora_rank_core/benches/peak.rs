//! One core's throughput of the two instructions a solver pass can be built on, on this CPU:
//! `vdpbf16ps` (bf16 pair dot product: the bf16 kernels) and `vfmadd231ps` (f32 FMA: the f32
//! path's GEMM), 512-bit registers, 16 independent accumulators
//! (`lora_rank_core::spectral::kernels::instruction_rates`, the measurement the engine's
//! choice of pass kernel rests on, here with 1000× its rounds).
//!
//! `cargo bench -p lora_rank_core --bench peak`; benches/README, "The pass kernel per CPU".

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
            println!(
                "engine's choice here: {}",
                lora_rank_core::spectral::solver::pass_kernel().name()
            );
        }
        None => println!("no AVX-512 BF16 here: the engine runs the f32 path"),
    }
}
