//! Benchmarks: programs that measure ebb against baselines side by side, in one run.
//!
//! Each benchmark has `Options` (with `Default`), a `run` function and a `Report` that
//! serialises to the JSON contract of its issue and renders a human table.

pub mod app_switch;
