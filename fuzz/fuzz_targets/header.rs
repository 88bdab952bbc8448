//! Fuzz `lora_rank_core::header::parse_bytes` on whole file images.
//!
//! Beyond "no panic": every header we accept must satisfy the format's invariants and be
//! accepted, identically, by the reference `safetensors` crate (differential check), so that
//! a checkpoint is never read with shapes or offsets that another reader would disagree with.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../rust/lora_rank_core/tests/common/fuzz_checks.rs"]
mod fuzz_checks;
#[path = "../../rust/lora_rank_core/tests/common/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| fuzz_checks::check_header(data));
