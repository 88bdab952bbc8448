//! `lora_rank_core`: read safetensors checkpoints header-first, never loading a model.
//!
//! - [`checkpoint`]: discovery (directory, index, single file, HF cache) and parallel headers;
//! - [`header`]: safetensors header parsing and validation;
//! - [`dtype`]: dtypes and block decoding to `f32`;
//! - [`io`]: positioned reads that turn truncation into errors, never SIGBUS;
//! - [`names`]: layer and expert indices of parameter names, name patterns, natural order;
//! - [`quant`]: dequantization of FP8 block-scaled, GPTQ and AWQ weights while streaming;
//! - [`spectral`]: streaming randomized / exact singular values and spectral statistics.
//!
//! No Python here: the `lora_rank_py` crate wraps this one.

pub mod checkpoint;
pub mod dtype;
pub mod error;
pub mod header;
pub mod io;
pub mod names;
pub mod quant;
pub mod spectral;

pub use checkpoint::{open, Checkpoint, Shard, TensorRef};
pub use dtype::Dtype;
pub use error::{Error, Result};
