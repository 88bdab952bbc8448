//! Safetensors header parsing and validation, reading only the header bytes of a file.
//!
//! Layout: 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON, then the data.
//! The JSON maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the data start) plus an optional `"__metadata__"` string→string map. We check
//! everything the reference implementation checks and more (duplicate names, trailing bytes,
//! overflowing shapes), with one precise message per problem.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::io::read_exact_at;

/// Largest header the safetensors format allows.
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// One tensor described by a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data region.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length `N` of the JSON part.
    pub header_len: u64,
    /// Tensors sorted by their byte offset.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, if present.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Header {
    /// Absolute file offset where the data region starts.
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }
}

/// A JSON object kept in file order, so that duplicate keys can be reported
/// (a map type would silently keep the last one).
struct OrderedObject<V>(Vec<(String, V)>);

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for OrderedObject<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> Visitor<'de> for Fields<V> {
            type Value = OrderedObject<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// One top-level header entry: an object with its fields in file order, or any other value.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Entry {
    Object(OrderedObject<Value>),
    Other(Value),
}

impl Entry {
    /// The fields of an object entry, refusing duplicate field names (`what` names the entry
    /// in the message); `Ok(None)` for a non-object.
    fn into_fields(self, what: &str) -> std::result::Result<Option<Map<String, Value>>, String> {
        let Entry::Object(OrderedObject(fields)) = self else {
            return Ok(None);
        };
        let mut map = Map::with_capacity(fields.len());
        for (k, v) in fields {
            if map.contains_key(&k) {
                return Err(format!("{what}: duplicate field {k:?}"));
            }
            map.insert(k, v);
        }
        Ok(Some(map))
    }
}

/// The fields of one tensor entry, read in one pass (no untagged buffering of the entry):
/// the three known fields as JSON values, the first unexpected field and the first repeated
/// field in file order, or that the entry is not an object.
#[derive(Default)]
struct TensorFields {
    dtype: Option<Value>,
    shape: Option<Value>,
    offsets: Option<Value>,
    extra: Vec<String>,
    duplicate: Option<String>,
    not_object: bool,
}

impl<'de> serde::Deserialize<'de> for TensorFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(TensorFieldsVisitor)
    }
}

struct TensorFieldsVisitor;

impl TensorFieldsVisitor {
    fn not_object<E>() -> std::result::Result<TensorFields, E> {
        Ok(TensorFields {
            not_object: true,
            ..TensorFields::default()
        })
    }
}

impl<'de> Visitor<'de> for TensorFieldsVisitor {
    type Value = TensorFields;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor entry")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<TensorFields, A::Error> {
        let mut out = TensorFields::default();
        while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: Value = m.next_value()?;
            let slot = match key.as_ref() {
                "dtype" => &mut out.dtype,
                "shape" => &mut out.shape,
                "data_offsets" => &mut out.offsets,
                other => {
                    if out.extra.iter().any(|e| e == other) {
                        out.duplicate.get_or_insert_with(|| other.to_string());
                    } else {
                        out.extra.push(other.to_string());
                    }
                    continue;
                }
            };
            if slot.replace(value).is_some() {
                out.duplicate.get_or_insert_with(|| key.into_owned());
            }
        }
        Ok(out)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut s: A,
    ) -> std::result::Result<TensorFields, A::Error> {
        while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Self::not_object()
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
    fn visit_unit<E>(self) -> std::result::Result<TensorFields, E> {
        Self::not_object()
    }
}

/// Tensors and metadata of a header, before the layout check.
#[derive(Default)]
struct Entries {
    tensors: Vec<TensorInfo>,
    metadata: Option<BTreeMap<String, String>>,
    has_metadata: bool,
}

/// Reads the top-level object validating each entry as soon as it is read, so that memory
/// follows the tensors, not the JSON (a 100 MB header is never held as JSON values). The first
/// problem goes to `problem` and the rest of the object is only checked for syntax, so that a
/// truncated or malformed header is reported as such.
struct EntriesSeed<'a> {
    problem: &'a mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Entries, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Entries;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Entries, A::Error> {
        let mut out = Entries::default();
        while let Some(name) = m.next_key::<String>()? {
            if self.problem.is_some() {
                m.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let step = if name != "__metadata__" {
                let fields: TensorFields = m.next_value()?;
                parse_tensor(name, fields).map(|t| out.tensors.push(t))
            } else if std::mem::replace(&mut out.has_metadata, true) {
                m.next_value::<serde::de::IgnoredAny>()?;
                Err("duplicate entry \"__metadata__\"".to_string())
            } else {
                let entry: Entry = m.next_value()?;
                parse_metadata(entry).map(|md| out.metadata = md)
            };
            if let Err(msg) = step {
                *self.problem = Some(msg);
            }
        }
        Ok(out)
    }
}

