//! Memory-pressure signals: one monitor thread over PSI, cgroup v1 and v2, and MemAvailable.
//!
//! Everything ebb gives back to the kernel is given back *under pressure*: lazily freed pages
//! are dropped "if there is memory pressure", the heap and the purgeable cache shrink on it,
//! the daemon acts on it. This module tells them when, from whichever source the host has:
//!
//! | source | kernel interface | how it wakes the monitor |
//! | --- | --- | --- |
//! | [`SourceKind::Psi`] | `/proc/pressure/memory` or a v2 cgroup's `memory.pressure` trigger (`some 150000 2000000`) | `POLLPRI` on the trigger fd |
//! | [`SourceKind::V1PressureLevel`] | v1 `memory.pressure_level` + `cgroup.event_control` | one eventfd per level |
//! | [`SourceKind::V2Events`] | v2 `memory.events` (`high`, `max`, `oom`, `oom_kill` rising) | kernfs file-modified `POLLPRI`, else a timer |
//! | [`SourceKind::Watermark`] | v1 `memory.usage_in_bytes` thresholds via `cgroup.event_control`; v2 `memory.current`/`memory.max` | v1: one eventfd per level (plus a 1 s re-check); v2: a timer (default 50 ms) |
//! | [`SourceKind::MemAvailable`] | `MemAvailable` in `/proc/meminfo` | a timer (default 200 ms) |
//!
//! One background thread serves every registration of a [`Monitor`]: it sleeps in
//! `epoll_wait(2)` on all trigger fds and eventfds, with a timeout that is the next polling
//! deadline, so an idle monitor wakes only for its timed sources (a `pread(2)` of one or two
//! small files each), never spins. Timers are the last resort because on this lab's VM a
//! wake-up alone costs ~30–50 µs of CPU: a 50 ms timer is ~0.1–0.2 % of a core by itself.
//! Hence the v1 watermark is event-driven too, and MemAvailable polls every 200 ms.
//!
//! # Levels
//! Each source maps what it sees to a [`Level`]: PSI triggers report the level they were
//! registered with (default [`Level::Medium`]); v1 `pressure_level` reports the highest of
//! its `low`/`medium`/`critical` eventfds that fired; v2 `memory.events` reports `high` →
//! Low, `max` → Medium, `oom`/`oom_kill` → Critical; the watermark and MemAvailable compare
//! the fraction of memory in use with [`Thresholds`].
//!
//! # Rate limiting (the rule)
//! Per source: an event is delivered if it is the source's first, or its level is higher
//! than the last delivered one, or at least the monitor's `min_interval` (default
//! [`DEFAULT_MIN_INTERVAL`], 1 s) has passed since the last delivered one. Otherwise it is
//! dropped and counted; the count rides on the next delivered event of that source as
//! [`Event::suppressed`]. Escalation is therefore never delayed, and a storm costs
//! consumers at most one event per source per interval. Events that end a registration
//! ([`Detail::Removed`], [`Detail::Failed`]) are never dropped.
//!
//! # Removal and shutdown
//! When a watched cgroup is removed, its registration ends with one [`Detail::Removed`]
//! event (the v1 kernel signals the eventfds on removal; PSI trigger fds report `POLLERR`;
//! polled files stop reading) and the monitor carries on with the other sources. Dropping
//! the [`Monitor`] wakes its thread through an eventfd, joins it, and closes every fd.
//!
//! # Example
//! ```no_run
//! use ebb::pressure::{Monitor, Source};
//! let monitor = Monitor::new()?;
//! monitor.add(Source::mem_available())?;
//! let events = monitor.subscribe();
//! monitor.on_event(|e| eprintln!("{:?} from {}", e.level, e.source));
//! if let Ok(event) = events.recv_timeout(std::time::Duration::from_millis(10)) {
//!     println!("{}", serde_json::to_string(&event).unwrap());
//! }
//! # Ok::<(), ebb::pressure::Error>(())
//! ```
//!
//! # References
//! - Documentation/accounting/psi.rst (triggers), kernel/sched/psi.c (`psi_trigger_create`)
//! - Documentation/admin-guide/cgroup-v1/memory.rst §11 (memory pressure, `cgroup.event_control`)
//! - Documentation/admin-guide/cgroup-v2.rst (`memory.events`, `memory.current`, `memory.max`)
//! - epoll(7), eventfd(2)

