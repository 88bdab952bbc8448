//! Fuzz `lora_rank_core::open` on a whole directory: the input is split on `\n--\n` into an
//! index file and up to three shards written to a temporary directory. Exercises file reads,
//! discovery and the index ↔ shard cross-checks; must never panic and never accept a
//! checkpoint whose tensors fall outside their files.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SEP: &[u8] = b"\n--\n";

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

fuzz_target!(|data: &[u8]| {
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
});
