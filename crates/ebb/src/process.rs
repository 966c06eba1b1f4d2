//! [`Process`]: another process, held by a pidfd, that ebb can inspect, advise and kill.
//!
//! Holding a pidfd (pidfd_open(2)) pins the identity of the process: if it exits and its pid
//! is reused, signals and process_madvise(2) through the pidfd fail with `ESRCH` instead of
//! reaching the newcomer. /proc/PID files carry no such guarantee, so every read of them is
//! followed by a liveness check of the pidfd: a process that is still alive after the read
//! cannot have had its pid reused during it.
//!
//! [`Process::advise`] reports what actually happened, not just what the kernel returned:
//! MADV_PAGEOUT on anonymous memory with no swap returns the full length and reclaims
//! nothing, so the report carries Rss and Swap before and after (from smaps_rollup).
//!
//! # References
//! - process_madvise(2); mm/madvise.c: `process_madvise`, `process_madvise_remote_valid`
//!   (COLD, PAGEOUT, WILLNEED, COLLAPSE; `CAP_SYS_NICE` needed for another process; at most
//!   `UIO_MAXIOV` = 1024 iovecs; stops at the first failing iovec and returns the bytes done)
//! - pidfd_open(2), pidfd_send_signal(2), process_mrelease(2)

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::advice::Advice;
use crate::procfs::{self, maps::MapsEntry, smaps::SmapsRollup};
use crate::sys;

/// What went wrong with another process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no process with this pid.
    #[error("no process {pid}")]
    NoProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The process exited while ebb was working on it.
    #[error("process {pid} exited during the operation")]
    ProcessGone {
        /// Its pid.
        pid: u32,
    },
    /// The kernel refused for lack of privilege.
    #[error("not permitted to {action} process {pid}: this needs {capability} (or root)")]
    Permission {
        /// Its pid.
        pid: u32,
        /// What was attempted.
        action: &'static str,
        /// The capability that would allow it.
        capability: &'static str,
    },
    /// The advice cannot be given to another process.
    #[error("{} cannot be given to another process: process_madvise accepts only cold, pageout, willneed and collapse", advice.kernel_name())]
    NotRemoteAdvice {
        /// The advice refused.
        advice: Advice,
    },
    /// Reading the process's /proc files failed.
    #[error("reading /proc/{pid}: {source}")]
    Proc {
        /// Its pid.
        pid: u32,
        /// What failed.
        source: procfs::Error,
    },
    /// A system call failed.
    #[error("{call} on process {pid}: {source}")]
    Sys {
        /// Its pid.
        pid: u32,
        /// The system call.
        call: &'static str,
        /// The errno.
        source: io::Error,
    },
}

/// Which private mappings of a process to advise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSelection {
    /// Private anonymous and private file-backed mappings.
    #[default]
    All,
    /// Private anonymous mappings only (heap, stack, anonymous mmap).
    Anon,
    /// Private file-backed mappings only.
    File,
}

/// Whether a mapping is private anonymous memory (heap, stack, `[anon:…]`, unnamed).
pub fn is_private_anon(m: &MapsEntry) -> bool {
    if m.perms.shared {
        return false;
    }
    match m.pathname.as_deref() {
        None => true,
        Some(p) => p == "[heap]" || p.starts_with("[stack") || p.starts_with("[anon:"),
    }
}

/// Whether a mapping is a private mapping of a file.
pub fn is_private_file(m: &MapsEntry) -> bool {
    !m.perms.shared && m.inode != 0 && m.pathname.as_deref().is_some_and(|p| p.starts_with('/'))
}

/// The address ranges of `maps` that `selection` picks, one per VMA. Shared mappings and
/// special ones (vdso, vvar, vsyscall) are never picked.
pub fn select_ranges(maps: &[MapsEntry], selection: MapSelection) -> Vec<Range<u64>> {
    maps.iter()
        .filter(|m| match selection {
            MapSelection::All => is_private_anon(m) || is_private_file(m),
            MapSelection::Anon => is_private_anon(m),
            MapSelection::File => is_private_file(m),
        })
        .map(|m| m.start..m.end)
        .collect()
}

/// Rss and Swap of a process at one moment, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemorySnapshot {
    /// Resident bytes.
    pub rss: u64,
    /// Resident anonymous bytes.
    pub anon: u64,
    /// Bytes in swap.
    pub swap: u64,
}

impl From<&SmapsRollup> for MemorySnapshot {
    fn from(r: &SmapsRollup) -> Self {
        MemorySnapshot {
            rss: r.rss,
            anon: r.anonymous,
            swap: r.swap,
        }
    }
}

/// A range the kernel refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRange {
    /// Start address in the target.
    pub start: u64,
    /// End address in the target.
    pub end: u64,
    /// The errno name and its meaning (`EINVAL: locked, PFN or hugetlb mapping`).
    pub reason: String,
}