/// Parse and validate the JSON part of a header, for a file whose data region is
/// `data_len` bytes long. Errors are plain messages; callers attach the path.
pub fn parse_header_json(json: &[u8], data_len: u64) -> std::result::Result<Header, String> {
    use serde::de::DeserializeSeed;
    let text = std::str::from_utf8(json).map_err(|e| format!("header is not valid UTF-8 ({e})"))?;
    let mut problem = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = EntriesSeed {
        problem: &mut problem,
    }
    .deserialize(&mut de)
    .and_then(|entries| de.end().map(|()| entries));
    let Entries {
        mut tensors,
        metadata,
        ..
    } = parsed.map_err(|e| {
        if e.is_data() {
            format!("header JSON is not an object of tensors ({e})")
        } else {
            format!("header is not valid JSON ({e})")
        }
    })?;
    if let Some(msg) = problem {
        return Err(msg);
    }
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("duplicate entry {:?}", w[0]));
    }
    validate_layout(&mut tensors, data_len)?;
    Ok(Header {
        header_len: json.len() as u64,
        tensors,
        metadata,
    })
}

fn parse_metadata(entry: Entry) -> std::result::Result<Option<BTreeMap<String, String>>, String> {
    if matches!(entry, Entry::Other(Value::Null)) {
        return Ok(None); // as the reference implementation: null means none
    }
    let Some(map) = entry.into_fields("__metadata__")? else {
        return Err("__metadata__ is not an object".into());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(format!(
                "__metadata__ value for {k:?} is not a string: {other} (__metadata__ is the \
                 string-to-string metadata map, it cannot name a tensor)"
            )),
        })
        .collect::<std::result::Result<_, _>>()
        .map(Some)
}

