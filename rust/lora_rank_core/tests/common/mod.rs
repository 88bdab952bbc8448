//! Helpers shared by the integration tests.

pub mod reference;
pub mod fuzz_checks;
