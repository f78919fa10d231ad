//! The config crate's integration tests: one test binary (as ripgrep's `tests/tests.rs`),
//! one module per topic. Run one topic with `cargo test -p gatehouse-config --test config
//! golden::`; `UPDATE_GOLDEN=1` rewrites the golden files (see `golden.rs`).

mod util;

mod directory;
mod golden;
mod load;
