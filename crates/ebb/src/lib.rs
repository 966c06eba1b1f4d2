//! ebb: memory the Linux kernel can take back.
//!
//! The layers, bottom to top:
//! - the kernel interface ([`sys`], [`procfs`], [`cgroup`]): syscalls, /proc and cgroup files;
//! - typed hints and mappings ([`Advice`], [`Region`], [`Process`], [`Capabilities`]).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod cgroup;
pub mod procfs;
