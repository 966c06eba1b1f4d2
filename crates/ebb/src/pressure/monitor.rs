//! The monitor: one thread in `epoll_wait(2)` serving every registration.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

use super::auto::Choice;
use super::source::{Io, Outcome};
use super::{Error, Event, Level, Source, SourceId, SourceKind, ms_since};
use crate::cgroup::{CgroupVersion, MemoryCgroup};
use crate::procfs::{meminfo, pressure};

/// The default minimum spacing of repeated same-or-lower-level events of one source.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The epoll token of the waker eventfd.
const WAKER: u64 = u64::MAX;

/// Monitor-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorOptions {
    /// The rate limit (see the [module docs](super#rate-limiting-the-rule)).
    pub min_interval: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// One active registration, as [`Monitor::sources`] lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceInfo {
    /// Its id.
    pub id: SourceId,
    /// Its kind.
    pub kind: SourceKind,
    /// The file or cgroup watched.
    pub target: PathBuf,
    /// How: the PSI trigger, the v1 mode, the polling interval.
    pub how: String,
}

/// Pressure right now, read without waiting for the monitor thread.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Milliseconds since the monitor started.
    pub at_ms: u64,
    /// System-wide `/proc/pressure/memory` `some avg10` (%), if PSI is available.
    pub psi_some_avg10: Option<f64>,
    /// System-wide `some total` (µs).
    pub psi_some_total_us: Option<u64>,
    /// System-wide `full avg10` (%).
    pub psi_full_avg10: Option<f64>,
    /// The monitor's cgroup (the first cgroup registered), if any.
    pub cgroup: Option<PathBuf>,
    /// The cgroup's `memory.pressure` `some avg10` (v2 only).
    pub cgroup_psi_some_avg10: Option<f64>,
    /// The cgroup's usage (`memory.usage_in_bytes` / `memory.current`).
    pub usage_bytes: Option<u64>,
    /// The cgroup's limit (`memory.limit_in_bytes` / `memory.max`); `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// `MemAvailable`, bytes.
    pub mem_available_bytes: Option<u64>,
    /// `MemTotal`, bytes.
    pub mem_total_bytes: Option<u64>,
}

type Callback = Arc<dyn Fn(&Event) + Send + Sync + 'static>;

/// State shared by the [`Monitor`] handle and its thread.
struct Shared {
    stop: AtomicBool,
    /// Registrations opened by [`Monitor::add`], waiting for the thread to take them.
    pending: Mutex<Vec<(SourceId, Io)>>,
    /// Ids [`Monitor::remove`] asked to end.
    removals: Mutex<Vec<SourceId>>,
    senders: Mutex<Vec<Sender<Event>>>,
    callbacks: Mutex<Vec<Callback>>,
    sources: Mutex<BTreeMap<SourceId, SourceInfo>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A memory-pressure monitor: one background thread serving all its registrations.
///
/// Create it with [`Monitor::new`] and [`add`](Monitor::add) sources, or let
/// [`Monitor::auto`] choose. Receive [`Event`]s through [`subscribe`](Monitor::subscribe)
/// (a channel) or [`on_event`](Monitor::on_event) (a callback run on the monitor thread).
/// Dropping it stops and joins the thread and closes every fd it opened.
pub struct Monitor {
    shared: Arc<Shared>,
    epoll: Arc<OwnedFd>,
    waker: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    tid: Option<u32>,
    next_id: AtomicU32,
    start: Instant,
    cgroup: Mutex<Option<PathBuf>>,
    pub(super) choices: Vec<Choice>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("tid", &self.tid)
            .field("sources", &self.sources())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor with no sources and the default rate limit; starts its thread.
    pub fn new() -> Result<Monitor, Error> {
        Monitor::with_options(MonitorOptions::default())
    }

