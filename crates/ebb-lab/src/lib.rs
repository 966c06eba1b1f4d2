//! The ebb memory lab: sandboxes, zram swap and child workloads.
//!
//! Every ebb capability is judged under real memory pressure on a real kernel. This
//! crate provides the pieces for that, each cleaned up on drop:
//!
//! - [`Sandbox`]: a throwaway memory cgroup (v1 or v2) with limits, whose children join
//!   it before they run;
//! - [`ZramSwap`]: compressed swap in RAM, shareable by parallel test processes, and
//!   [`Lab`], its persistent form behind `ebb lab up` / `ebb lab down`;
//! - [`Hog`]: a child process that allocates patterned memory on command and verifies it.
//!
//! ```no_run
//! use ebb_lab::{Hog, Sandbox, SandboxConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::new(SandboxConfig {
//!     name_hint: "doc".into(),
//!     memory_limit: Some(64 << 20),
//!     swap_limit: Some(0),
//! })?;
//! let mut hog = Hog::spawn(Some(&sandbox))?;
//! hog.alloc(32 << 20)?;
//! assert!(hog.verify()?);
//! println!("usage {} failcnt {}", sandbox.usage()?, sandbox.failcnt()?);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod app;
pub mod bench;
pub mod hog;
mod proto;
pub mod sandbox;
pub mod zram;

pub use hog::Hog;
pub use sandbox::{Sandbox, SandboxConfig, sweep_stale};
pub use zram::{Lab, ZramStatus, ZramSwap};
