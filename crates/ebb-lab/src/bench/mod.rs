//! Benchmarks: each module exposes `Options`, `run(&Options) -> Result<Report, Error>` and a
//! serialisable `Report` with `render()`; `ebb bench <name>` wires them to the command line.

pub mod cache;
pub mod volatile;
