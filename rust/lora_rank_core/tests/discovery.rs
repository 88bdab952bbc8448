//! Checkpoint discovery: every accepted layout resolves to the same tensors, and the index is
//! cross-checked against the shards.

use std::fs;
use std::path::Path;

use lora_rank_core::{open, Error};
use safetensors::tensor::{serialize, TensorView};
use safetensors::Dtype;

/// Write a safetensors file holding `names` as 2×3 F32 tensors.
fn write_shard(path: &Path, names: &[&str]) {
    let data = vec![0u8; 24];
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .map(|n| (*n, TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap()))
        .collect();
    fs::write(path, serialize(views, None).unwrap()).unwrap();
}

fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let entries: Vec<String> = map
        .iter()
        .map(|(t, s)| format!("\"{t}\": \"{s}\""))
        .collect();
    fs::write(
        dir.join("model.safetensors.index.json"),
        format!(
            "{{\"metadata\": {{}}, \"weight_map\": {{{}}}}}",
            entries.join(", ")
        ),
    )
    .unwrap();
}

fn sharded(dir: &Path) {
    write_shard(
        &dir.join("model-00001-of-00002.safetensors"),
        &["a.weight", "b.weight"],
    );
    write_shard(&dir.join("model-00002-of-00002.safetensors"), &["c.weight"]);
    write_index(
        dir,
        &[
            ("a.weight", "model-00001-of-00002.safetensors"),
            ("b.weight", "model-00001-of-00002.safetensors"),
            ("c.weight", "model-00002-of-00002.safetensors"),
        ],
    );
    fs::write(dir.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
}

fn names(path: &Path) -> Vec<String> {
    let mut n: Vec<String> = open(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|t| t.name)
        .collect();
    n.sort();
    n
}

#[test]
fn indexed_directory_reads_every_shard_and_config() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    let ckpt = open(dir.path()).unwrap();
    assert_eq!(ckpt.shards.len(), 2);
    assert_eq!(ckpt.total_params(), 18);
    assert_eq!(ckpt.total_bytes(), 72);
    assert!(ckpt.config_json.unwrap().contains("llama"));
    assert_eq!(names(dir.path()), ["a.weight", "b.weight", "c.weight"]);
    // the index file itself is accepted as the path
    assert_eq!(
        names(&dir.path().join("model.safetensors.index.json")),
        names(dir.path())
    );
    // absolute data offsets: each tensor's range lies after its shard's header
    for t in open(dir.path()).unwrap().tensors {
        assert_eq!(t.end - t.begin, 24);
        assert!(t.begin >= 8);
    }
}

#[test]
fn plain_directory_and_single_file() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(&dir.path().join("x.safetensors"), &["a.weight"]);
    write_shard(&dir.path().join("y.safetensors"), &["b.weight"]);
    assert_eq!(names(dir.path()), ["a.weight", "b.weight"]);
    assert_eq!(names(&dir.path().join("y.safetensors")), ["b.weight"]);
}

#[cfg(unix)]
#[test]
fn hugging_face_cache_entry_resolves_through_refs_main() {
    let root = tempfile::tempdir().unwrap();
    let entry = root.path().join("models--org--name");
    let snap = entry.join("snapshots").join("abc123");
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(entry.join("blobs")).unwrap();
    fs::create_dir_all(entry.join("refs")).unwrap();
    fs::write(entry.join("refs").join("main"), "abc123\n").unwrap();
    write_shard(&entry.join("blobs").join("deadbeef"), &["a.weight"]);
    std::os::unix::fs::symlink("../../blobs/deadbeef", snap.join("model.safetensors")).unwrap();
    let ckpt = open(&entry).unwrap();
    assert_eq!(ckpt.root, snap);
    assert_eq!(names(&entry), ["a.weight"]);
}

#[test]
fn index_disagreements_are_errors() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("a.weight", "model-00001-of-00002.safetensors")],
            "not listed in weight_map",
        ),
        (
            &[
                ("a.weight", "model-00001-of-00002.safetensors"),
                ("b.weight", "model-00001-of-00002.safetensors"),
                ("c.weight", "model-00002-of-00002.safetensors"),
                ("d.weight", "model-00002-of-00002.safetensors"),
            ],
            "absent from shard",
        ),
        (
            &[
                ("a.weight", "model-00001-of-00002.safetensors"),
                ("b.weight", "model-00001-of-00002.safetensors"),
                ("c.weight", "model-00001-of-00002.safetensors"),
            ],
            "listed in weight_map but absent from shard model-00001-of-00002.safetensors",
        ),
        (
            &[("a.weight", "../outside.safetensors")],
            "escapes the checkpoint directory",
        ),
        (
            &[("a.weight", "/etc/passwd")],
            "escapes the checkpoint directory",
        ),
    ];
    for (map, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        sharded(dir.path());
        write_index(dir.path(), map);
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Index { .. }), "{needle}: {err}");
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in {err}"
        );
    }
}

#[test]
fn missing_shard_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn pickles_are_refused_and_empty_dirs_rejected() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x04not really").unwrap();
    let err = open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("never loaded"));
    assert!(matches!(
        open(&dir.path().join("pytorch_model.bin")),
        Err(Error::Unsupported { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        open(empty.path()),
        Err(Error::NotACheckpoint { .. })
    ));
}

#[test]
fn duplicate_tensor_across_unindexed_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(&dir.path().join("x.safetensors"), &["a.weight"]);
    write_shard(&dir.path().join("y.safetensors"), &["a.weight"]);
    let err = open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("stored in both"), "{err}");
}

/// Shards given by their first bytes (as fetched by HTTP range requests) give the checkpoint
/// `open` reads from the files, and the index is cross-checked the same way.
#[test]
fn headers_from_bytes_give_the_checkpoint_of_the_files() {
    use lora_rank_core::checkpoint::{from_headers, ShardPrefix};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sharded(dir);
    let local = open(dir).unwrap();
    let index_path = dir.join("model.safetensors.index.json");
    let index = fs::read(&index_path).unwrap();
    let prefixes = |names: &[&str]| -> Vec<ShardPrefix> {
        names
            .iter()
            .map(|n| {
                let bytes = fs::read(dir.join(n)).unwrap();
                let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                ShardPrefix {
                    name: n.to_string(),
                    path: dir.join(n),
                    len: bytes.len() as u64,
                    prefix: bytes[..header_end + 3].to_vec(),
                }
            })
            .collect()
    };
    let both = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let remote = from_headers(
        dir.to_path_buf(),
        Some((index_path.clone(), &index)),
        local.config_json.clone(),
        prefixes(&both),
    )
    .unwrap();
    let key = |c: &lora_rank_core::Checkpoint| {
        c.tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone(), t.shard, t.begin, t.end))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&remote), key(&local));
    assert_eq!(remote.total_bytes(), local.total_bytes());
    let err = from_headers(
        dir.to_path_buf(),
        Some((index_path.clone(), &index)),
        None,
        prefixes(&both[..1]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Index { .. }), "{err}");
    assert!(err.to_string().contains("model-00002-of-00002.safetensors"));
    // A header prefix whose file is longer than its tensors: trailing bytes, naming the shard.
    let mut grown = prefixes(&both[1..]);
    grown[0].len += 4;
    let err = from_headers(dir.to_path_buf(), None, None, grown).unwrap_err();
    assert!(matches!(err, Error::Header { .. }), "{err}");
    assert!(err.to_string().contains("trailing bytes"), "{err}");
}
