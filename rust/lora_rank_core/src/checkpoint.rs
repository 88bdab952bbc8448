//! Checkpoint discovery: resolve a path to its safetensors shards and read every header in
//! parallel, never the data.
//!
//! Accepted inputs: a directory with `*.safetensors.index.json` (its `weight_map` is followed
//! and cross-checked against the shards), a directory of `*.safetensors` files, a single
//! `.safetensors` file, and a Hugging Face cache entry (`models--org--name`, resolved through
//! `refs/main` to `snapshots/<rev>/`, whose files are symlinks into `blobs/`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use serde_json::Value;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::{read_header, Header};

/// Extensions of pickle-based checkpoints that we refuse to open.
const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl", "pickle"];

/// Size and modification time of a file when its header was read; a later mismatch means
/// the file changed underneath us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// One safetensors file of a checkpoint.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Path as opened (inside the checkpoint directory; symlinks are not resolved).
    pub path: PathBuf,
    /// File name relative to the checkpoint directory.
    pub name: String,
    pub stamp: FileStamp,
    pub header: Header,
}

/// One tensor with its location.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub shard: usize,
    /// Absolute byte range in the shard file.
    pub begin: u64,
    pub end: u64,
}

/// A resolved checkpoint: shards, tensors, and the text of `config.json` if present.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Directory holding the shards (for a single file, its parent).
    pub root: PathBuf,
    pub index_path: Option<PathBuf>,
    pub config_json: Option<String>,
    pub shards: Vec<Shard>,
    /// Tensors in shard order, then offset order.
    pub tensors: Vec<TensorRef>,
}

impl Checkpoint {
    /// Total number of elements over all tensors.
    pub fn total_params(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().product::<u64>())
            .sum()
    }
    /// Total bytes of tensor data over all shards.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.end - t.begin).sum()
    }
}

/// Resolve `path` and read all headers (in parallel on the current rayon pool).
pub fn open(path: &Path) -> Result<Checkpoint> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return open_file(path);
    }
    let dir = resolve_hf_cache(path)?;
    let index = match find_index(&dir)? {
        Some(index_path) => {
            let weight_map = read_index(&index_path)?;
            Some((index_path, weight_map))
        }
        None => None,
    };
    let shard_names = match &index {
        Some((_, weight_map)) => shard_names_of(weight_map),
        None => list_safetensors(&dir)?,
    };
    let shards = read_shards(&dir, &shard_names)?;
    let config_json = read_config(&dir)?;
    assemble(dir, index, config_json, shards)
}

/// A shard known by its size and first bytes (at least its whole header), e.g. fetched from a
/// remote file by HTTP range requests; `path` names it in messages.
#[derive(Debug, Clone)]
pub struct ShardPrefix {
    pub name: String,
    pub path: PathBuf,
    pub len: u64,
    pub prefix: Vec<u8>,
}

