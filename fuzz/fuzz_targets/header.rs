//! Fuzz `lora_rank_core::header::parse_bytes` on whole file images.
//!
//! Beyond "no panic": every header we accept must satisfy the format's invariants and be
//! accepted, identically, by the reference `safetensors` crate (differential check), so that
//! a checkpoint is never read with shapes or offsets that another reader would disagree with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_rank_core::header::parse_bytes;

#[path = "../../rust/lora_rank_core/tests/common/reference.rs"]
mod reference;
use reference::assert_same_as_reference;

fuzz_target!(|data: &[u8]| {
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
});
