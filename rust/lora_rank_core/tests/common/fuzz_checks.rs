//! What each cargo-fuzz target checks on one input, shared by the targets (`fuzz/fuzz_targets/`,
//! through `#[path]`) and by `tests/fuzz_regressions.rs`, which replays the kept corpus
//! (`fuzz/regressions/<target>/`) on every `cargo test`.

#![allow(dead_code)] // each includer uses the checks of its own target

use std::path::{Component, Path};

use lora_rank_core::checkpoint::parse_index_json;
use lora_rank_core::header::parse_bytes;

use super::reference::assert_same_as_reference;

/// `header`: `parse_bytes` on a whole file image; an accepted header tiles the data region
/// exactly and agrees with the reference `safetensors` crate.
pub fn check_header(data: &[u8]) {
    let Ok(ours) = parse_bytes(data) else {
        return;
    };
    // The data region is tiled exactly by the tensors, in offset order.
    let data_len = data.len() as u64 - ours.data_start();
    let mut expected = 0;
    for t in &ours.tensors {
        assert_eq!(t.begin, expected, "{t:?}");
        assert_eq!((t.end - t.begin) * 8, t.numel() * t.dtype.bits(), "{t:?}");
        expected = t.end;
    }
    assert_eq!(expected, data_len);
    assert_same_as_reference(data, &ours);
}

/// `index`: an accepted `model.safetensors.index.json` names only shards inside its directory.
pub fn check_index(data: &[u8]) {
    let Ok(weight_map) = parse_index_json(data) else {
        return;
    };
    assert!(!weight_map.is_empty());
    for shard in weight_map.values() {
        let p = Path::new(shard);
        assert!(!shard.is_empty() && !p.is_absolute(), "{shard:?}");
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{shard:?} escapes the directory"
        );
    }
}

const SEP: &[u8] = b"\n--\n";

/// The parts of a `checkpoint` input: an optional index, then shards, split at `SEP`.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 3 {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// `checkpoint`: a directory of an optional index and up to three shards; an accepted
/// checkpoint's tensors lie inside their shard files.
pub fn check_checkpoint(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = split(data);
    let (index, shards) = if parts.len() > 1 {
        (Some(parts[0]), &parts[1..])
    } else {
        (None, &parts[..])
    };
    if let Some(index) = index {
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    }
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        std::fs::write(dir.path().join(name), shard).unwrap();
    }
    if let Ok(ckpt) = lora_rank_core::open(dir.path()) {
        for t in &ckpt.tensors {
            let shard = &ckpt.shards[t.shard];
            assert!(t.begin <= t.end && t.end <= shard.stamp.len, "{t:?}");
        }
    }
}
