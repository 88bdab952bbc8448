//! The differential oracle shared by `tests/header_props.rs` and the cargo-fuzz `header`
//! target (`fuzz/fuzz_targets/header.rs` includes this file by path).

use lora_rank_core::header::Header;

/// We accepted `buf` as `ours`: the reference `safetensors` crate must accept it too and read
/// the same header length, tensor names, dtypes, shapes and offsets.
pub fn assert_same_as_reference(buf: &[u8], ours: &Header) {
    let (n, reference) = safetensors::SafeTensors::read_metadata(buf)
        .unwrap_or_else(|e| panic!("we accept what the reference rejects ({e:?})"));
    assert_eq!(n as u64, ours.header_len);
    let theirs = reference.tensors();
    assert_eq!(theirs.len(), ours.tensors.len());
    for t in &ours.tensors {
        let r = theirs
            .get(&t.name)
            .unwrap_or_else(|| panic!("{:?} missing from the reference parse", t.name));
        assert_eq!(format!("{:?}", r.dtype), t.dtype.name());
        let shape: Vec<u64> = r.shape.iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape);
        assert_eq!(r.data_offsets, (t.begin as usize, t.end as usize));
    }
    let their_meta = reference.metadata().as_ref().filter(|m| !m.is_empty());
    let our_meta = ours.metadata.as_ref().filter(|m| !m.is_empty());
    assert_eq!(their_meta.map(|m| m.len()), our_meta.map(|m| m.len()));
    if let (Some(a), Some(b)) = (their_meta, our_meta) {
        for (k, v) in b {
            assert_eq!(a.get(k), Some(v), "metadata {k:?}");
        }
    }
}
