//! Memory cgroups, v1 and v2: finding the controller and reading its files.
//!
//! Linux offers two cgroup interfaces with different file names for the same ideas:
//!
//! | idea | v1 (`Documentation/admin-guide/cgroup-v1/memory.rst`) | v2 (`cgroup-v2.rst`) |
//! | --- | --- | --- |
//! | usage | `memory.usage_in_bytes` | `memory.current` |
//! | hard limit | `memory.limit_in_bytes` (huge number = unlimited) | `memory.max` (`max`) |
//! | swap usage | `memory.memsw.usage_in_bytes` − usage | `memory.swap.current` |
//! | swap limit | `memory.memsw.limit_in_bytes` − limit | `memory.swap.max` |
//! | limit hits | `memory.failcnt` | `max` line of `memory.events` |
//! | anon/file/swap | `rss`/`cache`/`swap` in `memory.stat` | `anon`/`file` in `memory.stat` |
//!
//! [`memory_root`] finds where the memory controller is mounted (from
//! `/proc/self/mountinfo`), [`own_memory_cgroup`] finds the group a process lives in
//! (from `/proc/PID/cgroup`), and [`MemoryCgroup`] reads and writes one group's files,
//! hiding the version behind one API.
//!
//! ```no_run
//! # fn main() -> Result<(), ebb::cgroup::Error> {
//! if let Some(cg) = ebb::cgroup::own_memory_cgroup(std::process::id())? {
//!     println!("{}: {} bytes, limit {:?}", cg.path().display(), cg.usage()?, cg.limit()?);
//! }
//! # Ok(()) }
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// An error reading or writing a cgroup file, naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file or directory does not exist.
    #[error("{path}: not found")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The directory exists but is not a memory cgroup.
    #[error("{path}: not a memory cgroup (no memory.usage_in_bytes or memory.current)")]
    NotMemoryCgroup {
        /// The directory.
        path: PathBuf,
    },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file's contents did not parse.
    #[error("{path}: cannot parse {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The kernel refused access (not root, or the file is read-only).
    #[error("{path}: permission denied (writing cgroup files needs root or a delegated group)")]
    PermissionDenied {
        /// The file.
        path: PathBuf,
    },
    /// The request cannot be expressed in this cgroup version.
    #[error("{path}: {reason}")]
    Unsupported {
        /// The group or file.
        path: PathBuf,
        /// The rule that prevents it.
        reason: String,
    },
}

impl Error {
    fn from_io(path: &Path, source: io::Error) -> Error {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path },
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Io { path, source },
        }
    }
}

/// Which cgroup interface a hierarchy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// The legacy per-controller hierarchies (`cgroup` filesystem).
    V1,
    /// The unified hierarchy (`cgroup2` filesystem).
    V2,
}

/// One cgroup filesystem mount, as listed in `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup path inside the hierarchy that is mounted there (usually `/`).
    pub root: PathBuf,
    /// v1: the controllers bound to this hierarchy (`memory`, `name=systemd`, …). Empty for v2.
    pub controllers: Vec<String>,
}

/// Undo the octal escapes (`\040` for a space) the kernel uses in mountinfo fields.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the cgroup mounts out of `/proc/PID/mountinfo` text (see `proc_pid_mountinfo(5)`).
///
/// Lines that are not cgroup mounts, or are malformed, are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 3 {
            continue;
        }
        let version = match right[0] {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        let controllers = match version {
            CgroupVersion::V1 => right[2]
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent=") && *o != "none"
                })
                .map(str::to_string)
                .collect(),
            CgroupVersion::V2 => Vec::new(),
        };
        mounts.push(CgroupMount {
            version,
            mount_point: PathBuf::from(unescape_mountinfo(left[4])),
            root: PathBuf::from(unescape_mountinfo(left[3])),
            controllers,
        });
    }
    mounts
}

fn read_string(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::from_io(path, e))
}

/// All cgroup mounts of this process.
///
/// # References
/// `/proc/self/mountinfo`, `proc_pid_mountinfo(5)`.
pub fn mounts() -> Result<Vec<CgroupMount>, Error> {
    Ok(parse_mountinfo(&read_string(Path::new(
        "/proc/self/mountinfo",
    ))?))
}

