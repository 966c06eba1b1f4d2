//! The policy loop: scan, rank, compact on entering cached, cancel or prefetch on leaving.
//!
//! [`Daemon::start`] sets up the socket server, the metrics responder, the compaction worker
//! and the killer, then [`Daemon::run`] loops: every `ranks.scan_interval_ms` (or at once
//! after a `mark`) it scans ([`crate::scan`]), recomputes each changed process's band
//! (mark > cached/frozen cgroup > adj), and acts on transitions:
//!
//! - into `cached`: with `compaction.trigger = "on_cached"` (the default), a compaction job,
//!   unless one ran for this process within `min_interval_s` (the other throttles are
//!   checked by the worker with fresh numbers); with `"headroom"`, nothing yet: see below;
//! - out of `cached`: the running compaction's cancel flag is set; with
//!   `prefetch_on_resume`, the ranges paged out are prefetched;
//! - gone: its state and mark are dropped (a pid reused later starts afresh).
//!
//! With `trigger = "headroom"`, every pass (and as soon as a compaction finishes) reads the
//! room left under the scope's tightest limit ([`MemoryCgroup::room`]; without a limited
//! scope, MemAvailable against MemTotal). While it is below `headroom_pct` of the limit, the
//! process that has been cached longest and not yet compacted during this stay in the band is
//! compacted, one at a time: only what the budget forces out of RAM is compressed, and the
//! apps used most recently stay whole. The cost this saves is real: MADV_PAGEOUT compresses
//! in the caller's context, ~1.5 s of CPU per GiB of app memory here (72% of it in
//! `LZ4_compress_fast_extState`).
//!
//! [`Control`] stops or reloads it from another thread (the binary's signal thread).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ebb::cgroup::MemoryCgroup;

use crate::compaction::{Job, Outcome, Worker};
use crate::config::{Config, Trigger, resolve_cgroup};
use crate::killer::{Candidate, KillRecord, Killer};
use crate::metrics::Stats;
use crate::ranks::{Band, kill_adj};
use crate::scan::{Change, Scanner};
use crate::server::{Context, Marks, Server};

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scope cgroup is not a memory cgroup.
    #[error("scope.cgroup {path}: {source}")]
    Scope {
        /// The path.
        path: PathBuf,
        /// Why.
        source: ebb::cgroup::Error,
    },
    /// The socket could not be served.
    #[error(transparent)]
    Socket(#[from] crate::server::Error),
    /// The metrics address could not be bound.
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The killer could not start.
    #[error(transparent)]
    Killer(#[from] crate::killer::Error),
    /// A thread could not be spawned.
    #[error("spawning the compaction worker: {0}")]
    Thread(std::io::Error),
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The configuration.
    pub config: Config,
    /// Where it came from (reloaded on [`Control::reload`]).
    pub config_path: Option<PathBuf>,
    /// Decide and log, act on nothing.
    pub dry_run: bool,
    /// Overrides `socket.path`.
    pub socket: Option<PathBuf>,
}

/// Stops or reloads a running daemon from another thread.
#[derive(Debug, Clone)]
pub struct Control {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    wake: Sender<()>,
}

impl Control {
    /// Asks the loop to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }
    /// Asks the loop to reload the config file.
    pub fn reload(&self) {
        self.reload.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }
}

/// Per-process policy state.
#[derive(Debug, Default)]
struct State {
    start_time: u64,
    band: Option<Band>,
    in_flight: Option<Arc<AtomicBool>>,
    last_compaction: Option<Instant>,
    last_anon_after: Option<u64>,
    paged_out: Vec<Range<u64>>,
    /// When it last entered the cached band (`None` outside it): the headroom trigger
    /// compacts the oldest first.
    cached_since: Option<Instant>,
    /// A compaction was submitted during this stay in the cached band (headroom trigger:
    /// not again until it leaves and comes back).
    compacted_in_stay: bool,
}

impl State {
    /// Submits a compaction of this process (`pid`) and marks it in flight.
    fn compact(
        &mut self,
        worker: &Worker,
        pid: u32,
        comm: String,
        cfg: &crate::config::Compaction,
        dry_run: bool,
    ) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.in_flight = Some(cancel.clone());
        worker.submit(
            Job::Compact {
                pid,
                start_time: self.start_time,
                comm,
                last_anon_after: self.last_anon_after,
                cancel,
            },
            cfg,
            dry_run,
        );
    }
}

