//! Kills as a last resort, the lmkd way.
//!
//! On a pressure event at or above `kill.min_level` from the [`Monitor`] (system PSI, or the
//! configured cgroup's sources as [`Monitor::auto_for`] picks them), the killer picks one
//! victim among the managed processes — highest oom_score_adj first, then largest RSS
//! (`order = "adj_then_rss"`), or largest RSS among those at or above `min_adj`
//! (`order = "rss"`) — sends SIGKILL through a pidfd, reaps its memory at once with
//! process_mrelease(2), and waits for it to exit (up to `wait_exit_ms`) before it will
//! consider another. Events that arrived while it was killing are dropped: they describe
//! pressure the kill may already have relieved.
//!
//! A watermark event (memcg usage crossed a fraction of its limit) is confirmed first: usage
//! counts page cache, and a group that reads or writes files sits at its limit with most of
//! it clean cache that reclaim drops without I/O. The killer re-reads the group's room
//! ([`ebb::cgroup::MemoryCgroup::room`]) and counts the clean inactive page cache as free; if
//! that takes the group below the lowest watermark (90%), the pressure is page cache alone
//! and nobody is killed (logged, counted in `ebbd_kills_unconfirmed_total`); see [`confirm`].
//! The kernel's own signals (PSI, v1 `pressure_level`) are taken as they come.
//!
//! Never killed: pid 1, kernel threads (never tracked), ebbd itself, processes whose adj is
//! below `min_adj` (re-read through the pidfd just before the signal), and processes whose
//! comm is in `protected`. A pid that now belongs to another process (start time differs
//! once the pidfd is held) is not touched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ebb::Process;
use ebb::cgroup::MemoryCgroup;
use ebb::pressure::{Detail, Event, Level, Monitor, Thresholds};

use crate::config::{Kill as Settings, KillOrder};
use crate::metrics::Stats;
use crate::scan::identity_matches;

/// Kills kept in memory for [`crate::daemon::Daemon::kills`] (the oldest are dropped).
pub const KILL_LOG_LEN: usize = 256;

/// The killer could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pressure monitor could not watch the configured source.
    #[error("pressure monitor: {0}")]
    Monitor(#[from] ebb::pressure::Error),
    /// The thread could not be spawned.
    #[error("spawning the killer thread: {0}")]
    Thread(std::io::Error),
}

/// A process the killer may consider, as the policy loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its pid.
    pub pid: u32,
    /// Its start time.
    pub start_time: u64,
    /// Its comm.
    pub comm: String,
    /// The adj it is ranked by (its own, or its mark's).
    pub adj: i16,
    /// Whether `adj` comes from a mark (then the real adj is not re-checked).
    pub marked: bool,
}

/// One kill, for the log and the tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KillRecord {
    /// The victim.
    pub pid: u32,
    /// Its comm.
    pub comm: String,
    /// Its adj.
    pub adj: i16,
    /// Its RSS when chosen.
    pub rss: u64,
    /// Its swap when chosen.
    pub swap: u64,
    /// Why: `pressure_<level>`.
    pub reason: String,
    /// The event's source.
    pub source: String,
    /// System PSI memory `some avg10` at the kill.
    pub psi_some_avg10: Option<f64>,
    /// Whether process_mrelease ran.
    pub released: bool,
    /// Whether it exited within `wait_exit_ms`.
    pub exited: bool,
    /// Signal to exit.
    pub took: Duration,
    /// Dry run: nothing was sent.
    pub dry_run: bool,
}

/// A candidate with its memory read.
#[derive(Debug, Clone)]
struct Scored {
    c: Candidate,
    rss: u64,
    swap: u64,
}

/// Orders `cands` (with rss) by `order`, first victim first.
pub fn order_victims(cands: &mut [(Candidate, u64)], order: KillOrder) {
    match order {
        KillOrder::AdjThenRss => {
            cands.sort_by(|a, b| b.0.adj.cmp(&a.0.adj).then(b.1.cmp(&a.1)));
        }
        KillOrder::Rss => cands.sort_by_key(|b| std::cmp::Reverse(b.1)),
    }
}

