//! Property tests of the header and index parsers (the bounded, always-on counterpart of the
//! cargo-fuzz targets in `fuzz/`): random bytes never panic; files written by the reference
//! `safetensors` crate parse to exactly what it wrote; byte edits of valid files are either
//! refused or read exactly as the reference reads them; index shard names never escape.
//!
//! `PROPTEST_CASES=100000 cargo test -p lora_rank_core --test header_props` runs longer.

use std::path::{Component, Path};

mod common;
use common::reference::assert_same_as_reference;

use lora_rank_core::checkpoint::parse_index_json;
use lora_rank_core::header::parse_bytes;
use proptest::prelude::*;
use safetensors::tensor::{serialize, TensorView};

const DTYPES: &[(safetensors::Dtype, usize)] = &[
    (safetensors::Dtype::BOOL, 8),
    (safetensors::Dtype::F4, 4),
    (safetensors::Dtype::F6_E2M3, 6),
    (safetensors::Dtype::U8, 8),
    (safetensors::Dtype::F8_E4M3, 8),
    (safetensors::Dtype::F8_E5M2, 8),
    (safetensors::Dtype::F8_E8M0, 8),
    (safetensors::Dtype::I16, 16),
    (safetensors::Dtype::F16, 16),
    (safetensors::Dtype::BF16, 16),
    (safetensors::Dtype::F32, 32),
    (safetensors::Dtype::I64, 64),
    (safetensors::Dtype::F64, 64),
    (safetensors::Dtype::C64, 64),
];

/// (name, dtype index, shape) lists with unique names; shapes padded to whole bytes.
fn tensor_specs() -> impl Strategy<Value = Vec<(String, usize, Vec<usize>)>> {
    prop::collection::btree_map(
        "[a-z.0-9_]{1,12}|\\PC{1,6}",
        (0..DTYPES.len(), prop::collection::vec(0usize..5, 0..4)),
        0..6,
    )
    .prop_map(|m| {
        m.into_iter()
            .filter(|(name, _)| name != "__metadata__")
            .map(|(name, (d, mut shape))| {
                while !(shape.iter().product::<usize>() * DTYPES[d].1).is_multiple_of(8) {
                    shape.push(2);
                }
                (name, d, shape)
            })
            .collect()
    })
}

/// A file written by the reference serializer from `specs`, with optional metadata.
fn reference_file(specs: &[(String, usize, Vec<usize>)], meta: bool) -> Vec<u8> {
    let sizes: Vec<usize> = specs
        .iter()
        .map(|(_, d, s)| s.iter().product::<usize>() * DTYPES[*d].1 / 8)
        .collect();
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| i as u8).collect())
        .collect();
    let views: Vec<(&str, TensorView)> = specs
        .iter()
        .zip(&data)
        .map(|((name, d, shape), bytes)| {
            let view = TensorView::new(DTYPES[*d].0, shape.clone(), bytes).expect("valid view");
            (name.as_str(), view)
        })
        .collect();
    let metadata = meta.then(|| [("format".to_string(), "pt".to_string())].into());
    serialize(views, metadata).expect("serialize")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(h) = parse_bytes(&buf) {
            assert_same_as_reference(&buf, &h);
        }
    }

    #[test]
    fn random_json_behind_a_valid_length(json in "[{}\\[\\]\":,0-9a-zA-Z_ .-]{0,200}", pad in 0usize..32) {
        let mut buf = (json.len() as u64).to_le_bytes().to_vec();
        buf.extend_from_slice(json.as_bytes());
        buf.resize(buf.len() + pad, 0);
        if let Ok(h) = parse_bytes(&buf) {
            assert_same_as_reference(&buf, &h);
        }
    }

    #[test]
    fn files_of_the_reference_writer_round_trip(specs in tensor_specs(), meta in any::<bool>()) {
        let buf = reference_file(&specs, meta);
        let ours = parse_bytes(&buf).expect("a reference file parses");
        assert_same_as_reference(&buf, &ours);
        let mut names: Vec<&str> = ours.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let mut expected: Vec<&str> = specs.iter().map(|s| s.0.as_str()).collect();
        expected.sort_unstable();
        prop_assert_eq!(names, expected);
        prop_assert_eq!(ours.metadata.is_some(), meta);
    }

    #[test]
    fn byte_edits_of_valid_files(
        specs in tensor_specs(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        resize in -2i64..3,
    ) {
        let mut buf = reference_file(&specs, true);
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let len = (buf.len() as i64 + resize).max(0) as usize;
        buf.resize(len, 0);
        if let Ok(h) = parse_bytes(&buf) {
            assert_same_as_reference(&buf, &h);
        }
    }

    #[test]
    fn index_shard_names_never_escape(
        names in prop::collection::vec(
            prop::collection::vec(prop_oneof!["[a-z0-9-]{1,8}", Just("..".to_string()), Just(".".to_string()), Just("".to_string())], 1..4)
                .prop_map(|parts| parts.join("/")),
            1..4,
        ),
        absolute in any::<bool>(),
    ) {
        let shards: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| if absolute && i == 0 { format!("/{n}") } else { n.clone() })
            .collect();
        let map: Vec<String> = shards.iter().enumerate().map(|(i, s)| format!("\"t{i}\": {s:?}")).collect();
        let json = format!("{{\"metadata\": {{}}, \"weight_map\": {{{}}}}}", map.join(", "));
        let escapes = |s: &str| s.is_empty() || s.starts_with('/') || s.split('/').any(|p| p == "..");
        match parse_index_json(json.as_bytes()) {
            Ok(weight_map) => {
                for s in weight_map.values() {
                    prop_assert!(!escapes(s), "accepted {s:?}");
                    prop_assert!(Path::new(s).components().all(|c| matches!(c, Component::Normal(_))));
                }
            }
            Err(e) => prop_assert!(shards.iter().any(|s| escapes(s) || s.split('/').any(|p| p == "." || p.is_empty())), "{e}"),
        }
    }
}
