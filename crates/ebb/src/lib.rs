//! ebb: memory the Linux kernel can take back.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod advice;
pub mod cgroup;
pub mod heap;
pub mod pressure;
pub mod procfs;
pub mod sys;

pub use advice::Advice;
