//! `ebb bench pressure`: how soon each pressure source reports a child overrunning its
//! sandbox limit, and what an idle monitor costs.
//!
//! Per repeat: a fresh [`Sandbox`] (64 MiB limit, swap to shared zram so the child survives
//! and pressure is sustained), an `ebb-hog` child holding 24 MiB (below every watermark), a
//! fresh [`Monitor`] with the v1 `pressure_level`, watermark and system PSI sources. After a
//! settle period the child is told to fill 160 MiB at once. A sampler thread reads the
//! group's `memory.failcnt` every ~0.5 ms: its first rise is "the limit was reached" (t=0).
//! Each source's latency is its first event's time minus t=0 (negative: it warned before the
//! limit, as a watermark below 100 % may). p50/p95 over the repeats.
//!
//! Idle: one sandbox with a child holding 24 MiB, a monitor with every source (MemAvailable,
//! the one timer, included, though `Monitor::auto` would not pick it for a limited group), for 30 s (`--quick`: 5 s). Counts events and reads the monitor
//! thread's CPU time from `/proc/self/task/<tid>/schedstat` (ns) and `.../stat` (ticks).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ebb::pressure::{
    DEFAULT_MEM_AVAILABLE_INTERVAL, Event, Monitor, Source, SourceKind, Stall, V1_WATERMARK_RECHECK,
};

use crate::{Hog, Sandbox, SandboxConfig, ZramSwap};

const MIB: u64 = 1 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// 3 repeats and a 5 s idle window instead of 10 and 30 s.
    pub quick: bool,
    /// Overrun repeats (`None`: 10, or 3 with `quick`).
    pub repeats: Option<usize>,
    /// Idle window (`None`: 30 s, or 5 s with `quick`).
    pub idle: Option<Duration>,
    /// The sandbox's memory limit.
    pub limit_bytes: u64,
    /// The PSI trigger's stall threshold (its window is 2 s, the kernel's smallest here).
    pub psi_threshold: Duration,
    /// The PSI trigger's window.
    pub psi_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            repeats: None,
            idle: None,
            limit_bytes: 64 * MIB,
            psi_threshold: Duration::from_millis(50),
            psi_window: Duration::from_secs(2),
        }
    }
}

/// Latency figures of one source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceReport {
    /// Median delay from the limit being reached to the first event (ms); `None` if never seen.
    pub latency_ms_p50: Option<f64>,
    /// 95th percentile (nearest rank).
    pub latency_ms_p95: Option<f64>,
    /// Fastest.
    pub latency_ms_min: Option<f64>,
    /// Slowest.
    pub latency_ms_max: Option<f64>,
    /// Repeats in which the source reported the overrun.
    pub detected: usize,
    /// Repeats in which it did not (within the PSI window + 2 s).
    pub missed: usize,
    /// The level of each first event, counted.
    pub first_levels: BTreeMap<String, usize>,
    /// The bound the issue sets (ms): 100 for v1 pressure_level and the watermark, the
    /// trigger window for PSI.
    pub target_ms: f64,
    /// p50 / target: below 1 meets it.
    pub p50_over_target: Option<f64>,
}