/// The checkpoint described by shard headers held in memory, with the same validation as
/// [`open`]: each header by [`crate::header::parse_header_prefix`] (in parallel), the index
/// (bytes of `*.safetensors.index.json`, named by its path) cross-checked against the shards,
/// or unique tensor names without one. Every shard the index lists must be given.
pub fn from_headers(
    root: PathBuf,
    index: Option<(PathBuf, &[u8])>,
    config_json: Option<String>,
    shards: Vec<ShardPrefix>,
) -> Result<Checkpoint> {
    let index = match index {
        Some((path, bytes)) => {
            let weight_map = parse_index_json(bytes).map_err(|m| Error::index(&path, m))?;
            Some((path, weight_map))
        }
        None => None,
    };
    if let Some((path, weight_map)) = &index {
        let given: std::collections::HashSet<&str> =
            shards.iter().map(|s| s.name.as_str()).collect();
        if let Some(missing) = shard_names_of(weight_map)
            .into_iter()
            .find(|n| !given.contains(n.as_str()))
        {
            return Err(Error::index(
                path,
                format!("shard {missing} listed in weight_map was not read"),
            ));
        }
    }
    let shards = shards
        .into_par_iter()
        .map(|s| {
            let header = crate::header::parse_header_prefix(&s.prefix, s.len)
                .map_err(|m| Error::header(&s.path, m))?;
            Ok(Shard {
                path: s.path,
                name: s.name,
                stamp: FileStamp {
                    len: s.len,
                    modified: None,
                },
                header,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    assemble(root, index, config_json, shards)
}

/// Cross-check the shards against the index (or, without one, require unique tensor names)
/// and list the tensors.
fn assemble(
    root: PathBuf,
    index: Option<(PathBuf, WeightMap)>,
    config_json: Option<String>,
    shards: Vec<Shard>,
) -> Result<Checkpoint> {
    match &index {
        Some((index_path, weight_map)) => cross_check_index(index_path, weight_map, &shards)?,
        None => check_unique_names(&root, &shards)?,
    }
    let tensors = collect_tensors(&shards);
    Ok(Checkpoint {
        root,
        index_path: index.map(|(p, _)| p),
        config_json,
        shards,
        tensors,
    })
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn refuse_pickle(path: &Path) -> Error {
    Error::unsupported(
        path,
        "pickle-based checkpoints (.bin/.pt/.pth/.ckpt) are refused and never loaded, because \
         unpickling can run arbitrary code; convert the checkpoint to safetensors first",
    )
}

fn open_file(path: &Path) -> Result<Checkpoint> {
    let ext = extension(path);
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(refuse_pickle(path));
    }
    if ext == "json" && path.to_string_lossy().ends_with(".index.json") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return open(dir);
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shards = vec![read_shard(path.to_path_buf(), name)?];
    let config_json = read_config(&dir)?;
    let tensors = collect_tensors(&shards);
    Ok(Checkpoint {
        root: dir,
        index_path: None,
        config_json,
        shards,
        tensors,
    })
}

/// `models--org--name` → `snapshots/<rev>` (via `refs/main`, or the only snapshot).
fn resolve_hf_cache(dir: &Path) -> Result<PathBuf> {
    let snapshots = dir.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(dir.to_path_buf());
    }
    // A FIFO or a huge file there is ignored, not waited on.
    if let Ok(Some(rev)) = read_small_file(&dir.join("refs").join("main"), true) {
        let rev = String::from_utf8_lossy(&rev);
        let rev = rev.trim();
        let snap = snapshots.join(rev);
        let plain = !rev.is_empty() && rev != "." && rev != ".." && !rev.contains(['/', '\\']);
        if plain && snap.is_dir() {
            return Ok(snap);
        }
    }
    let mut revs: Vec<PathBuf> = fs::read_dir(&snapshots)
        .map_err(|e| Error::io(&snapshots, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    revs.sort();
    match revs.len() {
        1 => Ok(revs.pop().expect("one")),
        0 => Err(Error::not_a_checkpoint(dir, "Hugging Face cache entry has no snapshot")),
        n => Err(Error::not_a_checkpoint(
            dir,
            format!("Hugging Face cache entry has {n} snapshots and no refs/main; pass one snapshots/<rev> directory"),
        )),
    }
}

fn find_index(dir: &Path) -> Result<Option<PathBuf>> {
    let preferred = dir.join("model.safetensors.index.json");
    if fs::symlink_metadata(&preferred).is_ok() {
        return Ok(Some(preferred));
    }
    let mut found: Vec<PathBuf> = read_dir_names(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".safetensors.index.json"))
        .map(|n| dir.join(n))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::not_a_checkpoint(
            dir,
            format!(
                "several index files ({}); pass one of them",
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn list_safetensors(dir: &Path) -> Result<Vec<String>> {
    let names = read_dir_names(dir)?;
    let shards: Vec<String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .cloned()
        .collect();
    if !shards.is_empty() {
        return Ok(shards);
    }
    if let Some(pickle) = names
        .iter()
        .find(|n| PICKLE_EXTENSIONS.contains(&extension(Path::new(n)).as_str()))
    {
        return Err(refuse_pickle(&dir.join(pickle)));
    }
    Err(Error::not_a_checkpoint(
        dir,
        "no *.safetensors files and no model.safetensors.index.json in this directory",
    ))
}

/// Tensor name → shard file name, as listed by an index file.
pub type WeightMap = BTreeMap<String, String>;

/// Largest index or `config.json` we read (the header limit of the format; real indexes of
/// the largest models are about 10 MB): a bigger file is refused instead of exhausting memory.
const MAX_JSON_FILE_SIZE: u64 = crate::header::MAX_HEADER_SIZE;

/// Read a small regular file whole. Non-regular files (a FIFO would block forever) and files
/// above [`MAX_JSON_FILE_SIZE`] are refused; `Ok(None)` when `missing_ok` and it is absent.
fn read_small_file(path: &Path, missing_ok: bool) -> Result<Option<Vec<u8>>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        return Err(Error::not_a_checkpoint(path, "not a regular file"));
    }
    if meta.len() > MAX_JSON_FILE_SIZE {
        return Err(Error::not_a_checkpoint(
            path,
            format!(
                "{} bytes is larger than the {MAX_JSON_FILE_SIZE}-byte limit for JSON files",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)
        .and_then(|f| f.take(MAX_JSON_FILE_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_JSON_FILE_SIZE {
        return Err(Error::Changed {
            path: path.to_path_buf(),
            msg: "grew past the size limit while being read".into(),
        });
    }
    Ok(Some(bytes))
}

/// Read and parse an index file: its tensor → shard map.
fn read_index(index_path: &Path) -> Result<WeightMap> {
    let bytes = read_small_file(index_path, false)?.unwrap_or_default();
    parse_index_json(&bytes).map_err(|m| Error::index(index_path, m))
}

/// The sorted unique shard names of a weight map.
pub fn shard_names_of(weight_map: &WeightMap) -> Vec<String> {
    // Neighbouring tensors mostly share a shard: skip repeats before the set (90k tensors of
    // DeepSeek-V3 in 163 shards).
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut last: Option<&str> = None;
    for shard in weight_map.values() {
        if last != Some(shard.as_str()) {
            names.insert(shard);
            last = Some(shard);
        }
    }
    names.into_iter().map(str::to_owned).collect()
}

/// Parse the bytes of a `*.safetensors.index.json` into its `weight_map`, checking that every
/// shard name stays inside the checkpoint directory. Errors are plain messages; callers attach
/// the path (used by [`open`] and by fuzzing).
pub fn parse_index_json(bytes: &[u8]) -> std::result::Result<WeightMap, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    /// What a well-formed index holds (read straight into the map; anything else is read
    /// again as JSON values to say what is wrong).
    #[derive(serde::Deserialize)]
    struct IndexFile {
        weight_map: EntryList,
    }
    let weight_map: WeightMap = match serde_json::from_str::<IndexFile>(text) {
        // Collected in one go: sorted (as indexes are written) is then checked in one pass
        // and built without a search per key; a repeated key keeps its last value, as a map
        // read entry by entry does.
        Ok(index) => index.weight_map.0.into_iter().collect(),
        Err(e) => return Err(index_problem(text, &e)),
    };
    let mut checked: HashSet<&str> = HashSet::new();
    let mut last: Option<&str> = None;
    for shard in weight_map.values() {
        if last != Some(shard.as_str()) && checked.insert(shard) {
            check_shard_name(shard)?;
        }
        last = Some(shard);
    }
    if weight_map.is_empty() {
        return Err("\"weight_map\" is empty".into());
    }
    Ok(weight_map)
}

/// A JSON object of strings as its entries in file order.
struct EntryList(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for EntryList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = EntryList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<EntryList, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(entry) = m.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(EntryList(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Why `text` is not an index with a `weight_map` of tensor → shard name strings.
fn index_problem(text: &str, typed: &serde_json::Error) -> String {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return format!("not valid JSON ({e})"),
    };
    if !value.is_object() {
        return "not a JSON object".into();
    }
    let Some(Value::Object(map)) = value.get("weight_map") else {
        return "missing \"weight_map\" object".into();
    };
    match map.iter().find(|(_, shard)| !shard.is_string()) {
        Some((tensor, _)) => format!("shard of tensor {tensor:?} is not a string"),
        None => format!("not a valid index ({typed})"),
    }
}

/// A shard name must stay inside the checkpoint directory: relative, no `..`.
fn check_shard_name(shard: &str) -> std::result::Result<(), String> {
    if shard.contains('\0') {
        return Err(format!("shard path {shard:?} contains a NUL byte"));
    }
    let p = Path::new(shard);
    let escapes = shard.is_empty()
        || p.is_absolute()
        || shard.starts_with('\\')
        || p.components().any(|c| !matches!(c, Component::Normal(_)));
    if escapes {
        return Err(format!(
            "shard path {shard:?} escapes the checkpoint directory"
        ));
    }
    Ok(())
}

fn read_shard(path: PathBuf, name: String) -> Result<Shard> {
    // Check before opening: opening a FIFO for reading blocks until a writer appears.
    if !fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .is_file()
    {
        return Err(Error::not_a_checkpoint(&path, "not a regular file"));
    }
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
    if !meta.is_file() {
        return Err(Error::not_a_checkpoint(&path, "not a regular file"));
    }
    let header = read_header(&file, meta.len(), &path)?;
    Ok(Shard {
        path,
        name,
        stamp: FileStamp::of(&meta),
        header,
    })
}

fn read_shards(dir: &Path, names: &[String]) -> Result<Vec<Shard>> {
    names
        .par_iter()
        .map(|n| read_shard(dir.join(n), n.clone()))
        .collect()
}

fn read_config(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    let Some(bytes) = read_small_file(&path, true)? else {
        return Ok(None);
    };
    String::from_utf8(bytes).map(Some).map_err(|e| {
        Error::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

fn collect_tensors(shards: &[Shard]) -> Vec<TensorRef> {
    let mut out = Vec::with_capacity(shards.iter().map(|s| s.header.tensors.len()).sum());
    for (i, s) in shards.iter().enumerate() {
        let base = s.header.data_start();
        out.extend(s.header.tensors.iter().map(|t| TensorRef {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            shard: i,
            begin: base + t.begin,
            end: base + t.end,
        }));
    }
    out
}

/// The first tensor name stored in two shards: `(name, first shard, second shard)`.
fn duplicate_name(shards: &[Shard]) -> Option<(&str, &str, &str)> {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    for s in shards {
        for t in &s.header.tensors {
            if let Some(first) = owner.insert(&t.name, &s.name) {
                return Some((&t.name, first, &s.name));
            }
        }
    }
    None
}

/// Without an index, a tensor name must appear in exactly one file.
fn check_unique_names(dir: &Path, shards: &[Shard]) -> Result<()> {
    match duplicate_name(shards) {
        Some((name, first, second)) => Err(Error::not_a_checkpoint(
            dir,
            format!("tensor {name:?} is stored in both {first} and {second}"),
        )),
        None => Ok(()),
    }
}

/// The index and the shards must agree exactly.
fn cross_check_index(index_path: &Path, weight_map: &WeightMap, shards: &[Shard]) -> Result<()> {
    // When every stored tensor is listed under its own shard, no name is stored twice (one of
    // the two copies would be listed under the other shard): the duplicate search (a hash
    // of every name) runs only when the check below would fail, so it still reports first.
    // One hash lookup per tensor instead of a tree search comparing long shared prefixes.
    let listed: HashMap<&str, &str> = weight_map
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let listed_in_own_shard = shards.iter().all(|s| {
        s.header
            .tensors
            .iter()
            .all(|t| listed.get(t.name.as_str()) == Some(&s.name.as_str()))
    });
    if !listed_in_own_shard {
        if let Some((name, first, second)) = duplicate_name(shards) {
            return Err(Error::index(
                index_path,
                format!("tensor {name:?} is stored in two shards, {first} and {second}"),
            ));
        }
    }
    if !listed_in_own_shard {
        for s in shards {
            for t in &s.header.tensors {
                match weight_map.get(&t.name) {
                    None => {
                        return Err(Error::index(
                            index_path,
                            format!(
                                "tensor {:?} in shard {} is not listed in weight_map",
                                t.name, s.name
                            ),
                        ))
                    }
                    Some(listed) if listed != &s.name => {
                        return Err(Error::index(
                            index_path,
                            format!(
                                "tensor {:?} is listed in {listed} but stored in {}",
                                t.name, s.name
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let stored: usize = shards.iter().map(|s| s.header.tensors.len()).sum();
    // Every stored tensor is listed once (names are unique across shards): the map lists more
    // only when some listed tensor is absent.
    if weight_map.len() == stored {
        return Ok(());
    }
    let found: HashSet<&str> = shards
        .iter()
        .flat_map(|s| s.header.tensors.iter().map(|t| t.name.as_str()))
        .collect();
    for (tensor, shard) in weight_map {
        if !found.contains(tensor.as_str()) {
            return Err(Error::index(
                index_path,
                format!("tensor {tensor:?} is listed in weight_map but absent from shard {shard}"),
            ));
        }
    }
    Ok(())
}