/// What an advice to another process did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdviseReport {
    /// The target.
    pub pid: u32,
    /// The advice given.
    pub advice: Advice,
    /// Ranges asked for.
    pub ranges: usize,
    /// Bytes asked for.
    pub bytes_requested: u64,
    /// Bytes the kernel reports advised.
    pub bytes_advised: u64,
    /// Ranges the kernel refused.
    pub skipped: Vec<SkippedRange>,
    /// process_madvise calls made.
    pub calls: usize,
    /// Whether the caller's cancel check stopped it between batches.
    pub cancelled: bool,
    /// Memory before, if measured.
    pub before: Option<MemorySnapshot>,
    /// Memory after, if measured.
    pub after: Option<MemorySnapshot>,
    /// Time spent in the advice calls.
    pub elapsed: Duration,
}

impl AdviseReport {
    /// Bytes that left RAM (Rss before − after), if measured.
    pub fn rss_dropped(&self) -> Option<u64> {
        Some(self.before?.rss.saturating_sub(self.after?.rss))
    }
    /// Bytes that went to swap (Swap after − before), if measured.
    pub fn swap_gained(&self) -> Option<u64> {
        Some(self.after?.swap.saturating_sub(self.before?.swap))
    }
}

/// How to run [`Process::advise_with`].
pub struct AdviseOptions<'a> {
    /// Read smaps_rollup before and after (costs a page-table walk of the target).
    pub measure: bool,
    /// Ranges per process_madvise call, at most [`sys::IOV_MAX`].
    pub batch: usize,
    /// Checked before every batch: returning true stops the advice there.
    pub cancel: Option<&'a dyn Fn() -> bool>,
}

impl Default for AdviseOptions<'_> {
    fn default() -> Self {
        AdviseOptions {
            measure: true,
            batch: sys::IOV_MAX,
            cancel: None,
        }
    }
}

/// Another process, held by a pidfd.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: OwnedFd,
}

fn errno_reason(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EINVAL) => {
            "EINVAL: the kernel refuses this mapping (locked, PFN, hugetlb or special)".into()
        }
        Some(libc::ENOMEM) => "ENOMEM: the range is no longer mapped".into(),
        Some(libc::EFAULT) => "EFAULT: bad address".into(),
        Some(libc::EAGAIN) => "EAGAIN: transient, the kernel could not take a lock".into(),
        _ => err.to_string(),
    }
}

