//! Fuzz `lora_rank_core::checkpoint::parse_index_json`: no panic, and every accepted shard
//! name stays inside the checkpoint directory (relative, no `..`, no root or prefix).
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use lora_rank_core::checkpoint::parse_index_json;

fuzz_target!(|data: &[u8]| {
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
});
