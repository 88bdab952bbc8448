//! Helpers shared by the integration tests.

pub mod fuzz_checks;
pub mod reference;
