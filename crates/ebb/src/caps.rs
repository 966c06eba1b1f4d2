//! [`Capabilities::detect`]: what this kernel and this process can do with memory hints.
//!
//! Everything is probed, not assumed from the kernel version: distributions backport and
//! configure features away. Advice support is probed as memmap2's `is_supported` does, with
//! `madvise(NULL, 0, advice)`: the kernel validates the advice (`madvise_behavior_valid`)
//! before it looks at the empty range, so the probe touches no memory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::advice::Advice;
use crate::cgroup::{self, CgroupVersion};
use crate::procfs;
pub use crate::procfs::swaps::{SwapDevice, parse as parse_swaps, read as read_swaps};
use crate::sys;

/// Transparent huge page settings from /sys/kernel/mm/transparent_hugepage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Thp {
    /// `enabled`: always, madvise or never (`None` without THP).
    pub enabled: Option<String>,
    /// `defrag`: always, defer, defer+madvise, madvise or never.
    pub defrag: Option<String>,
    /// `khugepaged/max_ptes_none`.
    pub max_ptes_none: Option<u32>,
    /// PMD huge page size in bytes.
    pub huge_page_size: usize,
}

/// Which PSI trigger windows the kernel accepts from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiWindowRule {
    /// Any window from 500 ms to 10 s (privileged: CAP_SYS_RESOURCE at open).
    Any,
    /// Only whole multiples of 2 s, up to 10 s (unprivileged triggers, Linux 6.4+).
    MultipleOf2s,
    /// Triggers could not be created at all.
    Unavailable,
}

impl PsiWindowRule {
    /// A readable statement of the rule.
    pub fn describe(self) -> &'static str {
        match self {
            PsiWindowRule::Any => "any window from 0.5 s to 10 s",
            PsiWindowRule::MultipleOf2s => "windows must be whole multiples of 2 s, at most 10 s",
            PsiWindowRule::Unavailable => "PSI triggers are not available",
        }
    }

    /// The accepted window nearest to `window_us`, or None if triggers are unavailable.
    pub fn nearest(self, window_us: u64) -> Option<u64> {
        match self {
            PsiWindowRule::Any => Some(window_us.clamp(500_000, 10_000_000)),
            PsiWindowRule::MultipleOf2s => {
                let n = ((window_us + 1_000_000) / 2_000_000).clamp(1, 5);
                Some(n * 2_000_000)
            }
            PsiWindowRule::Unavailable => None,
        }
    }

    /// Whether `window_us` is accepted.
    pub fn accepts(self, window_us: u64) -> bool {
        self.nearest(window_us) == Some(window_us)
    }
}

/// PSI (pressure stall information) for memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Psi {
    /// Whether /proc/pressure/memory can be read (the kernel has PSI and it is enabled).
    pub available: bool,
    /// The trigger-window rule in force for this process.
    pub trigger_windows: PsiWindowRule,
    /// The current memory pressure, if available.
    pub memory: Option<procfs::pressure::Pressure>,
}

/// The memory cgroup setup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cgroups {
    /// `v1` or `v2` for the hierarchy that has the memory controller, None if neither does.
    pub version: Option<String>,
    /// Root of the memory controller's hierarchy.
    pub memory_root: Option<PathBuf>,
    /// This process's memory cgroup, relative to the root.
    pub own: Option<PathBuf>,
}

/// What this process is permitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Privileges {
    /// Effective uid is 0.
    pub root: bool,
    /// CAP_SYS_NICE: process_madvise on other processes.
    pub cap_sys_nice: bool,
    /// CAP_KILL: signals to other users' processes.
    pub cap_kill: bool,
    /// CAP_SYS_RESOURCE: PSI triggers with any window.
    pub cap_sys_resource: bool,
    /// CAP_SYS_ADMIN: swapon, zram set-up.
    pub cap_sys_admin: bool,
}

/// Everything ebb needs to know about the kernel and this process.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Capabilities {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Advice the kernel accepts, by name, in [`Advice::ALL`] order.
    pub advice: Vec<(Advice, bool)>,
    /// THP settings.
    pub thp: Thp,
    /// Active swap.
    pub swap: Vec<SwapDevice>,
    /// PSI.
    pub psi: Psi,
    /// Memory cgroups.
    pub cgroup: Cgroups,
    /// Privileges of this process.
    pub privileges: Privileges,
    /// The kernel has process_madvise (whether it may be used on others: `privileges`).
    pub process_madvise: bool,
    /// The kernel has process_mrelease.
    pub process_mrelease: bool,
    /// The kernel has pidfd_open.
    pub pidfd: bool,
}

