//! Benchmarks behind `ebb bench <name>`: each module has `Options`, `run` and a
//! serializable `Report` with a `render` table.

pub mod app_switch;
pub mod cache;
pub mod heap;
pub mod heap_child;
pub mod heap_pressure;
pub mod pressure;
pub mod volatile;
