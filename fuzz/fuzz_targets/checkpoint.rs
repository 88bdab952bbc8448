//! Fuzz `lora_rank_core::open` on a whole directory: the input is split on `\n--\n` into an
//! index file and up to three shards written to a temporary directory. Exercises file reads,
//! discovery and the index ↔ shard cross-checks; must never panic and never accept a
//! checkpoint whose tensors fall outside their files.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../rust/lora_rank_core/tests/common/fuzz_checks.rs"]
mod fuzz_checks;
#[path = "../../rust/lora_rank_core/tests/common/reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| fuzz_checks::check_checkpoint(data));
