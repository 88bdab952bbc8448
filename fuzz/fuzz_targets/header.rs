//! Fuzz `lora_rank_core::header::parse_bytes` on whole file images.
//!
//! Beyond "no panic": every header we accept must satisfy the format's invariants and be
//! accepted, identically, by the reference `safetensors` crate (differential check), so that
//! a checkpoint is never read with shapes or offsets that another reader would disagree with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_rank_core::header::parse_bytes;

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

    let (n, reference) = safetensors::SafeTensors::read_metadata(data)
        .unwrap_or_else(|e| panic!("we accept a header the reference parser rejects: {e:?}"));
    assert_eq!(n as u64, ours.header_len);
    let theirs = reference.tensors();
    assert_eq!(theirs.len(), ours.tensors.len());
    for t in &ours.tensors {
        let r = theirs
            .get(&t.name)
            .unwrap_or_else(|| panic!("{:?} missing from the reference parse", t.name));
        assert_eq!(format!("{:?}", r.dtype), t.dtype.name());
        assert_eq!(
            r.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            t.shape
        );
        assert_eq!(r.data_offsets, (t.begin as usize, t.end as usize));
    }
    let their_meta = reference.metadata().as_ref().filter(|m| !m.is_empty());
    let our_meta = ours.metadata.as_ref().filter(|m| !m.is_empty());
    assert_eq!(their_meta.map(|m| m.len()), our_meta.map(|m| m.len()));
    if let (Some(a), Some(b)) = (their_meta, our_meta) {
        for (k, v) in b {
            assert_eq!(a.get(k), Some(v));
        }
    }
});
