//! Compaction: reclaiming a whole process as it enters the cached band.
//!
//! Android's "full" compaction (CachedAppOptimizer): private file-backed mappings get
//! MADV_COLD (their pages move to the inactive list and go first when memory is short),
//! private anonymous mappings get MADV_PAGEOUT (reclaimed now, into swap); shared mappings are
//! never advised (another process may be using them). With `trigger = "headroom"` the file
//! mappings get MADV_PAGEOUT too ([`file_advice`]): the compaction runs because memory is
//! short now. It runs on a worker thread
//! ([`Worker`]) so the scan stays on time.
//!
//! Throttles (checked in this order): not within `min_interval_s` of the last compaction of
//! the same process (checked by the caller, which keeps the history); anon RSS at least
//! `min_anon_rss_mib`; grown at least `min_growth_mib` since the last compaction; no swap
//! device → file-only (MADV_PAGEOUT with no swap reclaims nothing, see the README); free swap
//! below `file_only_below_free_swap_pct` → file-only.
//!
//! Cancellation: VMAs are split into ranges of at most `max_range_mib` ([`MAX_RANGE`]) and
//! given to process_madvise `batch_ranges` ([`BATCH`]) ranges per call; between calls the job's cancel flag (set by the
//! policy when the process leaves the cached band) is checked. One batch is at most 1 GiB, so
//! a cancel takes effect within one batch (~0.9 s at the measured 1 GiB/0.86 s).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ebb::process::{AdviseOptions, MapSelection, MemorySnapshot, select_ranges};
use ebb::{Advice, Process};

use crate::config::Compaction as Settings;
use crate::scan::identity_matches;

/// Default largest range given to process_madvise in one iovec.
pub const MAX_RANGE: u64 = 64 << 20;
/// Default ranges per process_madvise call: the cancel flag is checked between calls.
pub const BATCH: usize = 16;

/// What to do for one process.
#[derive(Debug, Clone)]
pub enum Job {
    /// Compact a process that entered the cached band.
    Compact {
        /// Its pid.
        pid: u32,
        /// Its start time (identity).
        start_time: u64,
        /// Its comm, for logs.
        comm: String,
        /// Anon RSS right after its last compaction, if any.
        last_anon_after: Option<u64>,
        /// Set when it leaves the cached band.
        cancel: Arc<AtomicBool>,
    },
    /// Read back what a compaction paged out (MADV_WILLNEED), as it left the cached band.
    Prefetch {
        /// Its pid.
        pid: u32,
        /// Its start time.
        start_time: u64,
        /// The anon ranges the compaction paged out.
        ranges: Vec<Range<u64>>,
    },
}

/// Full (file COLD + anon PAGEOUT) or file-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// File COLD and anon PAGEOUT.
    Full,
    /// File COLD only (no swap, or too little free).
    FileOnly,
}

impl Mode {
    /// `full` or `file_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::FileOnly => "file_only",
        }
    }
}

/// One compaction, measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    /// The process.
    pub pid: u32,
    /// Its comm.
    pub comm: String,
    /// Full or file-only.
    pub mode: Mode,
    /// Why file-only, if so.
    pub file_only_reason: Option<&'static str>,
    /// Rss/anon/swap before.
    pub before: MemorySnapshot,
    /// Rss/anon/swap after.
    pub after: MemorySnapshot,
    /// Bytes the kernel reported advised (COLD + PAGEOUT).
    pub bytes_advised: u64,
    /// process_madvise calls.
    pub calls: usize,
    /// Stopped between batches because the process left the cached band.
    pub cancelled: bool,
    /// Time from the first advice to the last.
    pub duration: Duration,
    /// CPU time the compaction took on the worker thread, user + kernel: almost all of it
    /// is the kernel compressing pages into swap inside process_madvise(MADV_PAGEOUT).
    pub cpu: Duration,
    /// The anon ranges paged out (for prefetch).
    #[serde(skip)]
    pub anon_ranges: Vec<Range<u64>>,
}

impl Record {
    /// Rss before − after.
    pub fn rss_reclaimed(&self) -> u64 {
        self.before.rss.saturating_sub(self.after.rss)
    }
    /// Swap after − before.
    pub fn swap_gained(&self) -> u64 {
        self.after.swap.saturating_sub(self.before.swap)
    }
}