    /// A monitor with no sources and the given options; starts its thread.
    pub fn with_options(options: MonitorOptions) -> Result<Monitor, Error> {
        let start = Instant::now();
        let epoll =
            Arc::new(
                epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::Start {
                    what: "epoll_create1",
                    source: e.into(),
                })?,
            );
        let waker = Arc::new(
            eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| {
                Error::Start {
                    what: "eventfd",
                    source: e.into(),
                }
            })?,
        );
        epoll::add(&*epoll, &*waker, EventData::new_u64(WAKER), EventFlags::IN).map_err(|e| {
            Error::Start {
                what: "epoll_ctl",
                source: e.into(),
            }
        })?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            removals: Mutex::new(Vec::new()),
            senders: Mutex::new(Vec::new()),
            callbacks: Mutex::new(Vec::new()),
            sources: Mutex::new(BTreeMap::new()),
        });
        let (tid_tx, tid_rx) = mpsc::sync_channel(1);
        let thread = {
            let shared = Arc::clone(&shared);
            let epoll = Arc::clone(&epoll);
            let waker = Arc::clone(&waker);
            std::thread::Builder::new()
                .name("ebb-pressure".into())
                .spawn(move || {
                    let _ = tid_tx.send(own_tid());
                    run(&shared, &epoll, &waker, start, options);
                })
                .map_err(|e| Error::Start {
                    what: "thread",
                    source: e,
                })?
        };
        let tid = tid_rx.recv().ok().flatten();
        Ok(Monitor {
            shared,
            epoll,
            waker,
            thread: Some(thread),
            tid,
            next_id: AtomicU32::new(0),
            start,
            cgroup: Mutex::new(None),
            choices: Vec::new(),
        })
    }

    /// Opens `source`, registers it with the kernel and hands it to the monitor thread.
    ///
    /// Errors come back here, typed ([`Error::NoSuchCgroup`], [`Error::PsiWindow`], …);
    /// once added, a source ends only by [`remove`](Monitor::remove), by its cgroup going
    /// away ([`Detail::Removed`]) or by failing ([`Detail::Failed`]).
    pub fn add(&self, source: Source) -> Result<SourceId, Error> {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(Error::Stopped);
        }
        let mut io = source.open()?;
        let id = SourceId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        // Hold `pending` while adding to epoll, so the thread, woken by one of these fds
        // before it has the registration, finds it by taking `pending`.
        let mut pending = lock(&self.shared.pending);
        let mut unpollable = None;
        for (sub, fd, pri) in io.fds() {
            let flags = if pri { EventFlags::PRI } else { EventFlags::IN };
            if let Err(e) = epoll::add(&*self.epoll, fd, EventData::new_u64(token(id, sub)), flags)
            {
                unpollable = Some(e);
                break;
            }
        }
        match unpollable {
            None => io.set_polled_by_epoll(),
            // A regular file (a fake v2 tree) cannot be polled; memory.events is then read on a timer.
            Some(rustix::io::Errno::PERM) if io.fall_back_to_polling(now) => {}
            Some(rustix::io::Errno::PERM) => {
                return Err(Error::NotPsi {
                    path: source.target(),
                    reason: "it cannot be polled (epoll_ctl: EPERM), so it is not a kernel pressure file".into(),
                });
            }
            Some(e) => {
                return Err(Error::Start {
                    what: "epoll_ctl",
                    source: e.into(),
                });
            }
        }
        let how = match &source {
            Source::Psi(p) => format!("trigger `{}` → {}", p.trigger(), p.level),
            Source::V1PressureLevel { mode, .. } => {
                format!("eventfds low,medium,critical mode {}", mode.as_str())
            }
            Source::V2Events { .. } => match io.deadline() {
                Some(_) => format!(
                    "read every {:?} (file not pollable)",
                    super::DEFAULT_POLL_INTERVAL
                ),
                None => "kernfs change notification".to_string(),
            },
            Source::Watermark {
                thresholds,
                interval,
                ..
            } => match io.fds().is_empty() {
                true => format!(
                    "usage/limit every {interval:?}, low {} medium {} critical {}",
                    thresholds.low, thresholds.medium, thresholds.critical
                ),
                false => format!(
                    "v1 usage thresholds (eventfd) at low {} medium {} critical {} of the limit, re-read every {:?}",
                    thresholds.low,
                    thresholds.medium,
                    thresholds.critical,
                    super::V1_WATERMARK_RECHECK
                ),
            },
            Source::MemAvailable {
                thresholds,
                interval,
            } => format!(
                "every {interval:?} near the thresholds (up to 5x less often far from them), in use low {} medium {} critical {}",
                thresholds.low, thresholds.medium, thresholds.critical
            ),
        };
        pending.push((id, io));
        drop(pending);
        lock(&self.shared.sources).insert(
            id,
            SourceInfo {
                id,
                kind: source.kind(),
                target: source.target(),
                how,
            },
        );
        if !matches!(source, Source::Psi(_) | Source::MemAvailable { .. }) {
            lock(&self.cgroup).get_or_insert_with(|| source.target());
        }
        self.wake();
        Ok(id)
    }

    /// Ends a registration (closing its fds); `false` if there was none with this id.
    pub fn remove(&self, id: SourceId) -> bool {
        let present = lock(&self.shared.sources).remove(&id).is_some();
        if present {
            lock(&self.shared.removals).push(id);
            self.wake();
        }
        present
    }

    /// A new channel receiving every delivered event from now on. Dropping the receiver
    /// unsubscribes (the monitor notices at the next event).
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.senders).push(tx);
        rx
    }

    /// Runs `f` on the monitor thread for every delivered event, before channel delivery.
    /// Keep it short: it delays the other sources. A callback that panics is dropped.
    pub fn on_event(&self, f: impl Fn(&Event) + Send + Sync + 'static) {
        lock(&self.shared.callbacks).push(Arc::new(f));
    }

    /// The active registrations.
    pub fn sources(&self) -> Vec<SourceInfo> {
        lock(&self.shared.sources).values().cloned().collect()
    }

    /// What [`Monitor::auto`] considered, picked or skipped, and why (empty for a monitor
    /// built by hand).
    pub fn choices(&self) -> &[Choice] {
        &self.choices
    }

    /// When the monitor started (`Event::at_ms` counts from here).
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The kernel thread id of the monitor thread (for /proc/self/task/<tid>/stat).
    pub fn thread_id(&self) -> Option<u32> {
        self.tid
    }

    /// Reads current PSI, the cgroup's usage and limit, and MemAvailable, in the caller's
    /// thread. Values that cannot be read here are `None`.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            at_ms: ms_since(self.start, Instant::now()),
            ..Snapshot::default()
        };
        if let Ok(p) = pressure::read_memory() {
            s.psi_some_avg10 = Some(p.some.avg10);
            s.psi_some_total_us = Some(p.some.total_us);
            s.psi_full_avg10 = p.full.map(|f| f.avg10);
        }
        if let Ok(m) = meminfo::read() {
            s.mem_total_bytes = Some(m.mem_total);
            s.mem_available_bytes = Some(m.mem_available);
        }
        let cgroup = lock(&self.cgroup).clone();
        if let Some(cg) = cgroup.as_ref().and_then(|p| MemoryCgroup::open(p).ok()) {
            s.usage_bytes = cg.usage().ok();
            s.limit_bytes = cg.limit().ok().flatten();
            if cg.version() == CgroupVersion::V2 {
                s.cgroup_psi_some_avg10 = pressure::read_path(cg.path().join("memory.pressure"))
                    .ok()
                    .map(|p| p.some.avg10);
            }
        }
        s.cgroup = cgroup;
        s
    }

    /// Whether the monitor thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn wake(&self) {
        // An eventfd write of 1 only fails if the counter would overflow, i.e. it is
        // already set: the thread is woken either way.
        let _ = rustix::io::write(&*self.waker, &1u64.to_ne_bytes());
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The epoll token of fd `sub` of registration `id`.
fn token(id: SourceId, sub: u32) -> u64 {
    (u64::from(id.0) << 8) | u64::from(sub & 0xff)
}

