//! Header parsing on Llama-3-70B-shaped data: the 723-tensor header JSON of the whole model
//! (as one file would hold it; ours and the `safetensors` crate's), and `open()` of the
//! 30-shard checkpoint (headers written, data left as filesystem holes). Run with `cargo bench -p lora_rank_core --bench header`.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map, Value};

const HIDDEN: u64 = 8192;
const INTERMEDIATE: u64 = 28672;
const LAYERS: u64 = 80;
const KV: u64 = 1024; // 8 key/value heads of 128
const VOCAB: u64 = 128256;

/// (name, shape) of every tensor of Llama-3-70B as `save_pretrained` names them.
fn llama70b_tensors() -> Vec<(String, Vec<u64>)> {
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".to_string(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj", vec![KV, HIDDEN]),
            ("self_attn.v_proj", vec![KV, HIDDEN]),
            ("self_attn.o_proj", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.up_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.down_proj", vec![HIDDEN, INTERMEDIATE]),
            ("input_layernorm", vec![HIDDEN]),
            ("post_attention_layernorm", vec![HIDDEN]),
        ] {
            t.push((format!("{p}.{name}.weight"), shape));
        }
    }
    t.sort();
    t
}

/// Safetensors header JSON (bf16, contiguous offsets) and the data length it implies.
fn header_json(tensors: &[(String, Vec<u64>)]) -> (Vec<u8>, u64) {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let end = offset + 2 * shape.iter().product::<u64>();
        map.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(map)).expect("serializable");
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    (bytes, offset)
}

/// Write the 70B checkpoint as 30 header-true, data-sparse shards with an index.
fn write_sparse_checkpoint(dir: &Path, tensors: &[(String, Vec<u64>)], shards: usize) {
    let mut weight_map = Map::new();
    let per = tensors.len().div_ceil(shards);
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        let (json, data_len) = header_json(chunk);
        let mut f = File::create(dir.join(&name)).expect("create shard");
        f.write_all(&(json.len() as u64).to_le_bytes())
            .expect("write");
        f.write_all(&json).expect("write");
        f.set_len(8 + json.len() as u64 + data_len)
            .expect("extend with a hole");
        for (t, _) in chunk {
            weight_map.insert(t.clone(), Value::String(name.clone()));
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).expect("config");
}

fn bench_header(c: &mut Criterion) {
    let tensors = llama70b_tensors();
    let (json, data_len) = header_json(&tensors);
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("parse_header_json/llama3-70b (723 tensors)", |b| {
        b.iter(|| lora_rank_core::header::parse_header_json(black_box(&json), data_len))
    });
    // Reference: the `safetensors` crate's header parse + validation (`read_metadata` minus
    // its whole-buffer length check, which would need the 141 GB of data in memory).
    let text = std::str::from_utf8(&json).expect("utf-8");
    g.bench_function(
        "safetensors::tensor::Metadata/llama3-70b (reference)",
        |b| b.iter(|| serde_json::from_str::<safetensors::tensor::Metadata>(black_box(text))),
    );
    g.finish();

    let dir = tempfile::tempdir().expect("tempdir");
    write_sparse_checkpoint(dir.path(), &tensors, 30);
    let mut g = c.benchmark_group("checkpoint");
    g.bench_function("open/llama3-70b (30 shards)", |b| {
        b.iter(|| lora_rank_core::open(black_box(dir.path())).expect("opens"))
    });
    g.finish();
}

criterion_group!(benches, bench_header);
criterion_main!(benches);
