//! ebbd: proactive reclaim of cached processes, Android's design for any Linux host.
//!
//! Android keeps cached apps alive for fast hot starts, and reclaims them from userspace as
//! they enter the cached state (MADV_COLD for file pages, MADV_PAGEOUT for anonymous ones), so
//! that the low-memory killer acts only as a last resort. ebbd does the same for any Linux
//! process: it ranks processes into bands from `oom_score_adj` (or a `mark` over its socket,
//! or a cached/frozen cgroup), compacts those that enter the cached band, and kills — highest
//! adj first — only when a pressure signal says memory is about to run out.
//!
//! This crate is policy only: every kernel operation goes through [`ebb`].
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | the TOML configuration, defaults, errors with line and column |
//! | [`ranks`] | bands from adj, marks |
//! | [`scan`] | discovery: the /proc scan with change detection (and why it scales) |
//! | [`compaction`] | COLD/PAGEOUT of a process entering cached, throttles, cancellation, prefetch |
//! | [`killer`] | the lmkd-style last-resort killer |
//! | [`daemon`] | the policy loop tying them together |
//! | [`server`], [`client`] | the Unix socket protocol (`mark`, `status`) |
//! | [`metrics`] | counters, `status`, Prometheus text |
//!
//! Running it in-process (the binary `ebbd` does the same plus signals and logs):
//!
//! ```no_run
//! use ebbd::config::Config;
//! use ebbd::daemon::{Daemon, Options};
//! let mut config = Config::default();
//! config.scope.cgroup = "/sys/fs/cgroup/memory/ebb-mine".into();
//! config.socket.path = "/tmp/ebbd.sock".into();
//! let mut daemon = Daemon::start(Options { config, ..Options::default() })?;
//! let control = daemon.control();
//! std::thread::spawn(move || { std::thread::sleep(std::time::Duration::from_secs(5)); control.stop() });
//! daemon.run();
//! # Ok::<(), ebbd::daemon::Error>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod client;
pub mod compaction;
pub mod config;
pub mod daemon;
pub mod killer;
pub mod metrics;
pub mod ranks;
pub mod scan;
pub mod server;