/// The calling thread's kernel tid, from the /proc/thread-self link (`<pid>/task/<tid>`).
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The rate limit of one source (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    last: Option<(Instant, Level)>,
    suppressed: u64,
}

impl Limiter {
    /// `Some(suppressed count)` if an event of `level` at `now` is delivered, else `None`.
    pub(crate) fn admit(
        &mut self,
        level: Level,
        now: Instant,
        min_interval: Duration,
    ) -> Option<u64> {
        let deliver = match self.last {
            None => true,
            Some((t, l)) => level > l || now.saturating_duration_since(t) >= min_interval,
        };
        if deliver {
            self.last = Some((now, level));
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct Entry {
    kind: SourceKind,
    io: Io,
    limiter: Limiter,
}

/// The monitor thread.
fn run(shared: &Shared, epoll: &OwnedFd, waker: &OwnedFd, start: Instant, options: MonitorOptions) {
    let mut regs: BTreeMap<SourceId, Entry> = BTreeMap::new();
    let mut ready: Vec<epoll::Event> = Vec::with_capacity(64);
    let take_pending = |regs: &mut BTreeMap<SourceId, Entry>| {
        for (id, io) in lock(&shared.pending).drain(..) {
            let kind = match &io {
                Io::Psi { .. } => SourceKind::Psi,
                Io::V1 { .. } => SourceKind::V1PressureLevel,
                Io::V2Events { .. } => SourceKind::V2Events,
                Io::Timed {
                    what: super::source::Timed::Watermark { .. },
                    ..
                } => SourceKind::Watermark,
                Io::Timed { .. } => SourceKind::MemAvailable,
            };
            regs.insert(
                id,
                Entry {
                    kind,
                    io,
                    limiter: Limiter::default(),
                },
            );
        }
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let timeout = regs
            .values()
            .filter_map(|e| e.io.deadline())
            .min()
            .map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                }
            });
        ready.clear();
        match epoll::wait(epoll, spare_capacity(&mut ready), timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            // EBADF/EINVAL cannot happen with our own epoll fd; stop rather than spin.
            Err(_) => break,
        }
        let now = Instant::now();
        let mut ended = Vec::new();
        for ev in &ready {
            let data = ev.data.u64();
            if data == WAKER {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(waker, &mut buf);
                take_pending(&mut regs);
                for id in lock(&shared.removals).drain(..) {
                    regs.remove(&id);
                }
                continue;
            }
            let id = SourceId((data >> 8) as u32);
            let sub = (data & 0xff) as u32;
            if ended.contains(&id) {
                // Another fd of a registration that has just ended (v1 signals all three
                // eventfds on rmdir): one ending event is enough.
                continue;
            }
            if !regs.contains_key(&id) {
                take_pending(&mut regs);
            }
            let Some(entry) = regs.get_mut(&id) else {
                continue;
            };
            let flags = ev.flags;
            let error = flags.intersects(EventFlags::ERR | EventFlags::HUP);
            let outcome = entry.io.on_ready(sub, error);
            if handle(shared, start, options, id, entry, outcome, now) {
                ended.push(id);
            }
        }
        for (id, entry) in regs.iter_mut() {
            if !ended.contains(id) && entry.io.deadline().is_some_and(|d| d <= now) {
                let mut outcome = entry.io.on_timer(now);
                if matches!(outcome, Outcome::Quiet | Outcome::Event(..)) {
                    // A v1 watermark follows a changed limit with new thresholds.
                    match entry.io.rearm() {
                        Ok(false) => {}
                        Ok(true) => {
                            for (sub, fd, _) in entry.io.fds() {
                                let _ = epoll::add(
                                    epoll,
                                    fd,
                                    EventData::new_u64(token(*id, sub)),
                                    EventFlags::IN,
                                );
                            }
                        }
                        Err(e) => outcome = entry.io.end_with(e.to_string()),
                    }
                }
                if handle(shared, start, options, *id, entry, outcome, now) {
                    ended.push(*id);
                }
            }
        }
        for id in ended {
            regs.remove(&id);
        }
    }
    // `regs` drops here: every trigger fd, eventfd and file of every registration closes.
}