/// A running daemon.
pub struct Daemon {
    options: Options,
    config: Config,
    stats: Arc<Stats>,
    marks: Marks,
    scanner: Scanner,
    scope: Option<MemoryCgroup>,
    cached_cgroups: Vec<MemoryCgroup>,
    states: HashMap<u32, State>,
    worker: Worker,
    outcomes: Receiver<Outcome>,
    candidates: Arc<Mutex<Vec<Candidate>>>,
    kills: Arc<Mutex<Vec<KillRecord>>>,
    killer: Option<Killer>,
    _server: Server,
    control: Control,
    wake_rx: Receiver<()>,
    /// Re-rank every process at the next pass (after a reload changed the bands).
    reevaluate: bool,
    /// A job finished since the headroom was last checked.
    job_finished: bool,
    /// Where metrics are served, if they are.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_cgroups(paths: &[String]) -> Vec<MemoryCgroup> {
    paths
        .iter()
        .filter_map(|p| {
            let path = resolve_cgroup(p)?;
            match MemoryCgroup::open(&path) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::warn!(cgroup = %path.display(), error = %e, "cached cgroup ignored");
                    None
                }
            }
        })
        .collect()
}

impl Daemon {
    /// Sets everything up (socket, metrics, worker, killer); [`Daemon::run`] then loops.
    pub fn start(options: Options) -> Result<Daemon, Error> {
        let config = options.config.clone();
        let stats = Arc::new(Stats::default());
        stats.dry_run.store(options.dry_run, Ordering::Relaxed);
        let scope = match config.scope_cgroup() {
            Some(path) => {
                Some(MemoryCgroup::open(&path).map_err(|source| Error::Scope { path, source })?)
            }
            None => None,
        };
        let (wake, wake_rx) = std::sync::mpsc::channel();
        let control = Control {
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
            wake: wake.clone(),
        };
        let marks: Marks = Arc::default();
        let socket_path = options
            .socket
            .clone()
            .unwrap_or_else(|| config.socket.path.clone());
        let server = Server::start(
            &socket_path,
            config.socket.mode,
            Context {
                marks: marks.clone(),
                stats: stats.clone(),
                scope: scope.clone(),
                wake,
            },
        )?;
        let metrics_addr = if config.metrics.listen.is_empty() {
            None
        } else {
            Some(
                crate::metrics::serve(&config.metrics.listen, stats.clone()).map_err(|source| {
                    Error::Metrics {
                        addr: config.metrics.listen.clone(),
                        source,
                    }
                })?,
            )
        };
        let (otx, outcomes) = std::sync::mpsc::channel();
        let worker = Worker::start(otx).map_err(Error::Thread)?;
        let candidates = Arc::default();
        let kills = Arc::default();
        let mut daemon = Daemon {
            cached_cgroups: open_cgroups(&config.ranks.cached_cgroups),
            options,
            config,
            stats,
            marks,
            scanner: Scanner::new(),
            scope,
            states: HashMap::new(),
            worker,
            outcomes,
            candidates,
            kills,
            killer: None,
            _server: server,
            control,
            wake_rx,
            reevaluate: false,
            job_finished: false,
            metrics_addr,
        };
        daemon.start_killer()?;
        tracing::info!(
            socket = %socket_path.display(),
            scope = ?daemon.scope.as_ref().map(|s| s.path().display().to_string()),
            dry_run = daemon.options.dry_run,
            metrics = ?daemon.metrics_addr,
            "ebbd started"
        );
        Ok(daemon)
    }

    fn start_killer(&mut self) -> Result<(), Error> {
        self.killer = None;
        if !self.config.kill.enabled {
            return Ok(());
        }
        let killer = Killer::start(
            self.config.kill.clone(),
            self.config.kill_cgroup(),
            self.candidates.clone(),
            self.stats.clone(),
            self.kills.clone(),
            self.options.dry_run,
        )?;
        tracing::info!(sources = ?killer.sources, min_level = ?self.config.kill.min_level, "killer watching");
        self.killer = Some(killer);
        Ok(())
    }

