//! ebb: memory the Linux kernel can take back.
//!
//! ebb gives Rust programs typed access to the kernel's memory hints and shows what they
//! actually did:
//!
//! - [`Advice`]: madvise(2) hints as an enum; destructive ones (FREE, DONTNEED) only through
//!   `&mut` access or `unsafe`.
//! - [`Region`]: an owned anonymous mapping to advise, probe (mincore) and measure (smaps).
//! - [`Process`]: another process held by a pidfd, advised with process_madvise(2), with
//!   Rss/Swap measured before and after.
//! - [`Capabilities`]: what this kernel and this process can do.
//! - [`procfs`] and [`cgroup`]: typed, panic-free readers of /proc and memory cgroup files.
//!
//! ```
//! use ebb::{Advice, Capabilities, Region};
//!
//! let caps = Capabilities::detect();
//! let mut region = Region::new(4 << 20)?;
//! region.as_mut_slice().fill(0xab);
//! if caps.supports(Advice::Cold) {
//!     // Non-destructive: the bytes stay, the pages move to the inactive list.
//!     region.advise(.., Advice::Cold)?;
//! }
//! // Destructive advice needs exclusive access.
//! region.advise_mut(..1 << 20, Advice::DontNeed)?;
//! assert_eq!(region.as_slice()[0], 0);
//! assert_eq!(region.as_slice()[2 << 20], 0xab);
//! let stats = region.stats()?;
//! assert!(stats.rss >= 3 << 20);
//! # Ok::<(), ebb::region::Error>(())
//! ```
//!
//! The layers, bottom to top: the kernel interface ([`sys`], [`procfs`], [`cgroup`]), typed
//! hints and mappings ([`advice`], [`region`], [`process`], [`caps`]). A module never reaches
//! up a layer. `unsafe` lives only in [`sys`] and [`region`], each with its contract stated
//! in its module docs.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod advice;
pub mod cache;
pub mod caps;
pub mod cgroup;
pub mod heap;
pub mod pressure;
pub mod process;
pub mod procfs;
pub mod region;
pub mod sys;
pub mod volatile;

pub use advice::Advice;
pub use caps::Capabilities;
pub use process::Process;
pub use region::{Region, RegionOptions, RegionStats};
