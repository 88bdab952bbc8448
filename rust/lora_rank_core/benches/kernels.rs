//! The pass kernels side by side, interleaved round by round in one process: the randomized
//! solver capped at 3 passes (`rtol` 1e-12: no early stop; block 40, all threads) on a bf16
//! matrix of each LLM shape (pseudo-random values in a temporary file, read from the page
//! cache), with each `PassKernel` this CPU runs. Prints, per shape and kernel, GFLOP/s of a
//! pass (4·m·n·40 flops per pass, the solver's dense work per pass included), min and median
//! over the rounds, and the per-round time ratio of each kernel to the first.
//!
//! Run with `cargo bench -p lora_rank_core --bench kernels [-- ROUNDS [MxN ...]]` (default:
//! 12 rounds; 14336x4096 4096x4096 1024x4096 4096x14336).

mod common;
use common::write_bf16_matrix;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use faer::Par;
use lora_rank_core::io::ByteSource;
use lora_rank_core::spectral::solver::{randomized, PassKernel, SolverConfig};
use lora_rank_core::spectral::source::{MatrixSource, Segment};
use lora_rank_core::spectral::{f32_kernels, kernels};
use lora_rank_core::Dtype;

fn quantile(times: &[f64], q: f64) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    t[((t.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; every other argument is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(12);
    let mut shapes: Vec<(usize, usize)> = args
        .iter()
        .filter_map(|a| a.split_once('x'))
        .map(|(m, n)| (m.parse().expect("rows"), n.parse().expect("cols")))
        .collect();
    if shapes.is_empty() {
        shapes = vec![(14336, 4096), (4096, 4096), (1024, 4096), (4096, 14336)];
    }
    let mut kinds = vec![PassKernel::Faer];
    if f32_kernels::available() {
        kinds.push(PassKernel::F32);
    }
    if kernels::available() {
        kinds.push(PassKernel::Bf16);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cancel = AtomicBool::new(false);
    for (rows, cols) in shapes {
        let path = dir.path().join(format!("w_{rows}x{cols}.bin"));
        write_bf16_matrix(&path, rows, cols);
        let file = File::open(&path).expect("open");
        let seg = Segment {
            bytes: ByteSource::File(&file),
            path: &path,
            offset: 0,
            rows,
        };
        let src = MatrixSource::new(vec![seg], cols, Dtype::BF16);
        let mut times = vec![Vec::new(); kinds.len()];
        for _ in 0..rounds {
            for (i, &kernel) in kinds.iter().enumerate() {
                let cfg = SolverConfig {
                    top_k: 32,
                    block: 40,
                    rtol: 1e-12,
                    max_iter: 3,
                    seed: 0,
                    chunks: rayon::current_num_threads(),
                    panel_elems: 1 << 30,
                    kernel,
                    par: Par::Seq,
                };
                let t = Instant::now();
                let outcome = randomized(&src, &cfg, &cancel).expect("solve");
                times[i].push(t.elapsed().as_secs_f64() / outcome.iterations as f64);
            }
        }
        let flops = 4.0 * (rows * cols * 40) as f64 / 1e9;
        for (i, kernel) in kinds.iter().enumerate() {
            let ratios: Vec<f64> = times[0].iter().zip(&times[i]).map(|(a, b)| a / b).collect();
            println!(
                "{rows}x{cols} {:>4}: {:6.1} GFLOP/s best, {:6.1} median; {} / {}, per round: median {:.2} (range {:.2}-{:.2})",
                kernel.name(),
                flops / quantile(&times[i], 0.0),
                flops / quantile(&times[i], 0.5),
                kinds[0].name(),
                kernel.name(),
                quantile(&ratios, 0.5),
                quantile(&ratios, 0.0),
                quantile(&ratios, 1.0),
            );
        }
    }
}