/// Whether the rules allow killing `c` at all.
pub fn eligible(c: &Candidate, s: &Settings) -> bool {
    c.pid != 1
        && c.pid != std::process::id()
        && c.adj >= s.min_adj
        && !s.protected.iter().any(|p| p == &c.comm)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Picks and kills one victim. Returns the record, or `None` if no one may be killed.
pub fn kill_one(
    cands: &[Candidate],
    s: &Settings,
    reason: &str,
    source: &str,
    dry_run: bool,
) -> Option<KillRecord> {
    let mut scored: Vec<Scored> = cands
        .iter()
        .filter(|c| eligible(c, s))
        .filter_map(|c| {
            let st = ebb::procfs::status::read(c.pid).ok()?;
            if st.kthread == Some(true) {
                return None;
            }
            Some(Scored {
                c: c.clone(),
                rss: st.vm_rss,
                swap: st.vm_swap,
            })
        })
        .collect();
    let mut order: Vec<(Candidate, u64)> = scored.iter().map(|x| (x.c.clone(), x.rss)).collect();
    order_victims(&mut order, s.order);
    for (c, _) in order {
        let Some(v) = scored.iter_mut().find(|x| x.c.pid == c.pid) else {
            continue;
        };
        let Ok(process) = Process::open(c.pid) else {
            continue;
        };
        // The pidfd pins the process: check it is the one we ranked, and still killable.
        if !identity_matches(c.pid, c.start_time) {
            continue;
        }
        let adj = if c.marked {
            c.adj
        } else {
            match process.oom_score_adj() {
                Ok(a) => a,
                Err(_) => continue,
            }
        };
        let now = Candidate { adj, ..c.clone() };
        if !eligible(&now, s) {
            continue;
        }
        let psi = ebb::procfs::pressure::read_memory()
            .ok()
            .map(|p| p.some.avg10);
        let mut record = KillRecord {
            pid: c.pid,
            comm: c.comm.clone(),
            adj,
            rss: v.rss,
            swap: v.swap,
            reason: reason.to_string(),
            source: source.to_string(),
            psi_some_avg10: psi,
            released: false,
            exited: false,
            took: Duration::ZERO,
            dry_run,
        };
        if dry_run {
            return Some(record);
        }
        let started = Instant::now();
        match process.kill_and_release() {
            Ok(released) => record.released = released,
            Err(_) => continue,
        }
        record.exited = process
            .wait_exit(Duration::from_millis(s.wait_exit_ms))
            .unwrap_or(false);
        record.took = started.elapsed();
        return Some(record);
    }
    None
}

/// The killer thread and its monitor.
pub struct Killer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// What the monitor watches, for the log.
    pub sources: Vec<String>,
}

impl std::fmt::Debug for Killer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Killer")
            .field("sources", &self.sources)
            .finish()
    }
}

fn psi_of(e: &Event) -> Option<f64> {
    match &e.detail {
        Detail::Psi { some_avg10, .. } => Some(*some_avg10),
        _ => None,
    }
}

/// For a watermark event: `Err(why)` when the pressure is page cache alone, that is when
/// counting the group's clean inactive page cache as free takes it below even the lowest
/// watermark ([`Thresholds::WATERMARK`]`.low`, 90% of the limit). Like lmkd's "other_file"
/// check, it spares a group that sits at its limit because it reads or writes files, and
/// does not second-guess real shortage: a group whose cache cannot bring it under 90% is
/// short of memory, whatever swap could do. Other events, and groups that cannot be read,
/// pass (`Ok`): the event stands.
pub fn confirm(event: &Event) -> Result<(), String> {
    let Detail::Watermark { cgroup, .. } = &event.detail else {
        return Ok(());
    };
    let Ok(Some(room)) = MemoryCgroup::open(cgroup).and_then(|cg| cg.room()) else {
        return Ok(());
    };
    let available = room.available();
    let in_use = 1.0 - available as f64 / room.limit.max(1) as f64;
    if in_use < Thresholds::WATERMARK.low {
        Err(format!(
            "{:.1}% of {} MiB in use once {} MiB of clean page cache counts as free: page cache, not memory, is short",
            in_use * 100.0,
            room.limit >> 20,
            available.saturating_sub(room.free()) >> 20,
        ))
    } else {
        Ok(())
    }
}