/// Delivers what `outcome` calls for; `true` if the registration has ended.
fn handle(
    shared: &Shared,
    start: Instant,
    options: MonitorOptions,
    id: SourceId,
    entry: &mut Entry,
    outcome: Outcome,
    now: Instant,
) -> bool {
    let (level, detail, suppressed, end) = match outcome {
        Outcome::Quiet => return false,
        Outcome::Event(level, detail) => {
            match entry.limiter.admit(level, now, options.min_interval) {
                Some(suppressed) => (level, detail, suppressed, false),
                None => return false,
            }
        }
        Outcome::End(detail) => (
            Level::Low,
            detail,
            std::mem::take(&mut entry.limiter.suppressed),
            true,
        ),
    };
    if end {
        // Listed no more by the time anyone sees the ending event.
        lock(&shared.sources).remove(&id);
    }
    deliver(
        shared,
        &Event {
            at: now,
            at_ms: ms_since(start, now),
            level,
            source: entry.kind,
            id,
            suppressed,
            detail,
        },
    );
    end
}

fn deliver(shared: &Shared, event: &Event) {
    let callbacks: Vec<Callback> = lock(&shared.callbacks).clone();
    let mut panicked = Vec::new();
    for (i, f) in callbacks.iter().enumerate() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(event))).is_err() {
            panicked.push(Arc::clone(&callbacks[i]));
        }
    }
    if !panicked.is_empty() {
        lock(&shared.callbacks).retain(|f| !panicked.iter().any(|p| Arc::ptr_eq(p, f)));
    }
    lock(&shared.senders).retain(|tx| tx.send(event.clone()).is_ok());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_passes_escalation_and_spaces_repeats() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let min = Duration::from_millis(100);
        assert_eq!(l.admit(Level::Low, t0, min), Some(0));
        assert_eq!(
            l.admit(Level::Low, t0 + Duration::from_millis(10), min),
            None
        );
        assert_eq!(
            l.admit(Level::Low, t0 + Duration::from_millis(20), min),
            None
        );
        // Escalation is never delayed, and carries the count of what was dropped.
        assert_eq!(
            l.admit(Level::Critical, t0 + Duration::from_millis(30), min),
            Some(2)
        );
        assert_eq!(
            l.admit(Level::Medium, t0 + Duration::from_millis(40), min),
            None
        );
        assert_eq!(
            l.admit(Level::Medium, t0 + Duration::from_millis(130), min),
            Some(1)
        );
    }

    #[test]
    fn tokens_round_trip() {
        let t = token(SourceId(77), 2);
        assert_eq!((t >> 8) as u32, 77);
        assert_eq!(t & 0xff, 2);
        assert_ne!(t, WAKER);
    }

    #[test]
    fn empty_monitor_starts_and_joins() {
        let m = Monitor::new().unwrap();
        assert!(m.thread_id().is_some());
        assert!(m.is_running());
        let s = m.snapshot();
        assert!(s.mem_total_bytes.unwrap() > 0);
        drop(m);
    }
}