/// Pick the memory hierarchy from a list of mounts: a cgroup2 mount whose root
/// `cgroup.controllers` lists `memory` (checked by `v2_has_memory`) wins, else a v1
/// mount with the `memory` controller.
fn choose_memory_mount(
    mounts: &[CgroupMount],
    v2_has_memory: impl Fn(&Path) -> bool,
) -> Option<&CgroupMount> {
    mounts
        .iter()
        .find(|m| m.version == CgroupVersion::V2 && v2_has_memory(&m.mount_point))
        .or_else(|| {
            mounts.iter().find(|m| {
                m.version == CgroupVersion::V1 && m.controllers.iter().any(|c| c == "memory")
            })
        })
}

fn v2_root_has_memory(mount_point: &Path) -> bool {
    fs::read_to_string(mount_point.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().any(|c| c == "memory"))
        .unwrap_or(false)
}

/// Where the memory controller is mounted: cgroup2 if its root lists `memory` in
/// `cgroup.controllers`, else the v1 hierarchy with the `memory` option; `None` if neither.
pub fn memory_root() -> Result<Option<(CgroupVersion, PathBuf)>, Error> {
    let mounts = mounts()?;
    Ok(
        choose_memory_mount(&mounts, v2_root_has_memory)
            .map(|m| (m.version, m.mount_point.clone())),
    )
}

/// From `/proc/PID/cgroup` text, the path of the process's group in the hierarchy of
/// `version` (v1: the line whose controller list has `memory`; v2: the `0::` line).
pub fn parse_proc_cgroup(text: &str, version: CgroupVersion) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match version {
            CgroupVersion::V2 => id == "0" && controllers.is_empty(),
            CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        matches.then(|| PathBuf::from(path))
    })
}

/// The memory cgroup process `pid` lives in, or `None` if the memory controller is not
/// mounted or the process's group is not visible from this mount namespace.
///
/// # References
/// `/proc/PID/cgroup` (`cgroups(7)`), `/proc/self/mountinfo`.
pub fn own_memory_cgroup(pid: u32) -> Result<Option<MemoryCgroup>, Error> {
    let mounts = mounts()?;
    let Some(mount) = choose_memory_mount(&mounts, v2_root_has_memory) else {
        return Ok(None);
    };
    let text = read_string(&PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    let Some(cg_path) = parse_proc_cgroup(&text, mount.version) else {
        return Ok(None);
    };
    // The group path is relative to the hierarchy root; the mount shows `mount.root`.
    let Ok(rel) = cg_path.strip_prefix(&mount.root) else {
        return Ok(None);
    };
    let dir = mount.mount_point.join(rel);
    match MemoryCgroup::open(&dir) {
        Ok(cg) => Ok(Some(cg)),
        // The v2 root group has no memory.current: report no group rather than fail.
        Err(Error::NotMemoryCgroup { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// v1 reports "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE` (9223372036854771712 with 4 KiB
/// pages); anything at or above 2^62 is treated as unlimited.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Parse a limit file: `max` (v2) or a value >= 2^62 (v1) mean unlimited (`None`).
pub fn parse_limit(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    let v: u64 = t.parse().map_err(|_| format!("limit {t:?}"))?;
    Ok((v < V1_UNLIMITED_THRESHOLD).then_some(v))
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse().map_err(|_| format!("number {t:?}"))
}

/// The main counters of `memory.stat`, in bytes, plus every raw line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory (v1 `rss`, v2 `anon`).
    pub anon: u64,
    /// Page cache (v1 `cache`, v2 `file`).
    pub file: u64,
    /// Swapped-out memory, where `memory.stat` has it (v1 `swap`; v2 has no such line,
    /// see [`MemoryCgroup::swap_usage`]).
    pub swap: Option<u64>,
    /// Every `name value` line, in file order.
    pub entries: Vec<(String, u64)>,
}

impl MemoryStat {
    /// Inactive page cache that is neither dirty nor under writeback, bytes: what reclaim
    /// can drop without I/O or compression. Hierarchical (v1 `total_inactive_file −
    /// total_dirty − total_writeback`, v2 `inactive_file − file_dirty − file_writeback`).
    /// An upper bound: dirty pages may sit on the active list, so this never over-subtracts.
    pub fn clean_inactive_file(&self) -> u64 {
        let first = |names: &[&str]| names.iter().find_map(|n| self.get(n)).unwrap_or(0);
        let inactive = first(&["total_inactive_file", "inactive_file"]);
        let dirty = first(&["total_dirty", "file_dirty", "dirty"]);
        let writeback = first(&["total_writeback", "file_writeback", "writeback"]);
        inactive.saturating_sub(dirty.saturating_add(writeback))
    }

    /// The raw value of one line, by name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

/// Parse `memory.stat` (either version): `name value` lines.
///
/// `anon` is taken from `anon` (v2) or `rss` (v1), `file` from `file` or `cache`,
/// `swap` from `swap` (v1 only). These are the group's own counters, not `total_*`.
pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, String> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("line {line:?}"));
        };
        entries.push((k.to_string(), parse_u64(v)?));
    }
    let mut stat = MemoryStat {
        entries,
        ..MemoryStat::default()
    };
    stat.anon = stat.get("anon").or_else(|| stat.get("rss")).unwrap_or(0);
    stat.file = stat.get("file").or_else(|| stat.get("cache")).unwrap_or(0);
    stat.swap = stat.get("swap");
    Ok(stat)
}

/// Counts from v2 `memory.events`: how often each boundary was hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Reclaimed below `memory.low` under pressure.
    pub low: u64,
    /// Throttled above `memory.high`.
    pub high: u64,
    /// Usage hit `memory.max`.
    pub max: u64,
    /// The OOM killer was invoked for this group.
    pub oom: u64,
    /// Processes in this group were OOM-killed.
    pub oom_kill: u64,
}