mod auto;
mod error;
mod monitor;
mod psi;
mod source;
mod v1;

use std::path::PathBuf;
use std::time::Instant;

pub use auto::{AUTO_PSI_THRESHOLD, AUTO_PSI_WINDOW, Choice};
pub use error::Error;
pub use monitor::{DEFAULT_MIN_INTERVAL, Monitor, MonitorOptions, Snapshot, SourceInfo};
pub use psi::{PSI_WINDOW_MAX, PSI_WINDOW_MIN, Psi, Stall};
pub use source::{
    DEFAULT_MEM_AVAILABLE_INTERVAL, DEFAULT_POLL_INTERVAL, Source, Thresholds,
    V1_WATERMARK_RECHECK, V1Mode,
};

/// How urgently memory is wanted, in rising order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Reclaim has started: cheap give-backs are welcome.
    Low,
    /// Reclaim is costing work (swapping, stalls): give back what can be rebuilt.
    Medium,
    /// Close to OOM: give back everything that can be given.
    Critical,
}

impl Level {
    /// The name used by cgroup v1 `memory.pressure_level` and in JSON: `low`, `medium`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "low",
            Level::Medium => "medium",
            Level::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a pressure source; its [`name`](SourceKind::name) keys benchmark output and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A PSI trigger (system-wide or a v2 cgroup's `memory.pressure`).
    Psi,
    /// cgroup v1 `memory.pressure_level` through `cgroup.event_control`.
    V1PressureLevel,
    /// cgroup v2 `memory.events` counters.
    V2Events,
    /// A memcg usage-to-limit watermark.
    Watermark,
    /// `MemAvailable` from /proc/meminfo, the fallback that works everywhere.
    MemAvailable,
}

impl SourceKind {
    /// The stable name: `psi`, `v1_pressure_level`, `v2_events`, `watermark`, `mem_available`.
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Psi => "psi",
            SourceKind::V1PressureLevel => "v1_pressure_level",
            SourceKind::V2Events => "v2_events",
            SourceKind::Watermark => "watermark",
            SourceKind::MemAvailable => "mem_available",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one registration within a [`Monitor`] (returned by [`Monitor::add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SourceId(pub u32);

/// One pressure event.
///
/// Serialized (for `ebb watch --json`) as
/// `{"at_ms":…, "level":"low", "source":"v1_pressure_level", "id":0, "suppressed":0, "detail":{"kind":…}}`,
/// `at_ms` being milliseconds since the monitor started.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// When the monitor thread saw it (before reading the detail files).
    #[serde(skip)]
    pub at: Instant,
    /// Milliseconds from the monitor's start to `at`.
    pub at_ms: u64,
    /// How urgent.
    pub level: Level,
    /// Which kind of source.
    pub source: SourceKind,
    /// Which registration.
    pub id: SourceId,
    /// Events of this source dropped by the rate limit since the last delivered one.
    pub suppressed: u64,
    /// What triggered it.
    pub detail: Detail,
}

/// What triggered an [`Event`], read right after the wake-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    /// A PSI trigger fired.
    Psi {
        /// The pressure file (`/proc/pressure/memory` or a cgroup's `memory.pressure`).
        file: PathBuf,
        /// The trigger as written, e.g. `some 150000 2000000`.
        trigger: String,
        /// `some avg10` (percent) at the time of the event.
        some_avg10: f64,
        /// `some total` (µs).
        some_total_us: u64,
        /// `full avg10`, where the file has a `full` line.
        full_avg10: Option<f64>,
        /// `full total` (µs).
        full_total_us: Option<u64>,
    },
    /// cgroup v1 `memory.pressure_level` eventfds fired.
    V1PressureLevel {
        /// The cgroup.
        cgroup: PathBuf,
        /// The registration mode.
        mode: V1Mode,
        /// `memory.usage_in_bytes` at the time of the event.
        usage_bytes: Option<u64>,
        /// `memory.limit_in_bytes`.
        limit_bytes: Option<u64>,
    },
    /// cgroup v2 `memory.events` counters rose.
    V2Events {
        /// The cgroup.
        cgroup: PathBuf,
        /// The counters that rose (`high`, `max`, `oom`, `oom_kill`).
        rose: Vec<&'static str>,
        /// The counters now.
        counters: V2Counters,
    },
    /// Usage crossed a watermark of the limit.
    Watermark {
        /// The cgroup.
        cgroup: PathBuf,
        /// `memory.usage_in_bytes` / `memory.current`.
        usage_bytes: u64,
        /// `memory.limit_in_bytes` / `memory.max`.
        limit_bytes: u64,
        /// usage / limit.
        fraction: f64,
    },
    /// MemAvailable fell below a threshold.
    MemAvailable {
        /// `MemAvailable`, bytes.
        available_bytes: u64,
        /// `MemTotal`, bytes.
        total_bytes: u64,
        /// 1 - available / total.
        fraction_used: f64,
    },
    /// The watched cgroup (or file) went away; the registration has ended.
    Removed {
        /// The cgroup or file.
        path: PathBuf,
    },
    /// The source failed for good (e.g. a file stopped parsing); the registration has ended.
    Failed {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
}

/// The counters of a cgroup v2 `memory.events` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct V2Counters {
    /// Times usage went over `memory.high`.
    pub high: u64,
    /// Times usage was about to go over `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked.
    pub oom: u64,
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
}

impl V2Counters {
    /// The level that the counters rising from `before` to `self` stands for, and which rose.
    pub fn rise_since(&self, before: &V2Counters) -> Option<(Level, Vec<&'static str>)> {
        let mut rose = Vec::new();
        let mut level = None;
        for (name, now, was, l) in [
            ("high", self.high, before.high, Level::Low),
            ("max", self.max, before.max, Level::Medium),
            ("oom", self.oom, before.oom, Level::Critical),
            ("oom_kill", self.oom_kill, before.oom_kill, Level::Critical),
        ] {
            if now > was {
                rose.push(name);
                level = level.max(Some(l));
            }
        }
        level.map(|l| (l, rose))
    }
}

impl From<crate::cgroup::MemoryEvents> for V2Counters {
    fn from(e: crate::cgroup::MemoryEvents) -> Self {
        V2Counters {
            high: e.high,
            max: e.max,
            oom: e.oom,
            oom_kill: e.oom_kill,
        }
    }
}

/// Whole milliseconds from `start` to `at` (0 if `at` is earlier).
pub(crate) fn ms_since(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_counters_rise() {
        let a = V2Counters {
            high: 1,
            ..V2Counters::default()
        };
        let b = V2Counters {
            high: 4,
            max: 2,
            ..V2Counters::default()
        };
        let (level, rose) = b.rise_since(&a).unwrap();
        assert_eq!(level, Level::Medium);
        assert_eq!(rose, vec!["high", "max"]);
        assert!(b.rise_since(&b).is_none());
        let c = V2Counters { oom_kill: 1, ..b };
        assert_eq!(c.rise_since(&b).unwrap().0, Level::Critical);
    }

    #[test]
    fn event_serializes_with_the_contract_fields() {
        let e = Event {
            at: Instant::now(),
            at_ms: 12,
            level: Level::Medium,
            source: SourceKind::Watermark,
            id: SourceId(3),
            suppressed: 0,
            detail: Detail::Watermark {
                cgroup: "/sys/fs/cgroup/memory/ebb-x".into(),
                usage_bytes: 95,
                limit_bytes: 100,
                fraction: 0.95,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["at_ms"], 12);
        assert_eq!(v["level"], "medium");
        assert_eq!(v["source"], "watermark");
        assert_eq!(v["detail"]["kind"], "watermark");
        assert_eq!(v["detail"]["limit_bytes"], 100);
    }
}