    /// A handle to stop or reload it.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The last [`crate::killer::KILL_LOG_LEN`] kills (dry-run ones included), oldest first.
    pub fn kills(&self) -> Arc<Mutex<Vec<KillRecord>>> {
        self.kills.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn reload(&mut self) {
        let Some(path) = self.options.config_path.clone() else {
            tracing::info!("reload asked, but ebbd runs without a config file: nothing to do");
            return;
        };
        match Config::load(&path) {
            Ok(new) => {
                if new.socket != self.config.socket
                    || new.metrics != self.config.metrics
                    || new.scope != self.config.scope
                {
                    tracing::warn!("scope, socket and metrics changes take effect at restart");
                }
                let kill_changed = new.kill != self.config.kill;
                let scope = std::mem::replace(&mut self.config.scope, new.scope.clone());
                let socket = self.config.socket.clone();
                let metrics = self.config.metrics.clone();
                self.config = Config {
                    scope,
                    socket,
                    metrics,
                    ..new
                };
                self.cached_cgroups = open_cgroups(&self.config.ranks.cached_cgroups);
                self.reevaluate = true;
                if kill_changed && let Err(e) = self.start_killer() {
                    tracing::error!(error = %e, "killer not restarted after reload");
                }
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; keeping the old config");
            }
        }
    }

    fn band_of(
        &self,
        pid: u32,
        adj: i16,
        start_time: u64,
        cached_cg: bool,
        frozen: bool,
    ) -> (Band, Option<Band>) {
        let mark = lock(&self.marks)
            .get(&pid)
            .filter(|(st, _)| *st == start_time)
            .map(|(_, b)| *b);
        let band = match mark {
            Some(b) => b,
            None if cached_cg || frozen => Band::Cached,
            None => Band::from_adj(adj, &self.config.ranks),
        };
        (band, mark)
    }

    /// One pass: scan, act on changes, collect finished jobs.
    pub fn tick(&mut self) {
        let (mut changes, scan) = self.scanner.scan(
            self.scope.as_ref(),
            &self.config.ranks,
            &self.cached_cgroups,
        );
        self.stats.record_scan(scan.elapsed);
        // Marked processes (their mark may have changed), and after a reload every process:
        // re-rank them too.
        let mut marked: Vec<u32> = lock(&self.marks).keys().copied().collect();
        if std::mem::take(&mut self.reevaluate) {
            marked.extend(self.scanner.processes().map(|t| t.pid));
        }
        for pid in marked {
            if self.scanner.get(pid).is_some() {
                changes.push(Change::Changed(pid));
            }
        }
        for change in changes {
            match change {
                Change::Gone(pid) => self.gone(pid),
                Change::New(pid) | Change::Changed(pid) => self.update(pid),
            }
        }
        self.collect();
        self.keep_headroom();
        // Bands and kill candidates for status and the killer.
        let mut bands: BTreeMap<Band, u64> = BTreeMap::new();
        let mut cands = Vec::new();
        for t in self.scanner.processes() {
            let (band, mark) =
                self.band_of(t.pid, t.adj, t.start_time, t.in_cached_cgroup, t.frozen);
            *bands.entry(band).or_default() += 1;
            cands.push(Candidate {
                pid: t.pid,
                start_time: t.start_time,
                comm: t.comm.clone(),
                adj: kill_adj(t.adj, mark, &self.config.ranks),
                marked: mark.is_some(),
            });
        }
        self.stats.set_bands(bands);
        *lock(&self.candidates) = cands;
    }

    fn gone(&mut self, pid: u32) {
        let old = self.states.remove(&pid);
        if let Some(flag) = old.as_ref().and_then(|s| s.in_flight.as_ref()) {
            flag.store(true, Ordering::Relaxed);
        }
        // Drop its mark, unless the mark is already for a newcomer with this pid.
        let mut marks = lock(&self.marks);
        let newcomer = crate::scan::read_stat(pid).map(|s| s.start_time);
        if marks.get(&pid).is_some_and(|(st, _)| Some(*st) != newcomer) {
            marks.remove(&pid);
        }
    }

    fn update(&mut self, pid: u32) {
        let Some(t) = self.scanner.get(pid).cloned() else {
            return;
        };
        let (band, _) = self.band_of(pid, t.adj, t.start_time, t.in_cached_cgroup, t.frozen);
        let state = self.states.entry(pid).or_default();
        if state.start_time != t.start_time {
            // A new process (or a reused pid): start afresh.
            if let Some(flag) = state.in_flight.take() {
                flag.store(true, Ordering::Relaxed);
            }
            *state = State {
                start_time: t.start_time,
                ..State::default()
            };
        }
        let old = state.band.replace(band);
        if old == Some(band) {
            return;
        }
        tracing::debug!(pid, comm = %t.comm, adj = t.adj, from = ?old, to = %band, "band change");
        let cfg = &self.config.compaction;
        if band == Band::Cached {
            state.cached_since = Some(Instant::now());
            state.compacted_in_stay = false;
            if !cfg.enabled || state.in_flight.is_some() || cfg.trigger == Trigger::Headroom {
                // Headroom: compacted by `keep_headroom` when the scope runs short.
                return;
            }
            if let Some(at) = state.last_compaction
                && at.elapsed() < Duration::from_secs(cfg.min_interval_s)
            {
                tracing::info!(pid, comm = %t.comm, "compaction skipped: within min_interval_s of the last one");
                self.stats.record_skip("interval");
                return;
            }
            state.compact(&self.worker, pid, t.comm.clone(), cfg, self.options.dry_run);
        } else if old == Some(Band::Cached) {
            state.cached_since = None;
            if let Some(flag) = &state.in_flight {
                tracing::info!(pid, comm = %t.comm, to = %band, "left the cached band: cancelling its compaction");
                flag.store(true, Ordering::Relaxed);
            }
            if cfg.prefetch_on_resume && !state.paged_out.is_empty() {
                let ranges = std::mem::take(&mut state.paged_out);
                self.worker.submit(
                    Job::Prefetch {
                        pid,
                        start_time: t.start_time,
                        ranges,
                    },
                    cfg,
                    self.options.dry_run,
                );
            }
        }
    }

    /// Bytes free under the tightest limit on the scope, and the headroom to keep there:
    /// `headroom_pct` of that limit. Page cache counts as used: reaching the limit means
    /// reclaim in the allocating task, and usage is what the killer's watermark watches. Without a limited scope, MemAvailable and `headroom_pct`
    /// of MemTotal. `None` when neither can be read (logged).
    pub fn free_and_headroom(&self) -> Option<(u64, u64)> {
        let pct = u128::from(self.config.compaction.headroom_pct);
        let share = |total: u64| (u128::from(total) * pct / 100) as u64;
        if let Some(scope) = &self.scope {
            match scope.room() {
                Ok(Some(room)) => return Some((room.free(), share(room.limit))),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "scope's limit or usage unreadable: headroom not checked");
                    return None;
                }
            }
        }
        match ebb::procfs::meminfo::read() {
            Ok(m) => Some((m.mem_available, share(m.mem_total))),
            Err(e) => {
                tracing::warn!(error = %e, "/proc/meminfo unreadable: headroom not checked");
                None
            }
        }
    }

    /// Headroom trigger: while free memory is below the headroom and no compaction is
    /// running, compacts the process cached longest that has not been compacted during its
    /// current stay in the cached band (one at a time: its result is measured before the
    /// next is chosen).
    fn keep_headroom(&mut self) {
        self.job_finished = false;
        let cfg = &self.config.compaction;
        if !cfg.enabled || cfg.trigger != Trigger::Headroom {
            return;
        }
        if self.states.values().any(|s| s.in_flight.is_some()) {
            return;
        }
        let Some((free, headroom)) = self.free_and_headroom() else {
            return;
        };
        self.stats.set_headroom(free, headroom);
        if free >= headroom {
            return;
        }
        let min_interval = Duration::from_secs(cfg.min_interval_s);
        let oldest = self
            .states
            .iter()
            .filter(|(_, s)| {
                s.band == Some(Band::Cached)
                    && !s.compacted_in_stay
                    && s.last_compaction
                        .is_none_or(|at| at.elapsed() >= min_interval)
            })
            .filter_map(|(pid, s)| Some((*pid, s.cached_since?)))
            .min_by_key(|&(_, since)| since);
        let Some((pid, since)) = oldest else {
            // Nothing left to compact: the kernel's reclaim and the killer take it from here.
            return;
        };
        let Some(t) = self.scanner.get(pid).cloned() else {
            return;
        };
        let Some(state) = self.states.get_mut(&pid) else {
            return;
        };
        tracing::info!(
            pid,
            comm = %t.comm,
            free,
            headroom,
            cached_for_ms = since.elapsed().as_millis() as u64,
            "short of headroom: compacting the process cached longest"
        );
        state.compacted_in_stay = true;
        self.stats
            .headroom_compactions
            .fetch_add(1, Ordering::Relaxed);
        state.compact(
            &self.worker,
            pid,
            t.comm,
            &self.config.compaction,
            self.options.dry_run,
        );
    }

    /// Takes the worker's finished jobs.
    fn collect(&mut self) {
        while let Ok(outcome) = self.outcomes.try_recv() {
            self.job_finished = true;
            match outcome {
                Outcome::Compacted {
                    start_time,
                    record: r,
                } => {
                    self.stats.record_compaction(&r);
                    tracing::info!(
                        pid = r.pid,
                        comm = %r.comm,
                        mode = r.mode.as_str(),
                        file_only_reason = r.file_only_reason.unwrap_or(""),
                        rss_before = r.before.rss,
                        rss_after = r.after.rss,
                        anon_before = r.before.anon,
                        swap_before = r.before.swap,
                        swap_after = r.after.swap,
                        bytes_advised = r.bytes_advised,
                        calls = r.calls,
                        cancelled = r.cancelled,
                        duration_ms = r.duration.as_secs_f64() * 1e3,
                        cpu_ms = r.cpu.as_secs_f64() * 1e3,
                        "compacted"
                    );
                    if let Some(s) = self.states.get_mut(&r.pid)
                        && s.start_time == start_time
                    {
                        s.in_flight = None;
                        s.last_compaction = Some(Instant::now());
                        s.last_anon_after = Some(r.after.anon);
                        s.paged_out = r.anon_ranges;
                        // Left the band while compacting: prefetch now if asked.
                        if s.band != Some(Band::Cached)
                            && self.config.compaction.prefetch_on_resume
                            && !s.paged_out.is_empty()
                        {
                            let ranges = std::mem::take(&mut s.paged_out);
                            self.worker.submit(
                                Job::Prefetch {
                                    pid: r.pid,
                                    start_time,
                                    ranges,
                                },
                                &self.config.compaction,
                                self.options.dry_run,
                            );
                        }
                    }
                }
                Outcome::Skipped {
                    pid,
                    reason,
                    detail,
                } => {
                    self.stats.record_skip(reason);
                    tracing::info!(pid, reason, detail = %detail, "compaction skipped");
                    if reason == "gone" {
                        // Exited, or the pid now names another process: forget it, so the
                        // next scan reads whatever has this pid afresh (identity included).
                        self.scanner.forget(pid);
                        self.states.remove(&pid);
                    } else if let Some(s) = self.states.get_mut(&pid) {
                        s.in_flight = None;
                    }
                }
                Outcome::Prefetched {
                    pid,
                    bytes,
                    rss_gained,
                    duration,
                } => {
                    self.stats.prefetches.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        pid,
                        bytes,
                        rss_gained,
                        duration_ms = duration.as_secs_f64() * 1e3,
                        "prefetched on resume"
                    );
                }
            }
        }
    }

    /// Loops until [`Control::stop`].
    pub fn run(&mut self) {
        while !self.control.stop.load(Ordering::Relaxed) {
            if self.control.reload.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            self.tick();
            let deadline =
                Instant::now() + Duration::from_millis(self.config.ranks.scan_interval_ms);
            // Sleep until the next scan, waking early for a mark, a stop or a reload; collect
            // compaction outcomes as they come so status stays current.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || self.control.stop.load(Ordering::Relaxed) {
                    break;
                }
                match self
                    .wake_rx
                    .recv_timeout(left.min(Duration::from_millis(50)))
                {
                    Ok(()) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        self.collect();
                        // A compaction finished: the next one need not wait for the scan.
                        if std::mem::take(&mut self.job_finished) {
                            self.keep_headroom();
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(left.min(Duration::from_millis(50)))
                    }
                }
            }
        }
        // Cancel running compactions so the worker finishes quickly.
        for s in self.states.values() {
            if let Some(f) = &s.in_flight {
                f.store(true, Ordering::Relaxed);
            }
        }
        tracing::info!("ebbd stopping");
    }
}
