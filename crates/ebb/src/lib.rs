//! ebb: memory the Linux kernel can take back.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod advice;
pub mod cache;
pub mod cgroup;
pub mod pressure;
pub mod procfs;
pub mod sys;
pub mod volatile;

pub use advice::Advice;
