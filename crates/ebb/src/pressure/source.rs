//! What a registration watches ([`Source`]), and the monitor thread's per-registration state.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::psi::Psi;
use super::{Detail, Error, Level, SourceKind, V2Counters, v1};
use crate::cgroup::parse_limit;
use crate::procfs::{meminfo, pressure};

/// The default period of the timed sources (watermark, MemAvailable, unpollable
/// `memory.events`): short enough for a first event well under 100 ms after a limit is
/// reached, long enough that reading one or two small files costs well under 0.1 % of a core.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The default period of the MemAvailable source: /proc/meminfo is the costliest file
/// polled, and MemAvailable is the fallback with no latency target.
pub const DEFAULT_MEM_AVAILABLE_INTERVAL: Duration = Duration::from_millis(200);

/// How often a v1 watermark (woken by the kernel's usage thresholds, not a timer) re-reads
/// usage and limit: to repeat events while usage stays high and to re-arm its thresholds
/// when the limit changes.
pub const V1_WATERMARK_RECHECK: Duration = Duration::from_secs(1);

/// The v1 `memory.pressure_level` registration mode (memory.rst §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum V1Mode {
    /// Events in this cgroup and, unless handled there, its descendants.
    #[default]
    Default,
    /// Events in this cgroup and all its descendants, always.
    Hierarchy,
    /// Events in this cgroup only.
    Local,
}

impl V1Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            V1Mode::Default => "default",
            V1Mode::Hierarchy => "hierarchy",
            V1Mode::Local => "local",
        }
    }
}

/// Fractions of memory in use (usage/limit for a watermark, 1 - MemAvailable/MemTotal for
/// MemAvailable) at which the timed sources report each level.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Thresholds {
    /// At or above: [`Level::Low`].
    pub low: f64,
    /// At or above: [`Level::Medium`].
    pub medium: f64,
    /// At or above: [`Level::Critical`].
    pub critical: f64,
}

impl Thresholds {
    /// The watermark default: 90 %, 95 %, 99 % of the limit.
    pub const WATERMARK: Thresholds = Thresholds {
        low: 0.90,
        medium: 0.95,
        critical: 0.99,
    };
    /// The MemAvailable default: 90 %, 95 %, 98 % of MemTotal not available.
    pub const MEM_AVAILABLE: Thresholds = Thresholds {
        low: 0.90,
        medium: 0.95,
        critical: 0.98,
    };

    /// The level for `fraction` of memory in use, if any.
    pub fn level(&self, fraction: f64) -> Option<Level> {
        if fraction >= self.critical {
            Some(Level::Critical)
        } else if fraction >= self.medium {
            Some(Level::Medium)
        } else if fraction >= self.low {
            Some(Level::Low)
        } else {
            None
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let ok = self.low > 0.0
            && self.low <= self.medium
            && self.medium <= self.critical
            && self.critical <= 1.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Thresholds {
                low: self.low,
                medium: self.medium,
                critical: self.critical,
            })
        }
    }
}

/// What one registration of a [`Monitor`](super::Monitor) watches.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Source {
    /// A PSI trigger.
    Psi(Psi),
    /// cgroup v1 `memory.pressure_level` (all three levels) of `cgroup`.
    V1PressureLevel {
        /// The v1 memory cgroup directory.
        cgroup: PathBuf,
        /// The registration mode.
        mode: V1Mode,
    },
    /// cgroup v2 `memory.events` of `cgroup`: woken by kernfs change notification where the
    /// file can be polled, else read every `interval`.
    V2Events {
        /// The v2 cgroup directory.
        cgroup: PathBuf,
        /// The fallback polling period.
        interval: Duration,
    },
    /// usage/limit of `cgroup` against [`Thresholds`]. v2: read every `interval`. v1: the
    /// kernel's memory thresholds (`cgroup.event_control` on `memory.usage_in_bytes`, one
    /// eventfd per level) wake the monitor when usage crosses one, so no timer is needed;
    /// `interval` is ignored and usage is re-read every [`V1_WATERMARK_RECHECK`].
    Watermark {
        /// The memory cgroup directory.
        cgroup: PathBuf,
        /// Levels by fraction of the limit in use.
        thresholds: Thresholds,
        /// The polling period (v2).
        interval: Duration,
    },
    /// `MemAvailable` of /proc/meminfo, read every `interval`.
    MemAvailable {
        /// Levels by fraction of MemTotal not available.
        thresholds: Thresholds,
        /// The polling period.
        interval: Duration,
    },
}