/// What a job came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A compaction ran (possibly cancelled part-way).
    Compacted {
        /// Its start time.
        start_time: u64,
        /// The record.
        record: Record,
    },
    /// A compaction was decided against.
    Skipped {
        /// The process.
        pid: u32,
        /// Why (`small`, `growth`, `gone`, `cancelled`, `dry_run`, `error`).
        reason: &'static str,
        /// Detail for the log.
        detail: String,
    },
    /// A prefetch ran.
    Prefetched {
        /// The process.
        pid: u32,
        /// Bytes of WILLNEED given.
        bytes: u64,
        /// Rss gained.
        rss_gained: u64,
        /// Time taken.
        duration: Duration,
    },
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Splits `ranges` so that none is longer than `max`.
pub fn split_ranges(ranges: &[Range<u64>], max: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    for r in ranges {
        let mut s = r.start;
        while s < r.end {
            let e = r.end.min(s.saturating_add(max));
            out.push(s..e);
            s = e;
        }
    }
    out
}

/// Whether to page out anon memory given the swap devices: `None` for yes, else why not.
pub fn file_only_reason(swaps: &[ebb::caps::SwapDevice], min_free_pct: u8) -> Option<&'static str> {
    let total: u64 = swaps.iter().map(|s| s.size_bytes).sum();
    let free: u64 = swaps
        .iter()
        .map(|s| s.size_bytes.saturating_sub(s.used_bytes))
        .sum();
    if total == 0 {
        Some("no_swap")
    } else if free.saturating_mul(100) < total.saturating_mul(u64::from(min_free_pct)) {
        Some("low_free_swap")
    } else {
        None
    }
}

/// The advice for a compacted process's private file mappings: COLD when compacting on entry
/// to the cached band (a hint: the kernel drops those pages first when memory runs short),
/// PAGEOUT when compacting for headroom (memory is short now: clean pages are dropped at
/// once, which compresses nothing; dirty private pages are anonymous and swapped like the
/// rest).
pub fn file_advice(trigger: crate::config::Trigger) -> Advice {
    match trigger {
        crate::config::Trigger::OnCached => Advice::Cold,
        crate::config::Trigger::Headroom => Advice::PageOut,
    }
}

/// Compacts `pid` now (on the calling thread). The throttles other than `min_interval_s`
/// are checked here.
pub fn compact(
    job_pid: u32,
    start_time: u64,
    comm: &str,
    last_anon_after: Option<u64>,
    cancel: &AtomicBool,
    settings: &Settings,
    dry_run: bool,
) -> Outcome {
    let skip = |reason: &'static str, detail: String| Outcome::Skipped {
        pid: job_pid,
        reason,
        detail,
    };
    let process = match Process::open(job_pid) {
        Ok(p) => p,
        Err(e) => return skip("gone", e.to_string()),
    };
    // With the pidfd held, the pid cannot be reused under us: check it is still the same.
    if !identity_matches(job_pid, start_time) {
        return skip("gone", "pid now belongs to another process".into());
    }
    if cancel.load(Ordering::Relaxed) {
        return skip(
            "cancelled",
            "left the cached band before compaction started".into(),
        );
    }
    let before = match process.rollup() {
        Ok(r) => MemorySnapshot::from(&r),
        Err(e) => return skip("gone", e.to_string()),
    };
    let min_anon = settings.min_anon_rss_mib << 20;
    if before.anon < min_anon {
        return skip(
            "small",
            format!(
                "anon RSS {} B below min_anon_rss_mib {}",
                before.anon, settings.min_anon_rss_mib
            ),
        );
    }
    if let Some(last) = last_anon_after {
        let growth = before.anon.saturating_sub(last);
        if growth < settings.min_growth_mib << 20 {
            return skip(
                "growth",
                format!(
                    "anon RSS grew {growth} B since the last compaction, below min_growth_mib {}",
                    settings.min_growth_mib
                ),
            );
        }
    }
    let swaps = ebb::caps::read_swaps().unwrap_or_default();
    let file_only = file_only_reason(&swaps, settings.file_only_below_free_swap_pct);
    let maps = match process.maps() {
        Ok(m) => m,
        Err(e) => return skip("gone", e.to_string()),
    };
    let max = settings.max_range_mib << 20;
    let file_ranges = split_ranges(&select_ranges(&maps, MapSelection::File), max);
    let anon_ranges = if file_only.is_none() {
        split_ranges(&select_ranges(&maps, MapSelection::Anon), max)
    } else {
        Vec::new()
    };
    let file_advice = file_advice(settings.trigger);
    if dry_run {
        let bytes: u64 = anon_ranges
            .iter()
            .chain(&file_ranges)
            .map(|r| r.end - r.start)
            .sum();
        return skip(
            "dry_run",
            format!(
                "would advise {bytes} B (file {}, anon {})",
                file_advice.name(),
                if file_only.is_some() {
                    "skipped"
                } else {
                    "PAGEOUT"
                }
            ),
        );
    }
    let check = || cancel.load(Ordering::Relaxed);
    let options = AdviseOptions {
        measure: false,
        batch: settings.batch_ranges,
        cancel: Some(&check),
    };
    let started = Instant::now();
    let mut bytes_advised = 0;
    let mut calls = 0;
    let mut cancelled = false;
    for (ranges, advice) in [(&file_ranges, file_advice), (&anon_ranges, Advice::PageOut)] {
        if ranges.is_empty() || cancelled {
            continue;
        }
        match process.advise_with(ranges, advice, &options) {
            Ok(report) => {
                bytes_advised += report.bytes_advised;
                calls += report.calls;
                cancelled |= report.cancelled;
            }
            Err(e) => {
                return skip(
                    if process.is_alive() { "error" } else { "gone" },
                    e.to_string(),
                );
            }
        }
    }
    let duration = started.elapsed();
    let after = match process.rollup() {
        Ok(r) => MemorySnapshot::from(&r),
        Err(e) => return skip("gone", e.to_string()),
    };
    Outcome::Compacted {
        start_time,
        record: Record {
            pid: job_pid,
            comm: comm.to_string(),
            mode: if file_only.is_some() {
                Mode::FileOnly
            } else {
                Mode::Full
            },
            file_only_reason: file_only,
            before,
            after,
            bytes_advised,
            calls,
            cancelled,
            duration,
            cpu: Duration::ZERO,
            anon_ranges,
        },
    }
}