/// Parse v2 `memory.events`; unknown lines (e.g. `oom_group_kill`) are ignored.
pub fn parse_events(text: &str) -> Result<MemoryEvents, String> {
    let mut ev = MemoryEvents::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (k, v) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {line:?}"))?;
        let v = parse_u64(v)?;
        match k {
            "low" => ev.low = v,
            "high" => ev.high = v,
            "max" => ev.max = v,
            "oom" => ev.oom = v,
            "oom_kill" => ev.oom_kill = v,
            _ => {}
        }
    }
    Ok(ev)
}

/// The limit that binds a group, from [`MemoryCgroup::room`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The limit, bytes.
    pub limit: u64,
    /// Usage of the group that has it, bytes.
    pub usage: u64,
    /// The group that has it (the group itself or an ancestor).
    pub group: PathBuf,
}

impl Room {
    /// Bytes left before the limit: `limit − usage`, 0 if over.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.usage)
    }

    /// What the group can take before it must swap: [`Room::free`] plus the clean inactive
    /// page cache charged to it ([`MemoryStat::clean_inactive_file`]), which reclaim drops
    /// without I/O or compression (the same reasoning as MemAvailable). Reads the group's
    /// `memory.stat` now; if that cannot be read, no cache is counted.
    pub fn available(&self) -> u64 {
        let cache = MemoryCgroup::open(&self.group)
            .and_then(|cg| cg.stat())
            .map_or(0, |st| st.clean_inactive_file());
        self.free().saturating_add(cache)
    }
}

/// One memory cgroup directory, v1 or v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    version: CgroupVersion,
    path: PathBuf,
}

impl MemoryCgroup {
    /// Open a memory cgroup directory, detecting its version from the files present
    /// (v1: `memory.usage_in_bytes`; v2: `memory.current`).
    pub fn open(path: impl AsRef<Path>) -> Result<MemoryCgroup, Error> {
        let path = path.as_ref().to_path_buf();
        let version = if path.join("memory.usage_in_bytes").is_file() {
            CgroupVersion::V1
        } else if path.join("memory.current").is_file() {
            CgroupVersion::V2
        } else if !path.is_dir() {
            return Err(Error::NotFound { path });
        } else {
            return Err(Error::NotMemoryCgroup { path });
        };
        Ok(MemoryCgroup { version, path })
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// v1 or v2.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read(&self, name: &str) -> Result<String, Error> {
        read_string(&self.file(name))
    }

    fn read_with<T>(&self, name: &str, parse: fn(&str) -> Result<T, String>) -> Result<T, Error> {
        let text = self.read(name)?;
        parse(&text).map_err(|what| Error::Parse {
            path: self.file(name),
            what,
        })
    }

    fn write(&self, name: &str, value: &str) -> Result<(), Error> {
        let path = self.file(name);
        fs::write(&path, value).map_err(|e| Error::from_io(&path, e))
    }