impl Source {
    /// A system-wide PSI trigger (`/proc/pressure/memory`).
    pub fn psi_system(stall: super::Stall, threshold: Duration, window: Duration) -> Source {
        Source::Psi(Psi::system(stall, threshold, window))
    }

    /// A PSI trigger on a v2 cgroup's `memory.pressure`.
    pub fn psi_cgroup(
        cgroup: impl AsRef<Path>,
        stall: super::Stall,
        threshold: Duration,
        window: Duration,
    ) -> Source {
        Source::Psi(Psi::cgroup(cgroup, stall, threshold, window))
    }

    /// v1 `memory.pressure_level` of `cgroup` in the default mode.
    pub fn v1_pressure_level(cgroup: impl Into<PathBuf>) -> Source {
        Source::V1PressureLevel {
            cgroup: cgroup.into(),
            mode: V1Mode::Default,
        }
    }

    /// v2 `memory.events` of `cgroup`.
    pub fn v2_events(cgroup: impl Into<PathBuf>) -> Source {
        Source::V2Events {
            cgroup: cgroup.into(),
            interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// A usage/limit watermark on `cgroup` with [`Thresholds::WATERMARK`].
    pub fn watermark(cgroup: impl Into<PathBuf>) -> Source {
        Source::Watermark {
            cgroup: cgroup.into(),
            thresholds: Thresholds::WATERMARK,
            interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// MemAvailable with [`Thresholds::MEM_AVAILABLE`], read every
    /// [`DEFAULT_MEM_AVAILABLE_INTERVAL`].
    pub fn mem_available() -> Source {
        Source::MemAvailable {
            thresholds: Thresholds::MEM_AVAILABLE,
            interval: DEFAULT_MEM_AVAILABLE_INTERVAL,
        }
    }

    /// The kind of this source.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Psi(_) => SourceKind::Psi,
            Source::V1PressureLevel { .. } => SourceKind::V1PressureLevel,
            Source::V2Events { .. } => SourceKind::V2Events,
            Source::Watermark { .. } => SourceKind::Watermark,
            Source::MemAvailable { .. } => SourceKind::MemAvailable,
        }
    }

    /// The file or cgroup this source watches, for display.
    pub fn target(&self) -> PathBuf {
        match self {
            Source::Psi(p) => p.file.clone(),
            Source::V1PressureLevel { cgroup, .. }
            | Source::V2Events { cgroup, .. }
            | Source::Watermark { cgroup, .. } => cgroup.clone(),
            Source::MemAvailable { .. } => PathBuf::from(MEMINFO),
        }
    }

    /// Opens the source's files and registers it with the kernel (in the caller's thread, so
    /// errors come back to the caller).
    pub(crate) fn open(&self) -> Result<Io, Error> {
        let now = Instant::now();
        Ok(match self {
            Source::Psi(p) => Io::Psi {
                fd: p.open()?,
                file: p.file.clone(),
                trigger: p.trigger(),
                level: p.level,
            },
            Source::V1PressureLevel { cgroup, mode } => {
                require(cgroup, CgroupVersion::V1, SourceKind::V1PressureLevel)?;
                let fds = v1::register(cgroup, *mode)?;
                Io::V1 {
                    cgroup: cgroup.clone(),
                    mode: *mode,
                    fds,
                    usage: File::open(cgroup.join("memory.usage_in_bytes")).ok(),
                    limit: File::open(cgroup.join("memory.limit_in_bytes")).ok(),
                }
            }
            Source::V2Events { cgroup, interval } => {
                check_interval(*interval)?;
                require(cgroup, CgroupVersion::V2, SourceKind::V2Events)?;
                let path = cgroup.join("memory.events");
                let file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
                let last = read_events(&file, &path)?;
                Io::V2Events {
                    cgroup: cgroup.clone(),
                    file,
                    last,
                    polled: None,
                }
                .with_poll(*interval, now)
            }
            Source::Watermark {
                cgroup,
                thresholds,
                interval,
            } => {
                check_interval(*interval)?;
                thresholds.validate()?;
                let version = memory_cgroup_version(cgroup)?;
                let (usage_name, limit_name) = match version {
                    CgroupVersion::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes"),
                    CgroupVersion::V2 => ("memory.current", "memory.max"),
                };
                let usage_path = cgroup.join(usage_name);
                let limit_path = cgroup.join(limit_name);
                let usage =
                    File::open(&usage_path).map_err(|e| Error::io("opening", &usage_path, e))?;
                let limit =
                    File::open(&limit_path).map_err(|e| Error::io("opening", &limit_path, e))?;
                let mut buf = [0u8; 64];
                if read_u64(&limit, &mut buf)
                    .map_err(|e| Error::io("reading", &limit_path, e))?
                    .is_none()
                {
                    return Err(Error::NoLimit {
                        path: cgroup.clone(),
                        file: limit_name,
                    });
                }
                let (interval, v1) = match version {
                    CgroupVersion::V1 => {
                        let armed = v1::arm_thresholds(cgroup, thresholds)?;
                        (V1_WATERMARK_RECHECK, Some(armed))
                    }
                    CgroupVersion::V2 => (*interval, None),
                };
                Io::Timed {
                    next: now + interval,
                    interval,
                    what: Timed::Watermark {
                        cgroup: cgroup.clone(),
                        usage,
                        limit,
                        thresholds: *thresholds,
                        v1,
                    },
                }
            }
            Source::MemAvailable {
                thresholds,
                interval,
            } => {
                check_interval(*interval)?;
                thresholds.validate()?;
                let meminfo = File::open(MEMINFO).map_err(|e| Error::io("opening", MEMINFO, e))?;
                Io::Timed {
                    next: now + *interval,
                    interval: *interval,
                    what: Timed::MemAvailable {
                        meminfo,
                        thresholds: *thresholds,
                        buf: vec![0; 8192],
                        // Unknown until the first read: poll at the full rate.
                        last_used: 1.0,
                    },
                }
            }
        })
    }
}

const MEMINFO: &str = "/proc/meminfo";

fn check_interval(interval: Duration) -> Result<(), Error> {
    if interval < Duration::from_millis(1) {
        Err(Error::Interval(interval))
    } else {
        Ok(())
    }
}

/// The cgroup version of a memory cgroup directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// Whether `path` is a v1 or v2 memory cgroup, or the typed error saying why it is neither.
pub(crate) fn memory_cgroup_version(path: &Path) -> Result<CgroupVersion, Error> {
    if !path.is_dir() {
        return Err(Error::NoSuchCgroup {
            path: path.to_path_buf(),
        });
    }
    if path.join("memory.usage_in_bytes").exists() {
        Ok(CgroupVersion::V1)
    } else if path.join("memory.current").exists() {
        Ok(CgroupVersion::V2)
    } else {
        Err(Error::NotMemoryCgroup {
            path: path.to_path_buf(),
        })
    }
}

fn require(path: &Path, needs: CgroupVersion, kind: SourceKind) -> Result<(), Error> {
    let found = memory_cgroup_version(path)?;
    if found == needs {
        Ok(())
    } else {
        Err(Error::WrongCgroupVersion {
            path: path.to_path_buf(),
            kind,
            needs: needs.as_str(),
            found: found.as_str(),
        })
    }
}

/// Reads a whole small file from offset 0 into `buf` (one `pread(2)`), as text.
fn pread_text<'b>(file: &File, buf: &'b mut [u8]) -> std::io::Result<&'b str> {
    let n = file.read_at(buf, 0)?;
    std::str::from_utf8(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads a byte count; `None` for "max" or the v1 "unlimited" value (at or above 2^62).
fn read_u64(file: &File, buf: &mut [u8]) -> std::io::Result<Option<u64>> {
    parse_limit(pread_text(file, buf)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn read_events(file: &File, path: &Path) -> Result<V2Counters, Error> {
    let mut buf = [0u8; 512];
    let text = pread_text(file, &mut buf).map_err(|e| Error::io("reading", path, e))?;
    crate::cgroup::parse_events(text)
        .map(V2Counters::from)
        .map_err(|reason| Error::Parse {
            path: path.to_path_buf(),
            reason,
        })
}

/// What a registration's state machine reports after a wake-up.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Nothing to report.
    Quiet,
    /// An event of this level.
    Event(Level, Detail),
    /// The registration has ended (removed or failed); report this and drop it.
    End(Detail),
}

/// A timed source's files.
#[derive(Debug)]
pub(crate) enum Timed {
    Watermark {
        cgroup: PathBuf,
        usage: File,
        limit: File,
        thresholds: Thresholds,
        /// v1: the usage thresholds armed through `cgroup.event_control`.
        v1: Option<v1::Armed>,
    },
    MemAvailable {
        meminfo: File,
        thresholds: Thresholds,
        buf: Vec<u8>,
        /// The fraction of memory in use at the last read (drives the adaptive interval).
        last_used: f64,
    },
}

/// The monitor thread's state of one registration: its fds and what it last saw.
#[derive(Debug)]
pub(crate) enum Io {
    Psi {
        fd: OwnedFd,
        file: PathBuf,
        trigger: String,
        level: Level,
    },
    V1 {
        cgroup: PathBuf,
        mode: super::V1Mode,
        fds: Vec<(Level, OwnedFd)>,
        usage: Option<File>,
        limit: Option<File>,
    },
    V2Events {
        cgroup: PathBuf,
        file: File,
        last: V2Counters,
        /// `Some((interval, next))` when the file is read on a timer rather than polled.
        polled: Option<(Duration, Instant)>,
    },
    Timed {
        interval: Duration,
        next: Instant,
        what: Timed,
    },
}

impl Io {
    fn with_poll(self, interval: Duration, now: Instant) -> Io {
        match self {
            Io::V2Events {
                cgroup, file, last, ..
            } => Io::V2Events {
                cgroup,
                file,
                last,
                polled: Some((interval, now + interval)),
            },
            other => other,
        }
    }

    /// The fds to add to epoll, with their sub-index and whether they signal with `POLLPRI`
    /// (PSI triggers, kernfs notification) rather than `POLLIN` (eventfds).
    pub(crate) fn fds(&self) -> Vec<(u32, BorrowedFd<'_>, bool)> {
        match self {
            Io::Psi { fd, .. } => vec![(0, fd.as_fd(), true)],
            Io::V1 { fds, .. } => fds
                .iter()
                .enumerate()
                .map(|(i, (_, fd))| (i as u32, fd.as_fd(), false))
                .collect(),
            Io::V2Events { file, .. } => vec![(0, file.as_fd(), true)],
            Io::Timed {
                what: Timed::Watermark {
                    v1: Some(armed), ..
                },
                ..
            } => armed
                .fds
                .iter()
                .enumerate()
                .map(|(i, (_, fd))| (i as u32, fd.as_fd(), false))
                .collect(),
            Io::Timed { .. } => Vec::new(),
        }
    }

    /// A v1 watermark whose limit changed since its thresholds were armed re-arms them
    /// (new eventfds, which the caller adds to epoll); `Ok(true)` if it did.
    pub(crate) fn rearm(&mut self) -> Result<bool, Error> {
        let Io::Timed {
            what:
                Timed::Watermark {
                    cgroup,
                    thresholds,
                    v1: Some(armed),
                    ..
                },
            ..
        } = self
        else {
            return Ok(false);
        };
        let limit = v1::read_limit(cgroup)?;
        if limit == armed.limit {
            return Ok(false);
        }
        *armed = v1::arm_thresholds(cgroup, thresholds)?;
        Ok(true)
    }

    /// Called when epoll refused `V2Events`'s file (a regular file, e.g. on a fake tree):
    /// read it on a timer instead.
    pub(crate) fn fall_back_to_polling(&mut self, now: Instant) -> bool {
        match self {
            Io::V2Events { polled, .. } => {
                *polled = Some((
                    super::DEFAULT_POLL_INTERVAL,
                    now + super::DEFAULT_POLL_INTERVAL,
                ));
                true
            }
            _ => false,
        }
    }

    /// Marks a `V2Events` registration as epoll-driven (its file could be added to epoll).
    pub(crate) fn set_polled_by_epoll(&mut self) {
        if let Io::V2Events { polled, .. } = self {
            *polled = None;
        }
    }

    /// The next deadline of a timed registration.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self {
            Io::Timed { next, .. } => Some(*next),
            Io::V2Events { polled, .. } => polled.map(|(_, next)| next),
            _ => None,
        }
    }

    /// The cgroup or file whose disappearance ends this registration.
    fn anchor(&self) -> &Path {
        match self {
            Io::Psi { file, .. } => file,
            Io::V1 { cgroup, .. } | Io::V2Events { cgroup, .. } => cgroup,
            Io::Timed {
                what: Timed::Watermark { cgroup, .. },
                ..
            } => cgroup,
            Io::Timed {
                what: Timed::MemAvailable { .. },
                ..
            } => Path::new(MEMINFO),
        }
    }

    /// `Removed` if the anchor is gone, else `Failed` with `error`.
    pub(crate) fn end_with(&self, error: String) -> Outcome {
        self.end(error)
    }

    fn end(&self, error: String) -> Outcome {
        let path = self.anchor().to_path_buf();
        if path.exists() {
            Outcome::End(Detail::Failed { path, error })
        } else {
            Outcome::End(Detail::Removed { path })
        }
    }

    /// An fd of this registration is ready (`sub` as given by [`Io::fds`]).
    pub(crate) fn on_ready(&mut self, _sub: u32, error: bool) -> Outcome {
        match self {
            Io::Psi {
                file,
                trigger,
                level,
                ..
            } => {
                if error {
                    // psi_trigger_poll reports EPOLLERR once the trigger is gone (cgroup removed).
                    return self.end("the PSI trigger fd reported POLLERR".into());
                }
                let detail = match pressure::read_path(&*file) {
                    Ok(p) => Detail::Psi {
                        file: file.clone(),
                        trigger: trigger.clone(),
                        some_avg10: p.some.avg10,
                        some_total_us: p.some.total_us,
                        full_avg10: p.full.map(|f| f.avg10),
                        full_total_us: p.full.map(|f| f.total_us),
                    },
                    Err(e) => return self.end(format!("{e}")),
                };
                Outcome::Event(*level, detail)
            }
            Io::V1 {
                cgroup,
                mode,
                fds,
                usage,
                limit,
            } => {
                // Read every level's eventfd: a critical event signals all three.
                let mut level = None;
                for (l, fd) in fds.iter() {
                    if v1::drain(fd).is_some() {
                        level = level.max(Some(*l));
                    }
                }
                if !cgroup.exists() {
                    return Outcome::End(Detail::Removed {
                        path: cgroup.clone(),
                    });
                }
                let Some(level) = level else {
                    return Outcome::Quiet;
                };
                let mut buf = [0u8; 64];
                let mut read = |f: &Option<File>| {
                    f.as_ref()
                        .and_then(|f| read_u64(f, &mut buf).ok().flatten())
                };
                let usage_bytes = read(usage);
                let limit_bytes = read(limit);
                Outcome::Event(
                    level,
                    Detail::V1PressureLevel {
                        cgroup: cgroup.clone(),
                        mode: *mode,
                        usage_bytes,
                        limit_bytes,
                    },
                )
            }
            Io::V2Events { .. } => self.read_v2_events(),
            Io::Timed {
                what: what @ Timed::Watermark { v1: Some(_), .. },
                ..
            } => {
                // A usage threshold was crossed (either way): read where usage is now.
                if let Timed::Watermark {
                    v1: Some(armed), ..
                } = what
                {
                    for (_, fd) in &armed.fds {
                        v1::drain(fd);
                    }
                }
                let result = what.evaluate();
                self.outcome(result)
            }
            Io::Timed { .. } => Outcome::Quiet,
        }
    }

    fn outcome(&self, result: Result<Option<(Level, Detail)>, String>) -> Outcome {
        match result {
            Ok(Some((level, detail))) => Outcome::Event(level, detail),
            Ok(None) => Outcome::Quiet,
            Err(e) => self.end(e),
        }
    }

    fn read_v2_events(&mut self) -> Outcome {
        let Io::V2Events {
            cgroup, file, last, ..
        } = self
        else {
            return Outcome::Quiet;
        };
        let path = cgroup.join("memory.events");
        match read_events(file, &path) {
            Ok(now) => {
                let out = match now.rise_since(last) {
                    Some((level, rose)) => Outcome::Event(
                        level,
                        Detail::V2Events {
                            cgroup: cgroup.clone(),
                            rose,
                            counters: now,
                        },
                    ),
                    None => Outcome::Quiet,
                };
                *last = now;
                out
            }
            Err(e) => self.end(e.to_string()),
        }
    }

    /// A timed registration's deadline has passed.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Outcome {
        // A removed v2 cgroup's files fail to read (ENODEV), but an unlinked regular file
        // (a fake tree) still reads: look for the directory too, one stat per tick.
        if self.deadline().is_some() && !self.anchor().exists() {
            return Outcome::End(Detail::Removed {
                path: self.anchor().to_path_buf(),
            });
        }
        match self {
            Io::V2Events {
                polled: Some((interval, next)),
                ..
            } => {
                *next = advance(*next, *interval, now);
                self.read_v2_events()
            }
            Io::Timed {
                interval,
                next,
                what,
            } => {
                let result = what.evaluate();
                *next = advance(*next, what.interval(*interval), now);
                self.outcome(result)
            }
            _ => Outcome::Quiet,
        }
    }
}

