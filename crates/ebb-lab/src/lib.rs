//! The ebb memory lab: sandboxes, zram swap and child workloads.
#![warn(missing_docs)]