fn parse_tensor(name: String, fields: TensorFields) -> std::result::Result<TensorInfo, String> {
    if fields.not_object {
        return Err(format!("tensor {name:?}: entry is not an object"));
    }
    if let Some(k) = fields.duplicate {
        return Err(format!("tensor {name:?}: duplicate field {k:?}"));
    }
    let dtype_name = match fields.dtype {
        Some(Value::String(s)) => s,
        Some(_) => return Err(format!("tensor {name:?}: dtype is not a string")),
        None => return Err(format!("tensor {name:?}: missing dtype")),
    };
    let dtype = Dtype::parse(&dtype_name)
        .ok_or_else(|| format!("tensor {name:?}: unknown dtype {dtype_name:?}"))?;
    let shape = match fields.shape {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| {
                d.as_u64().ok_or_else(|| {
                    format!("tensor {name:?}: shape dimension {d} is not a non-negative integer")
                })
            })
            .collect::<std::result::Result<Vec<u64>, String>>()?,
        Some(_) => return Err(format!("tensor {name:?}: shape is not a list")),
        None => return Err(format!("tensor {name:?}: missing shape")),
    };
    let offsets = match fields.offsets {
        Some(Value::Array(o)) if o.len() == 2 => o
            .iter()
            .map(|x| {
                x.as_u64().ok_or_else(|| {
                    format!("tensor {name:?}: data offset {x} is not a non-negative integer")
                })
            })
            .collect::<std::result::Result<Vec<u64>, String>>()?,
        Some(_) => {
            return Err(format!(
                "tensor {name:?}: data_offsets is not a pair of integers"
            ))
        }
        None => return Err(format!("tensor {name:?}: missing data_offsets")),
    };
    // The alphabetically first, as the map the entry was read into before reported it.
    if let Some(extra) = fields.extra.iter().min() {
        return Err(format!("tensor {name:?}: unexpected field {extra:?}"));
    }
    let (begin, end) = (offsets[0], offsets[1]);
    if end < begin {
        return Err(format!(
            "tensor {name:?}: data_offsets [{begin}, {end}] are reversed"
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows"))?;
    let nbits = numel
        .checked_mul(dtype.bits())
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} overflows"))?;
    if nbits % 8 != 0 {
        return Err(format!(
            "tensor {name:?}: {numel} elements of {} do not fill whole bytes",
            dtype.name()
        ));
    }
    if end - begin != nbits / 8 {
        return Err(format!(
            "tensor {name:?}: data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {} needs {}",
            end - begin,
            dtype.name(),
            nbits / 8
        ));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

/// Tensors must tile the data region exactly: from 0, contiguous, no overlap, no trailing bytes.
fn validate_layout(tensors: &mut [TensorInfo], data_len: u64) -> std::result::Result<(), String> {
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let mut expected = 0u64;
    for t in tensors.iter() {
        if t.begin != expected {
            return Err(if expected == 0 {
                format!(
                    "tensor {:?}: data_offsets start at {}, but the first tensor must start at 0",
                    t.name, t.begin
                )
            } else if t.begin > expected {
                format!("gap before tensor {:?}: data_offsets start at {} but the previous tensor ends at {expected}", t.name, t.begin)
            } else {
                format!("tensor {:?}: data_offsets [{}, {}] overlap the previous tensor (ends at {expected})", t.name, t.begin, t.end)
            });
        }
        if t.end > data_len {
            return Err(format!(
                "tensor {:?}: data_offsets end at {} past the end of the data ({data_len} bytes): file truncated?",
                t.name, t.end
            ));
        }
        expected = t.end;
    }
    if expected != data_len {
        return Err(format!(
            "{} trailing bytes after the last tensor (data region is {data_len} bytes, tensors end at {expected})",
            data_len - expected
        ));
    }
    Ok(())
}

/// Parse a complete safetensors file held in memory (used by tests and fuzzing).
pub fn parse_bytes(buf: &[u8]) -> std::result::Result<Header, String> {
    parse_header_prefix(buf, buf.len() as u64)
}

/// Parse and validate the header of a file of `file_len` bytes from its first bytes `prefix`
/// (at least the 8-byte length and the JSON; e.g. fetched by an HTTP range request): the same
/// checks as [`read_header`] on a file. Errors are plain messages; callers attach the path.
pub fn parse_header_prefix(prefix: &[u8], file_len: u64) -> std::result::Result<Header, String> {
    let n = header_len(prefix, file_len)?;
    let json = prefix.get(8..8 + n as usize).ok_or_else(|| {
        format!(
            "header length {n} needs the first {} bytes of the file, only {} were given",
            8 + n,
            prefix.len()
        )
    })?;
    parse_header_json(json, file_len - 8 - n)
}

/// The JSON length `N` announced by the first 8 bytes of `prefix`, checked against the
/// format's limit and the size `file_len` of the file.
pub fn header_len(prefix: &[u8], file_len: u64) -> std::result::Result<u64, String> {
    if file_len >= 8 && prefix.len() < 8 {
        return Err(format!(
            "only {} of the 8 header-length bytes were given",
            prefix.len()
        ));
    }
    header_len_from_prefix(prefix.get(..8).filter(|_| file_len >= 8), file_len)
}

fn header_len_from_prefix(
    prefix: Option<&[u8]>,
    file_len: u64,
) -> std::result::Result<u64, String> {
    let p = prefix.ok_or_else(|| {
        format!("file is {file_len} bytes, shorter than the 8-byte header length")
    })?;
    let n = u64::from_le_bytes(p.try_into().expect("8 bytes"));
    if n > MAX_HEADER_SIZE {
        return Err(format!(
            "header length {n} exceeds the safetensors limit of {MAX_HEADER_SIZE} bytes"
        ));
    }
    if n > file_len - 8 {
        return Err(format!(
            "header length {n} is larger than the rest of the file ({} bytes): file truncated?",
            file_len - 8
        ));
    }
    Ok(n)
}

/// Read and validate the header of an open file of `file_len` bytes, touching only the header.
pub fn read_header(file: &File, file_len: u64, path: &Path) -> Result<Header> {
    let mut prefix = [0u8; 8];
    let prefix = if file_len >= 8 {
        read_exact_at(file, &mut prefix, 0, path)?;
        Some(&prefix[..])
    } else {
        None
    };
    let n = header_len_from_prefix(prefix, file_len).map_err(|m| Error::header(path, m))?;
    let mut json = vec![0u8; n as usize];
    read_exact_at(file, &mut json, 8, path)?;
    parse_header_json(&json, file_len - 8 - n).map_err(|m| Error::header(path, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a file image from a JSON header and a data length.
    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.resize(b.len() + data_len, 0);
        b
    }

    fn err(json: &str, data_len: usize) -> String {
        parse_bytes(&file(json, data_len)).unwrap_err()
    }

    #[test]
    fn parses_a_valid_header_in_offset_order() {
        let j = r#"{"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},
                    "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                    "__metadata__":{"format":"pt"}}"#;
        let h = parse_bytes(&file(j, 20)).unwrap();
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(h.tensors[1].numel(), 6);
        assert_eq!(h.metadata.unwrap()["format"], "pt");
    }

    #[test]
    fn agrees_with_the_reference_parser_on_valid_files() {
        use safetensors::tensor::{serialize, TensorView};
        let data = [0u8; 4 * 6 + 2 * 10];
        let views = vec![
            (
                "x",
                TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data[..24]).unwrap(),
            ),
            (
                "y",
                TensorView::new(safetensors::Dtype::BF16, vec![10], &data[24..]).unwrap(),
            ),
        ];
        let buf = serialize(views, None).unwrap();
        let ours = parse_bytes(&buf).unwrap();
        let reference = safetensors::SafeTensors::deserialize(&buf).unwrap();
        for t in &ours.tensors {
            let r = reference.tensor(&t.name).unwrap();
            assert_eq!(
                r.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(),
                t.shape
            );
            assert_eq!(r.data().len() as u64, t.end - t.begin);
        }
        assert_eq!(ours.tensors.len(), reference.len());
    }

    #[test]
    fn rejects_each_kind_of_bad_header() {
        let ok = r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
        let cases: &[(&str, usize, &str)] = &[
            (r#"[1,2]"#, 0, "not an object"),
            (r#"{"a":1"#, 0, "not valid JSON"),
            (&format!("{{{ok},{ok}}}"), 8, "duplicate entry \"a\""),
            (r#"{"__metadata__":{"k":1}}"#, 0, "not a string"),
            (r#"{"__metadata__":[]}"#, 0, "__metadata__ is not an object"),
            (
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#,
                8,
                "unknown dtype \"Q4\"",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
                8,
                "not a non-negative integer",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
                8,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "reversed",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
                "needs 8",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "the first tensor must start at 0",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#,
                20,
                "gap before tensor \"b\"",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8],"shape":[2,1]}}"#,
                8,
                "tensor \"a\": duplicate field \"shape\"",
            ),
            (
                r#"{"__metadata__":{"k":"1","k":"2"}}"#,
                0,
                "__metadata__: duplicate field \"k\"",
            ),
            (r#"{"a":[0,8]}"#, 8, "entry is not an object"),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "past the end",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                9,
                "1 trailing bytes",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}"#,
                8,
                "unexpected field",
            ),
            (
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
                2,
                "whole bytes",
            ),
        ];
        for (json, data_len, needle) in cases {
            let e = err(json, *data_len);
            assert!(e.contains(needle), "{json}: expected {needle:?} in {e:?}");
        }
    }

    #[test]
    fn rejects_bad_length_prefixes() {
        assert!(parse_bytes(&[])
            .unwrap_err()
            .contains("shorter than the 8-byte"));
        assert!(parse_bytes(&[1, 2, 3])
            .unwrap_err()
            .contains("shorter than the 8-byte"));
        let mut b = (MAX_HEADER_SIZE + 1).to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(parse_bytes(&b)
            .unwrap_err()
            .contains("exceeds the safetensors limit"));
        let mut b = 100u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(parse_bytes(&b)
            .unwrap_err()
            .contains("larger than the rest of the file"));
        assert!(parse_bytes(&file("\u{0}\u{ff}", 0)).is_err());
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xff, 0xfe]);
        assert!(parse_bytes(&b).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_prefix_parses_as_the_whole_file() {
        let j = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let whole = file(j, 8);
        let head = &whole[..8 + j.len()];
        let len = whole.len() as u64;
        assert_eq!(parse_header_prefix(head, len), parse_bytes(&whole));
        assert_eq!(header_len(head, len), Ok(j.len() as u64));
        let short = parse_header_prefix(&head[..20], len).unwrap_err();
        assert!(short.contains("only 20 were given"), "{short}");
        // The data region is checked against the file size, not against the prefix.
        assert!(parse_header_prefix(head, len + 4)
            .unwrap_err()
            .contains("trailing bytes"));
        assert!(header_len(&head[..4], len).is_err());
        assert!(header_len(head, 5)
            .unwrap_err()
            .contains("shorter than the 8-byte"));
    }

    #[test]
    fn accepts_padded_headers_and_empty_files() {
        // save_pretrained pads the JSON with spaces to an 8-byte boundary.
        let h = parse_bytes(&file("{}      ", 0)).unwrap();
        assert!(h.tensors.is_empty());
        // The reference implementation reads a null __metadata__ as no metadata.
        let h = parse_bytes(&file(r#"{"__metadata__":null}"#, 0)).unwrap();
        assert_eq!(h.metadata, None);
    }
}