impl Timed {
    /// The interval until the next read. The watermark reads at its configured interval.
    /// MemAvailable, the fallback, adapts: every wake-up of an idle monitor costs 0.1–0.2 ms
    /// of CPU on a virtual machine, so far from the low threshold it reads 5x less often
    /// (headroom over 25% of RAM: at the kernel's page-fault rate of a few GiB/s, filling
    /// that takes longer than the slow interval on any machine of 8 GiB or more), 2x less
    /// often with 10–25% of headroom, and at the configured interval when closer.
    fn interval(&self, base: Duration) -> Duration {
        match self {
            Timed::Watermark { .. } => base,
            Timed::MemAvailable {
                thresholds,
                last_used,
                ..
            } => {
                let headroom = thresholds.low - *last_used;
                if headroom > 0.25 {
                    base * 5
                } else if headroom > 0.10 {
                    base * 2
                } else {
                    base
                }
            }
        }
    }

    /// Reads the files and maps what they say to a level, if any.
    fn evaluate(&mut self) -> Result<Option<(Level, Detail)>, String> {
        match self {
            Timed::Watermark {
                cgroup,
                usage,
                limit,
                thresholds,
                ..
            } => {
                let mut buf = [0u8; 64];
                match (read_u64(usage, &mut buf), read_u64(limit, &mut buf)) {
                    (Ok(Some(usage_bytes)), Ok(Some(limit_bytes))) => {
                        let fraction = usage_bytes as f64 / limit_bytes.max(1) as f64;
                        Ok(thresholds.level(fraction).map(|level| {
                            (
                                level,
                                Detail::Watermark {
                                    cgroup: cgroup.clone(),
                                    usage_bytes,
                                    limit_bytes,
                                    fraction,
                                },
                            )
                        }))
                    }
                    // The limit was lifted: nothing to compare with until it returns.
                    (Ok(_), Ok(None)) => Ok(None),
                    (Ok(None), Ok(Some(_))) => Err("usage reads as unlimited".to_string()),
                    (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                }
            }
            Timed::MemAvailable {
                meminfo,
                thresholds,
                buf,
                last_used,
            } => match pread_text(meminfo, buf).map(|t| meminfo::parse(t).ok()) {
                Ok(Some(m)) => {
                    let (total, avail) = (m.mem_total, m.mem_available);
                    let fraction_used = 1.0 - avail as f64 / total.max(1) as f64;
                    *last_used = fraction_used;
                    Ok(thresholds.level(fraction_used).map(|level| {
                        (
                            level,
                            Detail::MemAvailable {
                                available_bytes: avail,
                                total_bytes: total,
                                fraction_used,
                            },
                        )
                    }))
                }
                Ok(None) => Err("/proc/meminfo does not parse".to_string()),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// The next deadline after `now`, keeping the phase of `next` (no drift, no catch-up burst).
fn advance(next: Instant, interval: Duration, now: Instant) -> Instant {
    let mut n = next + interval;
    if n <= now {
        n = now + interval;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_polls_slower_far_from_the_threshold() {
        let timed = |last_used: f64| Timed::MemAvailable {
            meminfo: File::open(MEMINFO).unwrap(),
            thresholds: Thresholds::MEM_AVAILABLE,
            buf: Vec::new(),
            last_used,
        };
        let base = Duration::from_millis(200);
        let low = Thresholds::MEM_AVAILABLE.low;
        assert_eq!(timed(low - 0.5).interval(base), base * 5);
        assert_eq!(timed(low - 0.2).interval(base), base * 2);
        assert_eq!(timed(low - 0.05).interval(base), base);
        assert_eq!(timed(1.0).interval(base), base);
    }

    #[test]
    fn thresholds_map_fractions_to_levels() {
        let t = Thresholds::WATERMARK;
        assert_eq!(t.level(0.5), None);
        assert_eq!(t.level(0.9), Some(Level::Low));
        assert_eq!(t.level(0.97), Some(Level::Medium));
        assert_eq!(t.level(1.2), Some(Level::Critical));
        let bad = Thresholds {
            low: 0.9,
            medium: 0.8,
            critical: 1.0,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("low <= medium")
        );
    }

    #[test]
    fn advance_keeps_phase_and_skips_missed_ticks() {
        let t0 = Instant::now();
        let i = Duration::from_millis(50);
        assert_eq!(advance(t0, i, t0), t0 + i);
        let late = t0 + Duration::from_millis(500);
        assert_eq!(advance(t0, i, late), late + i);
    }
}