/// The benchmark's result; its JSON is the contract of `ebb bench pressure --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Whether `--quick` shortened the run.
    pub quick: bool,
    /// Overrun repeats.
    pub repeats: usize,
    /// The sandbox limit.
    pub limit_bytes: u64,
    /// Whether the overrun went to zram swap (else the child is OOM-killed).
    pub swap: bool,
    /// How the watermark source is woken here (v1: kernel usage thresholds, no timer).
    pub watermark_mode: String,
    /// The MemAvailable source's polling period (ms), the only timer in the idle run
    /// besides the v1 watermark's 1 s re-check.
    pub mem_available_interval_ms: f64,
    /// The PSI trigger used.
    pub psi_trigger: String,
    /// Per source name (`v1_pressure_level`, `watermark`, `psi`).
    pub sources: BTreeMap<String, SourceReport>,
    /// How long the idle sandbox was watched (s).
    pub idle_seconds: f64,
    /// Events seen while idle (target 0).
    pub idle_events: usize,
    /// Idle events per source.
    pub idle_events_by_source: BTreeMap<String, usize>,
    /// Monitor-thread CPU while idle, % of one core, from schedstat (ns resolution).
    pub idle_thread_cpu_percent: Option<f64>,
    /// The same from /proc/self/task/<tid>/stat utime+stime (10 ms ticks).
    pub idle_thread_cpu_percent_ticks: f64,
    /// Times the monitor thread ran while idle (schedstat timeslices), per second.
    pub idle_thread_wakeups_per_s: Option<f64>,
    /// Whether each target was met.
    pub meets: BTreeMap<String, bool>,
    /// Caveats from this run.
    pub notes: Vec<String>,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or reading the sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::Error),
    /// The child workload failed.
    #[error("child workload: {0}")]
    Hog(#[from] crate::hog::Error),
    /// The pressure monitor refused a source.
    #[error("pressure monitor: {0}")]
    Pressure(#[from] ebb::pressure::Error),
    /// Reading a /proc or cgroup file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

const OVERRUN_SOURCES: [SourceKind; 3] = [
    SourceKind::V1PressureLevel,
    SourceKind::Watermark,
    SourceKind::Psi,
];

/// Runs the benchmark.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let repeats = opts
        .repeats
        .unwrap_or(if opts.quick { 3 } else { 10 })
        .max(1);
    let idle = opts.idle.unwrap_or(if opts.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(30)
    });
    let mut notes = Vec::new();
    if opts.quick {
        notes.push(format!(
            "--quick: {repeats} repeats and a {}s idle window (the issue's idle target is over 30 s)",
            idle.as_secs()
        ));
    }
    let swap = match ZramSwap::shared(1024 * MIB, "lz4") {
        Ok(s) => Some(s),
        Err(e) => {
            notes.push(format!(
                "no zram swap ({e}): the child is OOM-killed at the limit"
            ));
            None
        }
    };
    let psi = Path::new("/proc/pressure/memory").exists();
    if !psi {
        notes.push("no /proc/pressure/memory: PSI not measured".into());
    }
    let psi_source = Source::psi_system(Stall::Some, opts.psi_threshold, opts.psi_window);
    let psi_trigger = match &psi_source {
        Source::Psi(p) => p.trigger(),
        _ => String::new(),
    };

    let mut latencies: BTreeMap<SourceKind, Vec<f64>> = BTreeMap::new();
    let mut levels: BTreeMap<SourceKind, BTreeMap<String, usize>> = BTreeMap::new();
    let mut missed: BTreeMap<SourceKind, usize> = BTreeMap::new();
    for i in 0..repeats {
        let r = overrun_once(opts, swap.is_some(), psi.then(|| psi_source.clone()), i)?;
        for kind in OVERRUN_SOURCES {
            if kind == SourceKind::Psi && !psi {
                continue;
            }
            match r.first.get(&kind) {
                Some((ms, level)) => {
                    latencies.entry(kind).or_default().push(*ms);
                    *levels
                        .entry(kind)
                        .or_default()
                        .entry(level.clone())
                        .or_default() += 1;
                }
                None => *missed.entry(kind).or_default() += 1,
            }
        }
        if let Some(n) = r.note {
            notes.push(n);
        }
    }

    let mut sources = BTreeMap::new();
    for kind in OVERRUN_SOURCES {
        if kind == SourceKind::Psi && !psi {
            continue;
        }
        let mut v = latencies.remove(&kind).unwrap_or_default();
        v.sort_by(f64::total_cmp);
        let target_ms = match kind {
            SourceKind::Psi => opts.psi_window.as_secs_f64() * 1000.0,
            _ => 100.0,
        };
        let p50 = percentile(&v, 50.0);
        sources.insert(
            kind.name().to_string(),
            SourceReport {
                latency_ms_p50: p50,
                latency_ms_p95: percentile(&v, 95.0),
                latency_ms_min: v.first().copied(),
                latency_ms_max: v.last().copied(),
                detected: v.len(),
                missed: missed.get(&kind).copied().unwrap_or(0),
                first_levels: levels.remove(&kind).unwrap_or_default(),
                target_ms,
                p50_over_target: p50.map(|p| p / target_ms),
            },
        );
    }

    let idle_r = idle_run(opts, idle, psi.then(|| psi_source.clone()))?;
    notes.extend(idle_r.note);

    let mut meets = BTreeMap::new();
    for (name, s) in &sources {
        meets.insert(
            format!("{name}_p50_within_{}ms", s.target_ms),
            s.missed == 0 && s.latency_ms_p50.is_some_and(|p| p <= s.target_ms),
        );
    }
    meets.insert("idle_events_zero".into(), idle_r.events == 0);
    let cpu = idle_r.cpu_percent.unwrap_or(idle_r.cpu_percent_ticks);
    meets.insert("idle_thread_cpu_at_most_0.1_percent".into(), cpu <= 0.1);

    Ok(Report {
        quick: opts.quick,
        repeats,
        limit_bytes: opts.limit_bytes,
        swap: swap.is_some(),
        watermark_mode: format!(
            "v1 memory thresholds via cgroup.event_control (eventfd per level), usage re-read every {:?}",
            V1_WATERMARK_RECHECK
        ),
        mem_available_interval_ms: DEFAULT_MEM_AVAILABLE_INTERVAL.as_secs_f64() * 1000.0,
        psi_trigger,
        sources,
        idle_seconds: idle.as_secs_f64(),
        idle_events: idle_r.events,
        idle_events_by_source: idle_r.by_source,
        idle_thread_cpu_percent: idle_r.cpu_percent,
        idle_thread_cpu_percent_ticks: idle_r.cpu_percent_ticks,
        idle_thread_wakeups_per_s: idle_r.wakeups_per_s,
        meets,
        notes,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

struct Overrun {
    /// Per source: (ms from limit reached to first event, its level).
    first: BTreeMap<SourceKind, (f64, String)>,
    note: Option<String>,
}

fn signed_ms(at: Instant, zero: Instant) -> f64 {
    if at >= zero {
        at.duration_since(zero).as_secs_f64() * 1000.0
    } else {
        -(zero.duration_since(at).as_secs_f64() * 1000.0)
    }
}

fn overrun_once(
    opts: &Options,
    swap: bool,
    psi: Option<Source>,
    i: usize,
) -> Result<Overrun, Error> {
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "bench-pressure".into(),
        memory_limit: Some(opts.limit_bytes),
        swap_limit: Some(if swap { 512 * MIB } else { 0 }),
    })?;
    let mut hog = Hog::spawn(Some(&sb))?;
    hog.alloc(opts.limit_bytes * 3 / 8)?;
    let monitor = Monitor::new()?;
    monitor.add(Source::v1_pressure_level(sb.path()))?;
    monitor.add(Source::watermark(sb.path()))?;
    if let Some(p) = psi {
        monitor.add(p)?;
    }
    let rx = monitor.subscribe();
    // Settle, and drop whatever was already pending (system PSI from other work).
    std::thread::sleep(Duration::from_millis(300));
    let stale = rx.try_iter().count();

    // The sampler: first rise of memory.failcnt = the limit was reached.
    let failcnt_path = sb.path().join("memory.failcnt");
    let failcnt = File::open(&failcnt_path).map_err(|source| Error::Io {
        path: failcnt_path.display().to_string(),
        source,
    })?;
    let base = read_u64(&failcnt).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if read_u64(&failcnt).is_some_and(|v| v > base) {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            None
        })
    };
    let t0 = Instant::now();
    let filler = std::thread::spawn(move || {
        let r = hog.fill(160 * MIB);
        (hog, r)
    });
    let deadline = t0 + opts.psi_window + Duration::from_secs(2);
    let mut events: Vec<Event> = Vec::new();
    let mut firsts = BTreeMap::new();
    while Instant::now() < deadline && firsts.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(e) = rx.recv_timeout(left) {
            firsts.entry(e.source).or_insert_with(|| e.clone());
            events.push(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let limit_at = sampler.join().ok().flatten();
    let (hog, fill) = filler
        .join()
        .unwrap_or_else(|_| panic!("the fill thread panicked"));
    drop(monitor);
    drop(hog);
    drop(sb);
    let mut note = (stale > 0)
        .then(|| format!("repeat {i}: {stale} event(s) before the overrun were discarded"));
    if let Err(e) = fill {
        note = Some(format!(
            "repeat {i}: the child did not survive the overrun: {e}"
        ));
    }
    let Some(zero) = limit_at else {
        return Ok(Overrun {
            first: BTreeMap::new(),
            note: Some(format!(
                "repeat {i}: memory.failcnt never rose; no latency recorded"
            )),
        });
    };
    let first = firsts
        .into_iter()
        .map(|(k, e)| (k, (signed_ms(e.at, zero), e.level.to_string())))
        .collect();
    Ok(Overrun { first, note })
}

fn read_u64(f: &File) -> Option<u64> {
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

struct Idle {
    events: usize,
    by_source: BTreeMap<String, usize>,
    cpu_percent: Option<f64>,
    cpu_percent_ticks: f64,
    wakeups_per_s: Option<f64>,
    note: Option<String>,
}

/// (ns on CPU, timeslices) from /proc/self/task/<tid>/schedstat.
fn schedstat(tid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let run = it.next()??;
    let _wait = it.next()??;
    Some((run, it.next()??))
}

/// utime + stime (clock ticks) from /proc/self/task/<tid>/stat.
fn stat_ticks(tid: u32) -> Result<u64, Error> {
    let path = format!("/proc/self/task/{tid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    // Fields after the `)` that closes comm: state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(num(11) + num(12))
}

fn idle_run(opts: &Options, idle: Duration, psi: Option<Source>) -> Result<Idle, Error> {
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "bench-pressure-idle".into(),
        memory_limit: Some(opts.limit_bytes),
        swap_limit: None,
    })?;
    let mut hog = Hog::spawn(Some(&sb))?;
    hog.alloc(opts.limit_bytes * 3 / 8)?;
    let monitor = Monitor::new()?;
    monitor.add(Source::v1_pressure_level(sb.path()))?;
    monitor.add(Source::watermark(sb.path()))?;
    monitor.add(Source::mem_available())?;
    if let Some(p) = psi {
        monitor.add(p)?;
    }
    let rx = monitor.subscribe();
    std::thread::sleep(Duration::from_millis(200));
    let tid = monitor.thread_id();
    let before = tid.and_then(schedstat);
    let ticks_before = tid.map(stat_ticks).transpose()?.unwrap_or(0);
    let start = Instant::now();
    let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
    let mut events = 0;
    while start.elapsed() < idle {
        if let Ok(e) = rx.recv_timeout(idle.saturating_sub(start.elapsed())) {
            events += 1;
            *by_source.entry(e.source.name().to_string()).or_default() += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = tid.and_then(schedstat);
    let ticks_after = tid.map(stat_ticks).transpose()?.unwrap_or(0);
    drop(monitor);
    drop(hog);
    drop(sb);
    // /proc reports utime/stime in USER_HZ, which is 100 on Linux whatever CONFIG_HZ is.
    let cpu_percent_ticks = (ticks_after - ticks_before) as f64 / 100.0 / elapsed * 100.0;
    let (cpu_percent, wakeups_per_s) = match (before, after) {
        (Some((r0, s0)), Some((r1, s1))) => (
            Some((r1 - r0) as f64 / 1e9 / elapsed * 100.0),
            Some((s1 - s0) as f64 / elapsed),
        ),
        _ => (None, None),
    };
    Ok(Idle {
        events,
        by_source,
        cpu_percent,
        cpu_percent_ticks,
        wakeups_per_s,
        note: cpu_percent
            .is_none()
            .then(|| "no schedstat: idle CPU from 10 ms ticks only".to_string()),
    })
}

impl Report {
    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "pressure: {} MiB sandbox, child fills 160 MiB{}; {} repeats; latency from memory.failcnt's first rise\n",
            self.limit_bytes / MIB,
            if self.swap { " (zram swap)" } else { " (no swap: OOM)" },
            self.repeats
        ));
        out.push_str(&format!(
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9}  first levels\n",
            "source", "p50 ms", "p95 ms", "min ms", "max ms", "detected", "missed", "target ms"
        ));
        for (name, s) in &self.sources {
            out.push_str(&format!(
                "{:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6} {:>9.0}  {:?}\n",
                name,
                f(s.latency_ms_p50),
                f(s.latency_ms_p95),
                f(s.latency_ms_min),
                f(s.latency_ms_max),
                s.detected,
                s.missed,
                s.target_ms,
                s.first_levels
            ));
        }
        out.push_str(&format!(
            "idle {:.0} s (v1 pressure_level, watermark, PSI, MemAvailable every {} ms): {} events {:?}; monitor thread CPU {}% (schedstat), {:.3}% (ticks), {} wakeups/s; PSI `{}`\n",
            self.idle_seconds,
            self.mem_available_interval_ms,
            self.idle_events,
            self.idle_events_by_source,
            self.idle_thread_cpu_percent.map_or("-".into(), |c| format!("{c:.4}")),
            self.idle_thread_cpu_percent_ticks,
            self.idle_thread_wakeups_per_s.map_or("-".into(), |w| format!("{w:.1}")),
            self.psi_trigger
        ));
        for (k, v) in &self.meets {
            out.push_str(&format!("  {k}: {}\n", if *v { "met" } else { "NOT met" }));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 95.0), Some(10.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn signed_latency() {
        let z = Instant::now();
        assert!(signed_ms(z + Duration::from_millis(5), z) > 4.9);
        assert!(signed_ms(z, z + Duration::from_millis(5)) < -4.9);
    }
}