impl Process {
    /// Opens `pid` with a pidfd.
    pub fn open(pid: u32) -> Result<Process, Error> {
        match sys::pidfd_open(pid) {
            Ok(pidfd) => Ok(Process { pid, pidfd }),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Error::NoProcess { pid }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && pid == 0 => {
                Err(Error::NoProcess { pid })
            }
            Err(source) => Err(Error::Sys {
                pid,
                call: "pidfd_open",
                source,
            }),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether it has not exited yet (a zombie counts as exited).
    pub fn is_alive(&self) -> bool {
        !matches!(
            sys::pidfd_wait_exit(self.pidfd.as_fd(), Duration::ZERO),
            Ok(true)
        )
    }

    /// Runs a /proc read, then confirms the process is still the one the pidfd holds.
    fn proc_read<T>(&self, read: impl FnOnce(u32) -> Result<T, procfs::Error>) -> Result<T, Error> {
        let out = read(self.pid);
        if !self.is_alive() {
            return Err(Error::ProcessGone { pid: self.pid });
        }
        out.map_err(|source| match source {
            procfs::Error::NoProcess { .. } => Error::ProcessGone { pid: self.pid },
            procfs::Error::Io { source: e, .. } if e.kind() == io::ErrorKind::PermissionDenied => {
                Error::Permission {
                    pid: self.pid,
                    action: "read the memory map of",
                    capability: "CAP_SYS_PTRACE (or the same user as the target)",
                }
            }
            source => Error::Proc {
                pid: self.pid,
                source,
            },
        })
    }

    /// Its mappings, from /proc/PID/maps.
    pub fn maps(&self) -> Result<Vec<MapsEntry>, Error> {
        self.proc_read(procfs::maps::read)
    }

    /// Its memory summary, from /proc/PID/smaps_rollup.
    pub fn rollup(&self) -> Result<SmapsRollup, Error> {
        self.proc_read(procfs::smaps::read_rollup)
    }

    /// Its status, from /proc/PID/status.
    pub fn status(&self) -> Result<procfs::status::Status, Error> {
        self.proc_read(procfs::status::read)
    }

    /// Its oom_score_adj.
    pub fn oom_score_adj(&self) -> Result<i16, Error> {
        self.proc_read(procfs::oom::read_oom_score_adj)
    }

    /// Gives `advice` for `ranges` of its address space, measuring Rss/Swap before and after.
    pub fn advise(&self, ranges: &[Range<u64>], advice: Advice) -> Result<AdviseReport, Error> {
        self.advise_with(ranges, advice, &AdviseOptions::default())
    }

    /// Gives `advice` for `ranges` with process_madvise(2), [`AdviseOptions::batch`] ranges per
    /// call. A range the kernel refuses (a locked or special VMA: EINVAL; unmapped meanwhile:
    /// ENOMEM) is skipped and reported, and the rest goes on. A target that exits gives
    /// [`Error::ProcessGone`].
    pub fn advise_with(
        &self,
        ranges: &[Range<u64>],
        advice: Advice,
        options: &AdviseOptions<'_>,
    ) -> Result<AdviseReport, Error> {
        if !advice.is_remote_valid() {
            return Err(Error::NotRemoteAdvice { advice });
        }
        let iovs: Vec<(usize, usize)> = ranges
            .iter()
            .filter(|r| r.end > r.start)
            .map(|r| (r.start as usize, (r.end - r.start) as usize))
            .collect();
        let mut report = AdviseReport {
            pid: self.pid,
            advice,
            ranges: iovs.len(),
            bytes_requested: iovs.iter().map(|(_, l)| *l as u64).sum(),
            bytes_advised: 0,
            skipped: Vec::new(),
            calls: 0,
            cancelled: false,
            before: None,
            after: None,
            elapsed: Duration::ZERO,
        };
        if options.measure {
            report.before = Some(MemorySnapshot::from(&self.rollup()?));
        }
        let batch = options.batch.clamp(1, sys::IOV_MAX);
        let started = Instant::now();
        let mut i = 0;
        let mut retries = 0;
        while i < iovs.len() {
            if options.cancel.is_some_and(|c| c()) {
                report.cancelled = true;
                break;
            }
            let chunk = &iovs[i..(i + batch).min(iovs.len())];
            report.calls += 1;
            match sys::process_madvise(self.pidfd.as_fd(), chunk, advice) {
                Ok(done) => {
                    report.bytes_advised += done as u64;
                    let mut left = done;
                    let mut whole = 0;
                    for (_, len) in chunk {
                        if left < *len {
                            break;
                        }
                        left -= len;
                        whole += 1;
                    }
                    i += whole;
                    if whole < chunk.len() {
                        // The kernel stopped inside this batch: learn why from that range
                        // alone, skip it, and go on with the next one.
                        let (start, len) = chunk[whole];
                        report.calls += 1;
                        match sys::process_madvise(self.pidfd.as_fd(), &[(start, len)], advice) {
                            Ok(n) => report.bytes_advised += n.saturating_sub(left) as u64,
                            Err(e) => self.skip_or_fail(&mut report, start, len, e)?,
                        }
                        i += 1;
                    }
                    retries = 0;
                }
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR))
                        && retries < 3 =>
                {
                    retries += 1;
                }
                Err(e) => {
                    let (start, len) = chunk[0];
                    self.skip_or_fail(&mut report, start, len, e)?;
                    i += 1;
                    retries = 0;
                }
            }
        }
        report.elapsed = started.elapsed();
        if !self.is_alive() {
            return Err(Error::ProcessGone { pid: self.pid });
        }
        if options.measure {
            report.after = Some(MemorySnapshot::from(&self.rollup()?));
        }
        Ok(report)
    }

    fn skip_or_fail(
        &self,
        report: &mut AdviseReport,
        start: usize,
        len: usize,
        e: io::Error,
    ) -> Result<(), Error> {
        match e.raw_os_error() {
            Some(libc::ESRCH) => Err(Error::ProcessGone { pid: self.pid }),
            Some(libc::EPERM) => Err(Error::Permission {
                pid: self.pid,
                action: "advise",
                capability: "CAP_SYS_NICE",
            }),
            Some(libc::EINVAL | libc::ENOMEM | libc::EFAULT | libc::EAGAIN | libc::EINTR) => {
                if !self.is_alive() {
                    return Err(Error::ProcessGone { pid: self.pid });
                }
                report.skipped.push(SkippedRange {
                    start: start as u64,
                    end: (start + len) as u64,
                    reason: errno_reason(&e),
                });
                Ok(())
            }
            _ => Err(Error::Sys {
                pid: self.pid,
                call: "process_madvise",
                source: e,
            }),
        }
    }

    /// Sends `signal` through the pidfd.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::ProcessGone { pid: self.pid },
            Some(libc::EPERM) => Error::Permission {
                pid: self.pid,
                action: "signal",
                capability: "CAP_KILL",
            },
            _ => Error::Sys {
                pid: self.pid,
                call: "pidfd_send_signal",
                source: e,
            },
        })
    }

    /// SIGKILLs it and reaps its memory at once with process_mrelease(2) (where the kernel
    /// has it), as lmkd does. Returns whether process_mrelease ran.
    pub fn kill_and_release(&self) -> Result<bool, Error> {
        self.signal(libc::SIGKILL)?;
        Ok(sys::process_mrelease(self.pidfd.as_fd()).is_ok())
    }

    /// Waits up to `timeout` for it to exit; returns whether it did.
    pub fn wait_exit(&self, timeout: Duration) -> Result<bool, Error> {
        sys::pidfd_wait_exit(self.pidfd.as_fd(), timeout).map_err(|source| Error::Sys {
            pid: self.pid,
            call: "poll(pidfd)",
            source,
        })
    }
}
