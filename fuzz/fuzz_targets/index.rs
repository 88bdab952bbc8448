//! Fuzz `lora_rank_core::checkpoint::parse_index_json`: no panic, and every accepted shard
//! name stays inside the checkpoint directory (relative, no `..`, no root or prefix).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../rust/lora_rank_core/tests/common/fuzz_checks.rs"]
mod fuzz_checks;
#[path = "../../rust/lora_rank_core/tests/common/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| fuzz_checks::check_index(data));