impl Killer {
    /// Starts a monitor over `cgroup` (or system PSI when `None`) and the killer thread.
    /// Every kill is logged, counted in `stats` and pushed to `log`.
    pub fn start(
        settings: Settings,
        cgroup: Option<std::path::PathBuf>,
        candidates: Arc<Mutex<Vec<Candidate>>>,
        stats: Arc<Stats>,
        log: Arc<Mutex<Vec<KillRecord>>>,
        dry_run: bool,
    ) -> Result<Killer, Error> {
        let monitor = match &cgroup {
            Some(cg) => Monitor::auto_for(cg)?,
            None => {
                let m = Monitor::new()?;
                m.add(ebb::pressure::Source::psi_system(
                    ebb::pressure::Stall::Some,
                    ebb::pressure::AUTO_PSI_THRESHOLD,
                    ebb::pressure::AUTO_PSI_WINDOW,
                ))?;
                m
            }
        };
        let sources = monitor
            .sources()
            .iter()
            .map(|s| format!("{} {} ({})", s.kind, s.target.display(), s.how))
            .collect();
        let events = monitor.subscribe();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let min_level: Level = settings.min_level.into();
        let thread = std::thread::Builder::new()
            .name("ebbd-kill".into())
            .spawn(move || {
                let _monitor = monitor;
                let mut quiet_until = Instant::now();
                while !stop2.load(Ordering::Relaxed) {
                    let event = match events.recv_timeout(Duration::from_millis(100)) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    stats.pressure_events.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(level = %event.level, source = %event.source, "pressure event");
                    if event.level < min_level || event.at < quiet_until {
                        continue;
                    }
                    if matches!(event.detail, Detail::Removed { .. } | Detail::Failed { .. }) {
                        tracing::warn!(detail = ?event.detail, "pressure source ended");
                        continue;
                    }
                    if let Err(why) = confirm(&event) {
                        tracing::info!(level = %event.level, source = %event.source, %why, "watermark not confirmed: not killing");
                        stats.kills_unconfirmed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let cands = lock(&candidates).clone();
                    let reason = format!("pressure_{}", event.level);
                    let source = event.source.name().to_string();
                    match kill_one(&cands, &settings, &reason, &source, dry_run) {
                        Some(r) => {
                            let psi = psi_of(&event).or(r.psi_some_avg10);
                            if r.dry_run {
                                tracing::warn!(pid = r.pid, comm = %r.comm, adj = r.adj, rss = r.rss, swap = r.swap, reason = %r.reason, source = %r.source, psi_some_avg10 = ?psi, "dry run: would kill");
                            } else {
                                tracing::warn!(pid = r.pid, comm = %r.comm, adj = r.adj, rss = r.rss, swap = r.swap, reason = %r.reason, source = %r.source, psi_some_avg10 = ?psi, released = r.released, exited = r.exited, took_ms = r.took.as_millis() as u64, "killed");
                                stats.record_kill(&r.reason, r.took);
                            }
                            let mut log = lock(&log);
                            if log.len() >= KILL_LOG_LEN {
                                log.remove(0);
                            }
                            log.push(r);
                        }
                        None => {
                            tracing::info!(level = %event.level, source = %event.source, "pressure, but no process may be killed");
                        }
                    }
                    quiet_until = Instant::now();
                }
            })
            .map_err(Error::Thread)?;
        Ok(Killer {
            stop,
            thread: Some(thread),
            sources,
        })
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pid: u32, adj: i16, comm: &str) -> Candidate {
        Candidate {
            pid,
            start_time: 0,
            comm: comm.into(),
            adj,
            marked: false,
        }
    }

    #[test]
    fn order_is_adj_then_rss() {
        let mut v = vec![
            (c(10, 900, "a"), 5),
            (c(11, 1000, "b"), 1),
            (c(12, 900, "c"), 50),
        ];
        order_victims(&mut v, KillOrder::AdjThenRss);
        let pids: Vec<u32> = v.iter().map(|x| x.0.pid).collect();
        assert_eq!(pids, vec![11, 12, 10]);
        order_victims(&mut v, KillOrder::Rss);
        let pids: Vec<u32> = v.iter().map(|x| x.0.pid).collect();
        assert_eq!(pids, vec![12, 10, 11]);
    }

    #[test]
    fn never_killed() {
        let s = Settings {
            protected: vec!["sshd".into()],
            ..Settings::default()
        };
        assert!(!eligible(&c(1, 1000, "init"), &s));
        assert!(!eligible(&c(std::process::id(), 1000, "me"), &s));
        assert!(!eligible(&c(5, 100, "x"), &s));
        assert!(!eligible(&c(5, 1000, "sshd"), &s));
        assert!(eligible(&c(5, 200, "x"), &s));
    }
}
