//! Benchmarks behind `ebb bench <name>`: each reports ratios measured side by side in one run.

pub mod heap;
pub mod heap_child;