    /// Memory charged to the group now, in bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn usage(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V1 => self.read_with("memory.usage_in_bytes", parse_u64),
            CgroupVersion::V2 => self.read_with("memory.current", parse_u64),
        }
    }

    /// The hard memory limit, `None` if unlimited (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn limit(&self) -> Result<Option<u64>, Error> {
        match self.version {
            CgroupVersion::V1 => self.read_with("memory.limit_in_bytes", parse_limit),
            CgroupVersion::V2 => self.read_with("memory.max", parse_limit),
        }
    }

    /// v2 `memory.high` (the throttling point below `memory.max`), `None` if unset; v1 has no
    /// such file (`None`).
    pub fn high(&self) -> Result<Option<u64>, Error> {
        match self.version {
            CgroupVersion::V1 => Ok(None),
            CgroupVersion::V2 => match self.read_with("memory.high", parse_limit) {
                Err(Error::NotFound { .. }) => Ok(None),
                other => other,
            },
        }
    }

    /// The tightest limit on this group: over the group and its ancestors (a limit binds its
    /// whole subtree), the one with the least room left, `None` if none has a limit.
    ///
    /// A limit is v1 `memory.limit_in_bytes`, v2 the lower of `memory.max` and `memory.high`.
    /// Errors reading this group are returned; the walk stops quietly at the first ancestor
    /// that is not a readable memory cgroup of the same version (the hierarchy's root).
    pub fn room(&self) -> Result<Option<Room>, Error> {
        let own = |cg: &MemoryCgroup| -> Result<Option<Room>, Error> {
            let limit = match (cg.limit()?, cg.high()?) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match limit {
                None => Ok(None),
                Some(limit) => Ok(Some(Room {
                    limit,
                    usage: cg.usage()?,
                    group: cg.path.clone(),
                })),
            }
        };
        let mut best = own(self)?;
        let mut at = self.path.parent();
        while let Some(dir) = at {
            let Ok(cg) = MemoryCgroup::open(dir) else {
                break;
            };
            if cg.version != self.version {
                break;
            }
            match own(&cg) {
                Ok(Some(r)) if best.as_ref().is_none_or(|b| r.free() < b.free()) => best = Some(r),
                Ok(_) => {}
                Err(_) => break,
            }
            at = dir.parent();
        }
        Ok(best)
    }

    /// Swap used by the group, in bytes (v1 `memsw.usage_in_bytes − usage_in_bytes`,
    /// v2 `memory.swap.current`). [`Error::NotFound`] if swap accounting is off.
    pub fn swap_usage(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V1 => {
                let memsw = self.read_with("memory.memsw.usage_in_bytes", parse_u64)?;
                Ok(memsw.saturating_sub(self.usage()?))
            }
            CgroupVersion::V2 => self.read_with("memory.swap.current", parse_u64),
        }
    }

    /// How much swap the group may use beyond its memory limit, `None` if unlimited
    /// (v1 `memsw.limit_in_bytes − limit_in_bytes`, v2 `memory.swap.max`).
    pub fn swap_limit(&self) -> Result<Option<u64>, Error> {
        match self.version {
            CgroupVersion::V1 => {
                let memsw = self.read_with("memory.memsw.limit_in_bytes", parse_limit)?;
                let mem = self.limit()?;
                Ok(match (memsw, mem) {
                    (Some(sw), Some(m)) => Some(sw.saturating_sub(m)),
                    _ => None,
                })
            }
            CgroupVersion::V2 => self.read_with("memory.swap.max", parse_limit),
        }
    }

    /// How often a charge hit a hard limit (v2: the `max` count of `memory.events`).
    ///
    /// v1: `memory.failcnt` plus, with swap accounting, `memory.memsw.failcnt`.
    /// Caution, measured on 6.18: when `memsw.limit == limit` (no swap allowed) a group
    /// can be OOM-killed with both counters still 0; [`MemoryCgroup::oom_kills`] is the
    /// reliable signal that the limit was enforced.
    pub fn failcnt(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V1 => {
                let mem = self.read_with("memory.failcnt", parse_u64)?;
                let memsw = match self.read_with("memory.memsw.failcnt", parse_u64) {
                    Err(Error::NotFound { .. }) => 0,
                    other => other?,
                };
                Ok(mem + memsw)
            }
            CgroupVersion::V2 => Ok(self.read_with("memory.events", parse_events)?.max),
        }
    }

    /// How many processes of the group the OOM killer killed (v1: `oom_kill` of
    /// `memory.oom_control`; v2: `oom_kill` of `memory.events`).
    pub fn oom_kills(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V1 => self.read_with("memory.oom_control", |text| {
                let stat = parse_memory_stat(text)?;
                stat.get("oom_kill")
                    .ok_or_else(|| "no oom_kill line".to_string())
            }),
            CgroupVersion::V2 => Ok(self.read_with("memory.events", parse_events)?.oom_kill),
        }
    }

    /// `memory.stat`, parsed.
    pub fn stat(&self) -> Result<MemoryStat, Error> {
        self.read_with("memory.stat", parse_memory_stat)
    }

    /// v2 `memory.events`; `None` on v1, which has no such file.
    pub fn events(&self) -> Result<Option<MemoryEvents>, Error> {
        match self.version {
            CgroupVersion::V1 => Ok(None),
            CgroupVersion::V2 => self.read_with("memory.events", parse_events).map(Some),
        }
    }

    /// The process ids in the group (`cgroup.procs`; not its descendants).
    pub fn procs(&self) -> Result<Vec<u32>, Error> {
        self.read_with("cgroup.procs", |text| {
            text.split_whitespace()
                .map(|p| p.parse().map_err(|_| format!("pid {p:?}")))
                .collect()
        })
    }

    /// Move process `pid` (all its threads) into the group by writing `cgroup.procs`.
    pub fn add_process(&self, pid: u32) -> Result<(), Error> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn limit_text(version: CgroupVersion, bytes: Option<u64>) -> String {
        match (bytes, version) {
            (Some(b), _) => b.to_string(),
            (None, CgroupVersion::V1) => "-1".to_string(),
            (None, CgroupVersion::V2) => "max".to_string(),
        }
    }

    fn has_memsw(&self) -> bool {
        self.file("memory.memsw.limit_in_bytes").is_file()
    }

    /// v1: write `limit_in_bytes` and `memsw.limit_in_bytes` in an order the kernel
    /// accepts. It rejects any state with `memsw < mem` (EINVAL), so memsw goes first
    /// when it stays above the old memory limit, and memory goes first otherwise.
    fn set_v1_limits(&self, mem: Option<u64>, memsw: Option<u64>) -> Result<(), Error> {
        let old_mem = self.limit()?;
        let mem_text = Self::limit_text(CgroupVersion::V1, mem);
        let memsw_text = Self::limit_text(CgroupVersion::V1, memsw);
        // None (unlimited) compares above every Some.
        let ge = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a >= b,
        };
        if ge(memsw, old_mem) {
            self.write("memory.memsw.limit_in_bytes", &memsw_text)?;
            self.write("memory.limit_in_bytes", &mem_text)
        } else {
            self.write("memory.limit_in_bytes", &mem_text)?;
            self.write("memory.memsw.limit_in_bytes", &memsw_text)
        }
    }

    /// Set the hard memory limit (`None`: unlimited), keeping the swap allowance.
    ///
    /// v1 writes `memory.limit_in_bytes` and, where swap accounting is on, moves
    /// `memory.memsw.limit_in_bytes` along so the group keeps the same swap allowance.
    /// Lowering below current usage makes the kernel reclaim first and may fail (EBUSY).
    pub fn set_limit(&self, bytes: Option<u64>) -> Result<(), Error> {
        match self.version {
            CgroupVersion::V2 => self.write("memory.max", &Self::limit_text(self.version, bytes)),
            CgroupVersion::V1 if !self.has_memsw() => self.write(
                "memory.limit_in_bytes",
                &Self::limit_text(self.version, bytes),
            ),
            CgroupVersion::V1 => {
                let swap = self.swap_limit()?;
                let memsw = match (bytes, swap) {
                    (Some(m), Some(s)) => Some(m.saturating_add(s)),
                    _ => None,
                };
                self.set_v1_limits(bytes, memsw)
            }
        }
    }

    /// Set how much swap the group may use (`None`: unlimited).
    ///
    /// v2 writes `memory.swap.max`. v1 has no swap-only limit: it writes
    /// `memory.memsw.limit_in_bytes` = memory limit + `bytes`, which needs a memory limit
    /// ([`Error::Unsupported`] otherwise) and swap accounting (`swapaccount=1`).
    pub fn set_swap_limit(&self, bytes: Option<u64>) -> Result<(), Error> {
        match self.version {
            CgroupVersion::V2 => {
                self.write("memory.swap.max", &Self::limit_text(self.version, bytes))
            }
            CgroupVersion::V1 => {
                if !self.has_memsw() {
                    return Err(Error::Unsupported {
                        path: self.path.clone(),
                        reason: "no memory.memsw.* files: swap accounting is off".into(),
                    });
                }
                let mem = self.limit()?;
                match (mem, bytes) {
                    (_, None) => self.set_v1_limits(mem, None),
                    (Some(m), Some(s)) => self.set_v1_limits(mem, Some(m.saturating_add(s))),
                    (None, Some(_)) => Err(Error::Unsupported {
                        path: self.path.clone(),
                        reason:
                            "v1 limits swap through memsw = memory + swap: set a memory limit first"
                                .into(),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/sys\\040temd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn mountinfo_finds_v1_and_v2() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].controllers, vec!["memory"]);
        assert_eq!(m[2].mount_point, Path::new("/sys/fs/cgroup/sys temd"));
        assert_eq!(m[3].version, CgroupVersion::V2);
        assert_eq!(m[3].mount_point, Path::new("/sys/fs/cgroup/unified"));
        // v2 without memory: v1 wins; v2 with memory: v2 wins.
        let v1 = choose_memory_mount(&m, |_| false).unwrap();
        assert_eq!(v1.mount_point, Path::new("/sys/fs/cgroup/memory"));
        let v2 = choose_memory_mount(&m, |_| true).unwrap();
        assert_eq!(v2.version, CgroupVersion::V2);
        assert!(choose_memory_mount(&m[..1], |_| true).is_none());
    }

    #[test]
    fn proc_cgroup_lines() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/user.slice/x\n";
        assert_eq!(
            parse_proc_cgroup(text, CgroupVersion::V1),
            Some(PathBuf::from("/process_api/abc"))
        );
        assert_eq!(
            parse_proc_cgroup(text, CgroupVersion::V2),
            Some(PathBuf::from("/user.slice/x"))
        );
        assert_eq!(parse_proc_cgroup("1:cpu:/\n", CgroupVersion::V1), None);
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("9223372036854771712\n"), Ok(None));
        assert_eq!(parse_limit("67108864\n"), Ok(Some(64 << 20)));
        assert!(parse_limit("lots").is_err());
    }

    #[test]
    fn memory_stat_both_versions() {
        let v1 =
            parse_memory_stat("cache 100\nrss 200\nrss_huge 0\nswap 300\ntotal_rss 999\n").unwrap();
        assert_eq!((v1.anon, v1.file, v1.swap), (200, 100, Some(300)));
        assert_eq!(v1.get("total_rss"), Some(999));
        let v2 = parse_memory_stat("anon 5\nfile 6\nkernel 7\n").unwrap();
        assert_eq!((v2.anon, v2.file, v2.swap), (5, 6, None));
        assert!(parse_memory_stat("anon x\n").is_err());
        assert!(parse_memory_stat("anon 1 2\n").is_err());
    }

    #[test]
    fn events() {
        let ev =
            parse_events("low 1\nhigh 2\nmax 3\noom 4\noom_kill 5\noom_group_kill 6\n").unwrap();
        assert_eq!(
            ev,
            MemoryEvents {
                low: 1,
                high: 2,
                max: 3,
                oom: 4,
                oom_kill: 5
            }
        );
        assert!(parse_events("max\n").is_err());
    }

    /// A fake cgroup v2 group in a temp dir: this machine's cgroup2 mount has no memory
    /// controller, so the v2 file paths are exercised against plain files instead.
    fn fake_v2_group() -> (tempfile::TempDir, MemoryCgroup) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("memory.current", "1048576\n"),
            ("memory.max", "max\n"),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 1\noom_kill 2\n"),
            ("memory.stat", "anon 8192\nfile 4096\nswapcached 0\n"),
            ("cgroup.procs", "12\n34\n"),
        ];
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        let cg = MemoryCgroup::open(dir.path()).unwrap();
        (dir, cg)
    }

    #[test]
    fn fake_v2_readers() {
        let (_dir, cg) = fake_v2_group();
        assert_eq!(cg.version(), CgroupVersion::V2);
        assert_eq!(cg.usage().unwrap(), 1 << 20);
        assert_eq!(cg.limit().unwrap(), None);
        assert_eq!(cg.swap_usage().unwrap(), 4096);
        assert_eq!(cg.swap_limit().unwrap(), None);
        assert_eq!(cg.failcnt().unwrap(), 7);
        assert_eq!(cg.events().unwrap().unwrap().oom_kill, 2);
        assert_eq!(cg.oom_kills().unwrap(), 2);
        let stat = cg.stat().unwrap();
        assert_eq!((stat.anon, stat.file, stat.swap), (8192, 4096, None));
        assert_eq!(cg.procs().unwrap(), vec![12, 34]);
    }

    #[test]
    fn fake_v2_room_is_the_tightest_of_max_high_and_ancestors() {
        // A fake v2 tree (this machine has no v2 memory controller): parent with max 1 GiB
        // and 900 MiB used, child with max 512 MiB, high 256 MiB and 200 MiB used.
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().join("p");
        let child = parent.join("c");
        fs::create_dir_all(&child).unwrap();
        let put = |dir: &Path, name: &str, text: &str| fs::write(dir.join(name), text).unwrap();
        put(&parent, "memory.current", &format!("{}\n", 900u64 << 20));
        put(&parent, "memory.max", &format!("{}\n", 1u64 << 30));
        put(&child, "memory.current", &format!("{}\n", 200u64 << 20));
        put(&child, "memory.max", &format!("{}\n", 512u64 << 20));
        put(&child, "memory.high", &format!("{}\n", 256u64 << 20));
        put(
            &child,
            "memory.stat",
            &format!(
                "anon {}\ninactive_file {}\nfile_dirty {}\nfile_writeback {}\n",
                150u64 << 20,
                40u64 << 20,
                6u64 << 20,
                2u64 << 20
            ),
        );
        let cg = MemoryCgroup::open(&child).unwrap();
        assert_eq!(cg.high().unwrap(), Some(256 << 20));
        // The parent has 124 MiB left, the child's high 56 MiB: the child's high binds.
        let r = cg.room().unwrap().unwrap();
        assert_eq!(
            (r.limit, r.usage, r.free()),
            (256 << 20, 200 << 20, 56 << 20)
        );
        assert_eq!(r.group, child);
        // 40 MiB inactive file, 8 MiB of it dirty or under writeback: 32 MiB droppable.
        let stat = MemoryCgroup::open(&r.group).unwrap().stat().unwrap();
        assert_eq!(stat.clean_inactive_file(), 32 << 20);
        assert_eq!(r.available(), 88 << 20);
        // Lift the child's high: the parent's 124 MiB is now tighter than the child's 312.
        put(&child, "memory.high", "max\n");
        let r = cg.room().unwrap().unwrap();
        assert_eq!((r.group.as_path(), r.free()), (parent.as_path(), 124 << 20));
        // The parent has no memory.stat in this tree: no droppable cache counted.
        assert_eq!(r.available(), 124 << 20);
        // No limit anywhere: None.
        put(&child, "memory.max", "max\n");
        put(&parent, "memory.max", "max\n");
        assert_eq!(cg.room().unwrap(), None);
        // A malformed own file is an error, not a silent "no limit".
        put(&child, "memory.max", "lots\n");
        assert!(matches!(cg.room(), Err(Error::Parse { .. })));
    }

    #[test]
    fn fake_v2_writers() {
        let (dir, cg) = fake_v2_group();
        cg.set_limit(Some(64 << 20)).unwrap();
        assert_eq!(cg.limit().unwrap(), Some(64 << 20));
        cg.set_swap_limit(Some(1 << 20)).unwrap();
        assert_eq!(cg.swap_limit().unwrap(), Some(1 << 20));
        cg.set_limit(None).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("memory.max")).unwrap(),
            "max"
        );
        cg.add_process(42).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.procs")).unwrap(),
            "42"
        );
    }

    #[test]
    fn fake_v2_open_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MemoryCgroup::open(dir.path()),
            Err(Error::NotMemoryCgroup { .. })
        ));
        assert!(matches!(
            MemoryCgroup::open(dir.path().join("nope")),
            Err(Error::NotFound { .. })
        ));
        fs::write(dir.path().join("memory.current"), "garbage").unwrap();
        let cg = MemoryCgroup::open(dir.path()).unwrap();
        assert!(matches!(cg.usage(), Err(Error::Parse { .. })));
        assert!(matches!(cg.limit(), Err(Error::NotFound { .. })));
    }
}