impl Capabilities {
    /// Probes the running kernel and this process.
    pub fn detect() -> Capabilities {
        let kernel = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let advice = Advice::ALL
            .into_iter()
            .map(|a| (a, advice_supported(a)))
            .collect();
        let own_pidfd = sys::pidfd_open(std::process::id());
        let pidfd = own_pidfd.is_ok();
        let (process_madvise, process_mrelease) = match &own_pidfd {
            Ok(fd) => {
                use std::os::fd::AsFd;
                let pm = !matches!(
                    sys::process_madvise(fd.as_fd(), &[], Advice::Cold),
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS)
                );
                let mr = !matches!(
                    sys::process_mrelease(fd.as_fd()),
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS)
                );
                (pm, mr)
            }
            Err(_) => (false, false),
        };
        Capabilities {
            kernel,
            advice,
            thp: detect_thp(),
            swap: read_swaps().unwrap_or_default(),
            psi: detect_psi(),
            cgroup: detect_cgroups(),
            privileges: detect_privileges(),
            process_madvise,
            process_mrelease,
            pidfd,
        }
    }

    /// Whether the kernel accepts `advice`.
    pub fn supports(&self, advice: Advice) -> bool {
        self.advice.iter().any(|(a, ok)| *a == advice && *ok)
    }

    /// Total free swap in bytes.
    pub fn swap_free(&self) -> u64 {
        self.swap
            .iter()
            .map(|s| s.size_bytes.saturating_sub(s.used_bytes))
            .sum()
    }
}

/// Whether the kernel knows `advice`: `madvise(NULL, 0, advice)` is 0 for known advice
/// (an empty range) and EINVAL for unknown.
pub fn advice_supported(advice: Advice) -> bool {
    if advice.is_destructive() {
        // SAFETY: an empty range at NULL: nothing is mapped there, nothing changes.
        #[allow(unsafe_code)]
        let r = unsafe { sys::madvise(std::ptr::null_mut(), 0, advice) };
        r.is_ok()
    } else {
        sys::madvise_hint(0, 0, advice).is_ok()
    }
}

fn bracketed(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_string())
}

fn detect_thp() -> Thp {
    let dir = "/sys/kernel/mm/transparent_hugepage";
    let read = |f: &str| fs::read_to_string(format!("{dir}/{f}")).ok();
    Thp {
        enabled: read("enabled").and_then(|s| bracketed(&s)),
        defrag: read("defrag").and_then(|s| bracketed(&s)),
        max_ptes_none: read("khugepaged/max_ptes_none").and_then(|s| s.trim().parse().ok()),
        huge_page_size: sys::huge_page_size(),
    }
}

fn detect_psi() -> Psi {
    let memory = procfs::pressure::read_memory().ok();
    let trigger_windows = if memory.is_some() {
        probe_psi_windows("/proc/pressure/memory")
    } else {
        PsiWindowRule::Unavailable
    };
    Psi {
        available: memory.is_some(),
        trigger_windows,
        memory,
    }
}

/// Finds which trigger windows `path` (a PSI file) accepts, by creating and at once
/// closing triggers of 1 s and 2 s.
pub fn probe_psi_windows(path: &str) -> PsiWindowRule {
    let try_window = |window_us: u64| -> bool {
        let Ok(mut f) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        else {
            return false;
        };
        f.write_all(format!("some 100000 {window_us}\0").as_bytes())
            .is_ok()
    };
    if try_window(1_000_000) {
        PsiWindowRule::Any
    } else if try_window(2_000_000) {
        PsiWindowRule::MultipleOf2s
    } else {
        PsiWindowRule::Unavailable
    }
}

fn detect_cgroups() -> Cgroups {
    let root = cgroup::memory_root().ok().flatten();
    let own = cgroup::own_memory_cgroup(std::process::id())
        .ok()
        .flatten()
        .map(|cg| cg.path().to_path_buf());
    Cgroups {
        version: root.as_ref().map(|(v, _)| match v {
            CgroupVersion::V1 => "v1".to_string(),
            CgroupVersion::V2 => "v2".to_string(),
        }),
        own: match (&root, own) {
            (Some((_, r)), Some(o)) => Some(
                o.strip_prefix(r)
                    .map(|p| PathBuf::from("/").join(p))
                    .unwrap_or(o),
            ),
            (_, o) => o,
        },
        memory_root: root.map(|(_, p)| p),
    }
}

/// Parses the effective capability mask (`CapEff:` in /proc/PID/status).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

fn detect_privileges() -> Privileges {
    let caps = procfs::read_file("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    Privileges {
        root: rustix::process::geteuid().is_root(),
        cap_kill: has(5),
        cap_sys_admin: has(21),
        cap_sys_nice: has(23),
        cap_sys_resource: has(24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_window_rule() {
        let r = PsiWindowRule::MultipleOf2s;
        assert_eq!(r.nearest(1_000_000), Some(2_000_000));
        assert_eq!(r.nearest(2_900_000), Some(2_000_000));
        assert_eq!(r.nearest(3_100_000), Some(4_000_000));
        assert_eq!(r.nearest(60_000_000), Some(10_000_000));
        assert!(r.accepts(4_000_000));
        assert!(!r.accepts(1_000_000));
        assert!(PsiWindowRule::Any.accepts(1_000_000));
        assert_eq!(PsiWindowRule::Unavailable.nearest(1), None);
    }

    #[test]
    fn cap_eff_parses() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn probes_known_advice() {
        // Every kernel ebb supports knows DONTNEED; none knows advice 9999.
        assert!(advice_supported(Advice::DontNeed));
        // SAFETY: empty range at NULL.
        #[allow(unsafe_code)]
        let bogus = unsafe { libc::madvise(std::ptr::null_mut(), 0, 9999) };
        assert_eq!(bogus, -1);
    }
}
