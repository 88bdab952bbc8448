//! The spectral engine's streaming kernels on a Llama-3-8B MLP-shaped bf16 matrix
//! (14336 × 4096, 117 MB, random data in a temporary file):
//! - `decode`: positioned reads of every row panel, bf16 → f32;
//! - `fused_pass`: one randomized-solver pass (Y = P·X, acc += Pᵀ·Y per panel, block of 40
//!   columns) = `solver::randomized` capped at one iteration.
//!
//! Run with `cargo bench -p lora_rank_core --bench panel`.

mod common;
use common::write_bf16_matrix;
use std::fs::File;
use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use faer::Par;
use lora_rank_core::io::ByteSource;
use lora_rank_core::spectral::solver::{randomized, SolverConfig};
use lora_rank_core::spectral::source::{MatrixSource, Scratch, Segment};
use lora_rank_core::Dtype;

const ROWS: usize = 14336;
const COLS: usize = 4096;
/// Elements per decoded panel (the engine's default: 2 MiB of f32).
const PANEL_ELEMENTS: usize = 1 << 19;

fn bench_panel(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.bin");
    write_bf16_matrix(&path, ROWS, COLS);
    let file = File::open(&path).expect("open");
    let seg = Segment {
        bytes: ByteSource::File(&file),
        path: &path,
        offset: 0,
        rows: ROWS,
    };
    let src = MatrixSource::new(vec![seg], COLS, Dtype::BF16);
    let panel_rows = PANEL_ELEMENTS / COLS;

    let mut g = c.benchmark_group("panel");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(src.nbytes()));
    g.bench_function("decode/14336x4096 bf16", |b| {
        let mut bytes = Scratch::default();
        let mut out = vec![0f32; panel_rows * COLS];
        b.iter(|| {
            for p in src.panels(panel_rows) {
                src.read_panel(p, &mut bytes, &mut out, None).expect("read");
            }
            black_box(out[0])
        })
    });
    let cfg = SolverConfig {
        top_k: 32,
        block: 40,
        rtol: 1e-3,
        max_iter: 1,
        seed: 0,
        chunks: rayon::current_num_threads(),
        panel_elems: PANEL_ELEMENTS,
        kernel: lora_rank_core::spectral::solver::pass_kernel(),
        par: Par::Seq,
    };
    let cancel = AtomicBool::new(false);
    g.bench_function("fused_pass/14336x4096 bf16, block 40", |b| {
        b.iter(|| randomized(black_box(&src), &cfg, &cancel).expect("pass"))
    });
    g.finish();
}

criterion_group!(benches, bench_panel);
criterion_main!(benches);
