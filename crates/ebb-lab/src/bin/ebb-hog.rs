//! A child workload for the memory lab.
fn main() {}
