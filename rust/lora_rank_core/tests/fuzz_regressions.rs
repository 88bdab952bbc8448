//! The fuzz corpus kept in the repository (`fuzz/regressions/<target>/`: inputs the hour-long
//! fuzzing runs found new coverage with, minimized by `cargo fuzz cmin`, and any input that ever
//! crashed), replayed through the fuzz targets' own checks on every `cargo test`.

mod common;

use std::path::Path;

use common::fuzz_checks::{check_checkpoint, check_header, check_index};

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} failed its check",
            f.display()
        );
    }
    files.len()
}

#[test]
fn header_corpus() {
    assert!(replay("header", check_header) > 0);
}

#[test]
fn index_corpus() {
    assert!(replay("index", check_index) > 0);
}

#[test]
fn checkpoint_corpus() {
    assert!(replay("checkpoint", check_checkpoint) > 0);
}
