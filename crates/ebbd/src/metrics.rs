//! Counters, the `status` reply, and Prometheus text on a loopback address.
//!
//! One [`Stats`] is shared by the policy loop, the compaction outcomes, the killer, the
//! socket server and the metrics responder. The HTTP responder is a few lines on
//! `std::net`: it answers every request on its (loopback-only) listener with the text
//! exposition format, version 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ranks::Band;

/// The daemon's counters.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// Whether the daemon acts on nothing.
    pub dry_run: AtomicBool,
    /// Compactions run (including cancelled ones).
    pub compactions: AtomicU64,
    /// Compactions cancelled between batches.
    pub compactions_cancelled: AtomicU64,
    /// Bytes the kernel reported advised.
    pub compaction_bytes_advised: AtomicU64,
    /// Rss before − after, summed (measured).
    pub rss_reclaimed_bytes: AtomicU64,
    /// Swap after − before, summed (measured).
    pub swap_gained_bytes: AtomicU64,
    /// Time spent compacting, microseconds.
    pub compaction_us: AtomicU64,
    /// CPU time the compactions took (the worker thread's), microseconds.
    pub compaction_cpu_us: AtomicU64,
    /// Prefetches run.
    pub prefetches: AtomicU64,
    /// Pressure events received.
    pub pressure_events: AtomicU64,
    /// Scans run.
    pub scans: AtomicU64,
    /// Time spent scanning, microseconds.
    pub scan_us: AtomicU64,
    /// Time spent killing (signal to exit), microseconds.
    pub kill_us: AtomicU64,
    /// Watermark events not acted on: with clean page cache counted as free, below the kill level.
    pub kills_unconfirmed: AtomicU64,
    /// Compactions started because the scope was short of headroom (`trigger = "headroom"`).
    pub headroom_compactions: AtomicU64,
    /// Bytes free under the scope's tightest limit at the last headroom check
    /// (`u64::MAX`: never checked).
    pub free_bytes: AtomicU64,
    /// The headroom ebbd keeps free, bytes, at the last check.
    pub headroom_bytes: AtomicU64,
    skipped: Mutex<BTreeMap<String, u64>>,
    kills: Mutex<BTreeMap<String, u64>>,
    bands: Mutex<BTreeMap<Band, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            dry_run: AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            compactions_cancelled: AtomicU64::new(0),
            compaction_bytes_advised: AtomicU64::new(0),
            rss_reclaimed_bytes: AtomicU64::new(0),
            swap_gained_bytes: AtomicU64::new(0),
            compaction_us: AtomicU64::new(0),
            compaction_cpu_us: AtomicU64::new(0),
            prefetches: AtomicU64::new(0),
            pressure_events: AtomicU64::new(0),
            scans: AtomicU64::new(0),
            scan_us: AtomicU64::new(0),
            kill_us: AtomicU64::new(0),
            kills_unconfirmed: AtomicU64::new(0),
            headroom_compactions: AtomicU64::new(0),
            free_bytes: AtomicU64::new(u64::MAX),
            headroom_bytes: AtomicU64::new(0),
            skipped: Mutex::new(BTreeMap::new()),
            kills: Mutex::new(BTreeMap::new()),
            bands: Mutex::new(BTreeMap::new()),
        }
    }
}

/// CPU time (user + system) of this process, seconds.
pub fn cpu_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = text.rfind(')').and_then(|i| text.get(i + 1..)) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime 15; rest[0] is field 3.
    let ticks: u64 = [14, 15]
        .iter()
        .filter_map(|n| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    ticks as f64 / hz as f64
}

