//! [`Monitor::auto`]: choosing the sources the host offers, and saying which and why.
//!
//! The rule, in order:
//! 1. The cgroup (this process's memory cgroup, or the one given): v1 → `memory.pressure_level`;
//!    v2 → a PSI trigger on its `memory.pressure` and `memory.events`. Either version → a
//!    usage/limit watermark, if the group has a limit.
//! 2. System-wide PSI (`/proc/pressure/memory`), unless a v2 cgroup trigger was picked.
//! 3. MemAvailable, when no watermark was picked (no cgroup, or no limit): the fallback that
//!    works everywhere.
//!
//! PSI triggers use [`AUTO_PSI_THRESHOLD`] of `some` stall within [`AUTO_PSI_WINDOW`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::source::{CgroupVersion, memory_cgroup_version};
use super::{Error, Monitor, MonitorOptions, Source, SourceKind, Stall};

/// The stall threshold of the PSI triggers `auto` registers.
pub const AUTO_PSI_THRESHOLD: Duration = Duration::from_millis(100);
/// The window of the PSI triggers `auto` registers (2 s: accepted by every kernel, also
/// for unprivileged users).
pub const AUTO_PSI_WINDOW: Duration = Duration::from_secs(2);

/// One source [`Monitor::auto`] considered.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    /// The kind of source.
    pub kind: SourceKind,
    /// The file or cgroup it would watch.
    pub target: PathBuf,
    /// Whether it was registered.
    pub picked: bool,
    /// Why it was picked, or why not (the registration error).
    pub why: String,
}

impl Monitor {
    /// A monitor over the best sources for this process: its own memory cgroup (from
    /// /proc/self/cgroup), system PSI, and MemAvailable where no cgroup limit is watched.
    /// [`Monitor::choices`] says what was picked and why.
    pub fn auto() -> Result<Monitor, Error> {
        Monitor::auto_with(None, MonitorOptions::default())
    }

    /// A monitor over the best sources for `cgroup` (a v1 or v2 memory cgroup directory).
    pub fn auto_for(cgroup: impl AsRef<Path>) -> Result<Monitor, Error> {
        Monitor::auto_with(Some(cgroup.as_ref()), MonitorOptions::default())
    }

    /// [`Monitor::auto`] (`cgroup` `None`) or [`Monitor::auto_for`], with options.
    pub fn auto_with(cgroup: Option<&Path>, options: MonitorOptions) -> Result<Monitor, Error> {
        let mut choices = Vec::new();
        let cgroup = match cgroup {
            Some(path) => {
                let version = memory_cgroup_version(path)?;
                Some((path.to_path_buf(), version, "the cgroup given"))
            }
            None => match crate::cgroup::own_memory_cgroup(std::process::id()) {
                Ok(Some(cg)) => {
                    let path = cg.path().to_path_buf();
                    memory_cgroup_version(&path)
                        .ok()
                        .map(|v| (path, v, "this process's memory cgroup"))
                }
                Ok(None) => None,
                Err(e) => {
                    choices.push(Choice {
                        kind: SourceKind::Watermark,
                        target: PathBuf::from("/proc/self/cgroup"),
                        picked: false,
                        why: format!("could not find this process's memory cgroup: {e}"),
                    });
                    None
                }
            },
        };
        let monitor = Monitor::with_options(options)?;
        let mut try_add = |source: Source, why: String| -> bool {
            let (kind, target) = (source.kind(), source.target());
            let (picked, why) = match monitor.add(source) {
                Ok(_) => (true, why),
                Err(e) => (false, e.to_string()),
            };
            choices.push(Choice {
                kind,
                target,
                picked,
                why,
            });
            picked
        };
        let mut watermark = false;
        let mut cgroup_psi = false;
        if let Some((path, version, whose)) = &cgroup {
            match version {
                CgroupVersion::V1 => {
                    try_add(
                        Source::v1_pressure_level(path),
                        format!(
                            "{whose} is cgroup v1: the kernel's reclaim-pressure notification (eventfd)"
                        ),
                    );
                }
                CgroupVersion::V2 => {
                    cgroup_psi = try_add(
                        Source::psi_cgroup(path, Stall::Some, AUTO_PSI_THRESHOLD, AUTO_PSI_WINDOW),
                        format!("{whose} is cgroup v2: stalls of its tasks (PSI trigger)"),
                    );
                    try_add(
                        Source::v2_events(path),
                        format!("{whose} is cgroup v2: high/max/oom counters"),
                    );
                }
            }
            watermark = try_add(
                Source::watermark(path),
                format!("{whose} has a memory limit: usage against it"),
            );
        }
        if !cgroup_psi {
            try_add(
                Source::psi_system(Stall::Some, AUTO_PSI_THRESHOLD, AUTO_PSI_WINDOW),
                "system-wide memory stalls (PSI trigger)".into(),
            );
        }
        if watermark {
            choices.push(Choice {
                kind: SourceKind::MemAvailable,
                target: PathBuf::from("/proc/meminfo"),
                picked: false,
                why: "not needed: the cgroup watermark watches the limit that matters".into(),
            });
        } else {
            try_add(
                Source::mem_available(),
                "fallback: no cgroup limit is watched, so watch MemAvailable".into(),
            );
        }
        if !choices.iter().any(|c| c.picked) {
            let why = choices
                .iter()
                .map(|c| format!("{}: {}", c.kind, c.why))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::NoSource(why));
        }
        let mut monitor = monitor;
        monitor.choices = choices;
        Ok(monitor)
    }
}