/// Prefetches `ranges` of `pid` (MADV_WILLNEED) if it is still the process of `start_time`.
pub fn prefetch(pid: u32, start_time: u64, ranges: &[Range<u64>], dry_run: bool) -> Outcome {
    let skip = |reason: &'static str, detail: String| Outcome::Skipped {
        pid,
        reason,
        detail,
    };
    let process = match Process::open(pid) {
        Ok(p) => p,
        Err(e) => return skip("gone", e.to_string()),
    };
    if !identity_matches(pid, start_time) {
        return skip("gone", "pid now belongs to another process".into());
    }
    if dry_run {
        return skip("dry_run", format!("would prefetch {} ranges", ranges.len()));
    }
    let options = AdviseOptions {
        batch: BATCH,
        ..AdviseOptions::default()
    };
    match process.advise_with(ranges, Advice::WillNeed, &options) {
        Ok(r) => Outcome::Prefetched {
            pid,
            bytes: r.bytes_advised,
            rss_gained: match (r.before, r.after) {
                (Some(b), Some(a)) => a.rss.saturating_sub(b.rss),
                _ => 0,
            },
            duration: r.elapsed,
        },
        Err(e) => skip("gone", e.to_string()),
    }
}

/// The compaction worker thread: takes [`Job`]s, sends back [`Outcome`]s.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<Sender<(Job, Settings, bool)>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread; outcomes go to `outcomes`.
    pub fn start(outcomes: Sender<Outcome>) -> std::io::Result<Worker> {
        let (tx, rx): (Sender<(Job, Settings, bool)>, Receiver<_>) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ebbd-compact".into())
            .spawn(move || {
                for (job, settings, dry_run) in rx {
                    let cpu0 = thread_cpu();
                    let mut outcome = match job {
                        Job::Compact {
                            pid,
                            start_time,
                            comm,
                            last_anon_after,
                            cancel,
                        } => compact(
                            pid,
                            start_time,
                            &comm,
                            last_anon_after,
                            &cancel,
                            &settings,
                            dry_run,
                        ),
                        Job::Prefetch {
                            pid,
                            start_time,
                            ranges,
                        } => prefetch(pid, start_time, &ranges, dry_run),
                    };
                    if let Outcome::Compacted { record, .. } = &mut outcome {
                        record.cpu = thread_cpu().saturating_sub(cpu0);
                    }
                    if outcomes.send(outcome).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job with the settings in force.
    pub fn submit(&self, job: Job, settings: &Settings, dry_run: bool) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send((job, settings.clone(), dry_run));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_the_limit() {
        let r = split_ranges(&[0..(130 << 20), (200 << 20)..(201 << 20)], 64 << 20);
        assert_eq!(
            r,
            vec![
                0..(64 << 20),
                (64 << 20)..(128 << 20),
                (128 << 20)..(130 << 20),
                (200 << 20)..(201 << 20)
            ]
        );
    }

    #[test]
    fn swap_rules() {
        let dev = |size, used| ebb::caps::SwapDevice {
            device: "/dev/zram0".into(),
            kind: "partition".into(),
            size_bytes: size,
            used_bytes: used,
            priority: 0,
        };
        assert_eq!(file_only_reason(&[], 20), Some("no_swap"));
        assert_eq!(file_only_reason(&[dev(100, 90)], 20), Some("low_free_swap"));
        assert_eq!(file_only_reason(&[dev(100, 80)], 20), None);
    }
}