fn add_us(c: &AtomicU64, d: Duration) {
    c.fetch_add(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

impl Stats {
    /// Records a finished compaction.
    pub fn record_compaction(&self, r: &crate::compaction::Record) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
        if r.cancelled {
            self.compactions_cancelled.fetch_add(1, Ordering::Relaxed);
        }
        self.compaction_bytes_advised
            .fetch_add(r.bytes_advised, Ordering::Relaxed);
        self.rss_reclaimed_bytes
            .fetch_add(r.rss_reclaimed(), Ordering::Relaxed);
        self.swap_gained_bytes
            .fetch_add(r.swap_gained(), Ordering::Relaxed);
        add_us(&self.compaction_us, r.duration);
        add_us(&self.compaction_cpu_us, r.cpu);
    }

    /// Records a compaction decided against.
    pub fn record_skip(&self, reason: &str) {
        *lock(&self.skipped).entry(reason.to_string()).or_default() += 1;
    }

    /// Records a kill.
    pub fn record_kill(&self, reason: &str, took: Duration) {
        *lock(&self.kills).entry(reason.to_string()).or_default() += 1;
        add_us(&self.kill_us, took);
    }

    /// Records a scan.
    pub fn record_scan(&self, took: Duration) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        add_us(&self.scan_us, took);
    }

    /// Records a headroom check: bytes free and the headroom wanted.
    pub fn set_headroom(&self, free: u64, headroom: u64) {
        self.free_bytes.store(free, Ordering::Relaxed);
        self.headroom_bytes.store(headroom, Ordering::Relaxed);
    }

    /// The last headroom check, if any: (free, headroom) bytes.
    pub fn headroom(&self) -> Option<(u64, u64)> {
        let free = self.free_bytes.load(Ordering::Relaxed);
        (free != u64::MAX).then(|| (free, self.headroom_bytes.load(Ordering::Relaxed)))
    }

    /// Sets the processes per band.
    pub fn set_bands(&self, counts: BTreeMap<Band, u64>) {
        *lock(&self.bands) = counts;
    }

    /// Kills so far by reason.
    pub fn kills(&self) -> BTreeMap<String, u64> {
        lock(&self.kills).clone()
    }

    /// The `status` reply of the socket protocol.
    pub fn status_json(&self) -> Value {
        let bands = lock(&self.bands).clone();
        let mut processes = serde_json::Map::new();
        for b in Band::ALL {
            processes.insert(
                b.as_str().into(),
                json!(bands.get(&b).copied().unwrap_or(0)),
            );
        }
        let kills = self.kills();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "ok": true,
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "dry_run": self.dry_run.load(Ordering::Relaxed),
            "processes": processes,
            "compactions": get(&self.compactions),
            "compactions_cancelled": get(&self.compactions_cancelled),
            "compactions_skipped": lock(&self.skipped).clone(),
            "compaction_bytes_advised": get(&self.compaction_bytes_advised),
            "rss_reclaimed_bytes": get(&self.rss_reclaimed_bytes),
            "swap_gained_bytes": get(&self.swap_gained_bytes),
            "compaction_seconds": get(&self.compaction_us) as f64 / 1e6,
            "compaction_cpu_seconds": get(&self.compaction_cpu_us) as f64 / 1e6,
            "kills": {"total": kills.values().sum::<u64>(), "by_reason": kills},
            "pressure_events": get(&self.pressure_events),
            "cpu_seconds": cpu_seconds(),
            "prefetches": get(&self.prefetches),
            "scans": get(&self.scans),
            "scan_seconds": get(&self.scan_us) as f64 / 1e6,
            "headroom_compactions": get(&self.headroom_compactions),
            "kills_unconfirmed": get(&self.kills_unconfirmed),
            "headroom": self.headroom().map(|(free, want)| json!({"free_bytes": free, "headroom_bytes": want})),
        })
    }

    /// Prometheus text exposition of every counter.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "ebbd_compactions_total",
            "Compactions run.",
            get(&self.compactions).to_string(),
        );
        counter(
            "ebbd_compactions_cancelled_total",
            "Compactions cancelled because the process left the cached band.",
            get(&self.compactions_cancelled).to_string(),
        );
        counter(
            "ebbd_compaction_bytes_advised_total",
            "Bytes given MADV_COLD or MADV_PAGEOUT (as the kernel reported).",
            get(&self.compaction_bytes_advised).to_string(),
        );
        counter(
            "ebbd_rss_reclaimed_bytes_total",
            "Rss before minus after each compaction (measured).",
            get(&self.rss_reclaimed_bytes).to_string(),
        );
        counter(
            "ebbd_swap_gained_bytes_total",
            "Swap after minus before each compaction (measured).",
            get(&self.swap_gained_bytes).to_string(),
        );
        counter(
            "ebbd_compaction_seconds_total",
            "Time spent in compaction advice.",
            format!("{}", get(&self.compaction_us) as f64 / 1e6),
        );
        counter(
            "ebbd_compaction_cpu_seconds_total",
            "CPU time of compactions (mostly the kernel compressing pages into swap).",
            format!("{}", get(&self.compaction_cpu_us) as f64 / 1e6),
        );
        counter(
            "ebbd_prefetches_total",
            "Prefetches on resume.",
            get(&self.prefetches).to_string(),
        );
        counter(
            "ebbd_pressure_events_total",
            "Pressure events received.",
            get(&self.pressure_events).to_string(),
        );
        counter(
            "ebbd_scans_total",
            "Process scans.",
            get(&self.scans).to_string(),
        );
        counter(
            "ebbd_scan_seconds_total",
            "Time spent scanning /proc.",
            format!("{}", get(&self.scan_us) as f64 / 1e6),
        );
        counter(
            "ebbd_kill_seconds_total",
            "Time from kill signal to exit.",
            format!("{}", get(&self.kill_us) as f64 / 1e6),
        );
        counter(
            "ebbd_cpu_seconds_total",
            "CPU time of ebbd.",
            format!("{}", cpu_seconds()),
        );
        counter(
            "ebbd_kills_unconfirmed_total",
            "Watermark events not acted on: below the kill level once clean page cache counts as free.",
            get(&self.kills_unconfirmed).to_string(),
        );
        counter(
            "ebbd_headroom_compactions_total",
            "Compactions started because the scope was short of headroom.",
            get(&self.headroom_compactions).to_string(),
        );
        if let Some((free, want)) = self.headroom() {
            let _ = writeln!(
                out,
                "# HELP ebbd_free_bytes Bytes free under the scope's tightest limit (or MemAvailable), at the last headroom check.\n# TYPE ebbd_free_bytes gauge\nebbd_free_bytes {free}\n# HELP ebbd_headroom_bytes The headroom ebbd keeps free.\n# TYPE ebbd_headroom_bytes gauge\nebbd_headroom_bytes {want}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ebbd_compactions_skipped_total Compactions decided against, by reason.\n# TYPE ebbd_compactions_skipped_total counter"
        );
        for (reason, n) in lock(&self.skipped).iter() {
            let _ = writeln!(
                out,
                "ebbd_compactions_skipped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP ebbd_kills_total Processes killed, by reason.\n# TYPE ebbd_kills_total counter"
        );
        for (reason, n) in self.kills() {
            let _ = writeln!(out, "ebbd_kills_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ebbd_processes Managed processes by band.\n# TYPE ebbd_processes gauge"
        );
        let bands = lock(&self.bands).clone();
        for b in Band::ALL {
            let _ = writeln!(
                out,
                "ebbd_processes{{band=\"{}\"}} {}",
                b.as_str(),
                bands.get(&b).copied().unwrap_or(0)
            );
        }
        out
    }
}

/// Serves [`Stats::prometheus`] on `addr` (which must be loopback) from a thread; returns the
/// bound address.
pub fn serve(addr: &str, stats: Arc<Stats>) -> std::io::Result<SocketAddr> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other(format!("{addr:?} is not an address:port")))?;
    if !parsed.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "metrics are served on loopback only, and {} is not loopback",
            parsed.ip()
        )));
    }
    let listener = TcpListener::bind(parsed)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ebbd-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                // Read the request head (whatever it asks for, the answer is the metrics).
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = stats.prometheus();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(bound)
}
