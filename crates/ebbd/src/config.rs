//! The configuration: TOML, every key defaulted, unknown keys refused.
//!
//! The keys and defaults are the daemon's contract (see the crate docs). Errors carry the line
//! and column of the offending key or value: toml's error span for syntax, unknown keys and
//! out-of-range values (range checks run inside deserialization so the span is the value's),
//! and the key's own position for rules that involve several keys (band order).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use ebb::pressure::Level;

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid configuration.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// `[scope]`: which processes ebbd manages.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scope {
    /// If set, manage only processes in this memory cgroup (path under the memory root, or
    /// absolute).
    pub cgroup: String,
}

/// `[ranks]`: how processes are ranked into bands.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ranks {
    /// Period of the /proc scan, milliseconds (10..=60000).
    #[serde(deserialize_with = "scan_interval")]
    pub scan_interval_ms: u64,
    /// adj <= this is foreground.
    #[serde(deserialize_with = "adj")]
    pub foreground: i16,
    /// adj <= this is visible.
    #[serde(deserialize_with = "adj")]
    pub visible: i16,
    /// adj <= this is perceptible.
    #[serde(deserialize_with = "adj")]
    pub perceptible: i16,
    /// adj >= this (and below `cached`) is previous.
    #[serde(deserialize_with = "adj")]
    pub previous: i16,
    /// adj >= this is cached.
    #[serde(deserialize_with = "adj")]
    pub cached: i16,
    /// Processes in these memory cgroups count as cached.
    pub cached_cgroups: Vec<String>,
    /// A frozen cgroup's processes count as cached.
    pub frozen_is_cached: bool,
}

impl Default for Ranks {
    fn default() -> Self {
        Ranks {
            scan_interval_ms: 200,
            foreground: 0,
            visible: 100,
            perceptible: 200,
            previous: 700,
            cached: 900,
            cached_cgroups: Vec::new(),
            frozen_is_cached: true,
        }
    }
}

/// `[compaction]`: Android's CachedAppOptimizer throttles.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compaction {
    /// Compact cached processes at all.
    pub enabled: bool,
    /// When a cached process is compacted: as it enters the cached band (`on_cached`,
    /// Android's CachedAppOptimizer), or only when the scope runs short of free memory
    /// (`headroom`, least recently cached first).
    pub trigger: Trigger,
    /// With `trigger = "headroom"`: keep at least this percentage of the scope's limit free
    /// (1..=90); without a limit (or a scope), of MemTotal, measured as MemAvailable.
    #[serde(deserialize_with = "headroom")]
    pub headroom_pct: u8,
    /// No re-compaction of the same process within this many seconds.
    pub min_interval_s: u64,
    /// Skip when anonymous RSS is below this (MiB).
    pub min_anon_rss_mib: u64,
    /// Skip when anonymous RSS grew less than this since the last compaction (MiB).
    pub min_growth_mib: u64,
    /// File mappings only (no PAGEOUT) when free swap is below this percentage.
    #[serde(deserialize_with = "percent")]
    pub file_only_below_free_swap_pct: u8,
    /// WILLNEED over the paged-out ranges when the process leaves the cached band. Off by
    /// default: in the app-switch benchmark (quick profile, same trace, two runs each) it
    /// raised resume p95 from 23 to 34 ms, lowered the hot-start ratio from 1.00 to 0.70-0.73
    /// (reading back whole apps overran the budget and forced kills) and doubled ebbd's CPU.
    pub prefetch_on_resume: bool,
    /// Ranges per process_madvise call (1..=1024); the cancel check runs between calls.
    #[serde(deserialize_with = "batch")]
    pub batch_ranges: usize,
    /// Largest range per iovec, MiB (1..=1048576): bounds the work between cancel checks.
    #[serde(deserialize_with = "max_range")]
    pub max_range_mib: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            enabled: true,
            trigger: Trigger::OnCached,
            headroom_pct: 20,
            min_interval_s: 10,
            min_anon_rss_mib: 12,
            min_growth_mib: 8,
            file_only_below_free_swap_pct: 20,
            prefetch_on_resume: false,
            batch_ranges: crate::compaction::BATCH,
            max_range_mib: crate::compaction::MAX_RANGE >> 20,
        }
    }
}

/// When cached processes are compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Each process as it enters the cached band (Android): its memory is freed before
    /// anyone asks, at the price of compressing memory that may never be needed.
    OnCached,
    /// Only while the scope's free memory is below `headroom_pct`: cached processes are
    /// compacted one at a time, the one cached longest first, until the headroom is back.
    /// Compresses only what the budget forces out, and keeps recently used apps whole.
    Headroom,
}

impl Trigger {
    /// `on_cached` or `headroom`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::OnCached => "on_cached",
            Trigger::Headroom => "headroom",
        }
    }
}

/// How the killer orders its victims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillOrder {
    /// Highest oom_score_adj first, then largest RSS (lmkd).
    AdjThenRss,
    /// Largest RSS first among those at or above `min_adj`.
    Rss,
}

/// The pressure level names of the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinLevel {
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `critical`.
    Critical,
}

impl From<MinLevel> for Level {
    fn from(l: MinLevel) -> Level {
        match l {
            MinLevel::Low => Level::Low,
            MinLevel::Medium => Level::Medium,
            MinLevel::Critical => Level::Critical,
        }
    }
}

/// `[kill]`: the last-resort killer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kill {
    /// Kill on pressure at all.
    pub enabled: bool,
    /// Pressure from this memory cgroup; empty: system PSI.
    pub cgroup: String,
    /// React to events at or above this level.
    pub min_level: MinLevel,
    /// Never kill below this adj.
    #[serde(deserialize_with = "adj")]
    pub min_adj: i16,
    /// comm names never killed.
    pub protected: Vec<String>,
    /// Victim order.
    pub order: KillOrder,
    /// How long to wait for a victim to exit before the next kill, milliseconds.
    pub wait_exit_ms: u64,
}

impl Default for Kill {
    fn default() -> Self {
        Kill {
            enabled: true,
            cgroup: String::new(),
            min_level: MinLevel::Critical,
            min_adj: 200,
            protected: Vec::new(),
            order: KillOrder::AdjThenRss,
            wait_exit_ms: 2000,
        }
    }
}

/// `[socket]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Socket {
    /// Path of the Unix stream socket.
    pub path: PathBuf,
    /// Its permission bits (e.g. `0o660`).
    #[serde(deserialize_with = "mode")]
    pub mode: u32,
}

impl Default for Socket {
    fn default() -> Self {
        Socket {
            path: PathBuf::from("/run/ebbd.sock"),
            mode: 0o660,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// `host:port` on a loopback address for Prometheus text; empty: off.
    #[serde(deserialize_with = "loopback")]
    pub listen: String,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[scope]`.
    pub scope: Scope,
    /// `[ranks]`.
    pub ranks: Ranks,
    /// `[compaction]`.
    pub compaction: Compaction,
    /// `[kill]`.
    pub kill: Kill,
    /// `[socket]`.
    pub socket: Socket,
    /// `[metrics]`.
    pub metrics: Metrics,
}

fn adj<'de, D: Deserializer<'de>>(d: D) -> Result<i16, D::Error> {
    let v = i64::deserialize(d)?;
    if !(-1000..=1000).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is not an oom_score_adj: must be within -1000..=1000"
        )));
    }
    Ok(v as i16)
}

fn scan_interval<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    if !(10..=60_000).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "scan_interval_ms {v} is out of range: must be within 10..=60000"
        )));
    }
    Ok(v as u64)
}

fn batch<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let v = i64::deserialize(d)?;
    if !(1..=1024).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "batch_ranges {v} is out of range: process_madvise takes 1..=1024 ranges per call"
        )));
    }
    Ok(v as usize)
}

fn max_range<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    if !(1..=1 << 20).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "max_range_mib {v} is out of range: must be within 1..=1048576"
        )));
    }
    Ok(v as u64)
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = i64::deserialize(d)?;
    if !(0..=100).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "{v} is not a percentage: must be within 0..=100"
        )));
    }
    Ok(v as u8)
}

fn headroom<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = i64::deserialize(d)?;
    if !(1..=90).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "headroom_pct {v} is out of range: must be within 1..=90"
        )));
    }
    Ok(v as u8)
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if !(0..=0o777).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "mode {v:#o} is not a permission mode: must be within 0o000..=0o777"
        )));
    }
    Ok(v as u32)
}

fn loopback<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(s);
    }
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Ok(s),
        Ok(a) => Err(serde::de::Error::custom(format!(
            "metrics are served on loopback only, and {} is not a loopback address",
            a.ip()
        ))),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{s:?} is not an address:port such as \"127.0.0.1:9750\""
        ))),
    }
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Byte offset of `key = …` inside table `[table]` of `text`, if written there.
fn key_offset(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if let Some(rest) = t.strip_prefix('[') {
            current = rest.split(']').next().unwrap_or("").trim().to_string();
        } else if current == table
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(offset + indent);
        }
        offset += line.len();
    }
    None
}

impl Config {
    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, Error> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Error::Invalid {
                origin: origin.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let r = &config.ranks;
        let order = [
            ("foreground", r.foreground),
            ("visible", r.visible),
            ("perceptible", r.perceptible),
            ("previous", r.previous),
            ("cached", r.cached),
        ];
        for pair in order.windows(2) {
            let ((lo_name, lo), (hi_name, hi)) = (pair[0], pair[1]);
            if lo >= hi {
                let (line, column) = key_offset(text, "ranks", hi_name)
                    .or_else(|| key_offset(text, "ranks", lo_name))
                    .map_or((1, 1), |o| line_col(text, o));
                return Err(Error::Invalid {
                    origin: origin.to_string(),
                    line,
                    column,
                    message: format!(
                        "bands must rise: ranks.{lo_name} ({lo}) must be below ranks.{hi_name} ({hi})"
                    ),
                });
            }
        }
        Ok(config)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Absolute path of the scope cgroup, if one is set (a relative path is taken under the
    /// memory cgroup root).
    pub fn scope_cgroup(&self) -> Option<PathBuf> {
        resolve_cgroup(&self.scope.cgroup)
    }

    /// Absolute path of the kill pressure cgroup, if one is set.
    pub fn kill_cgroup(&self) -> Option<PathBuf> {
        resolve_cgroup(&self.kill.cgroup)
    }
}

/// A cgroup path from the config: absolute as is, relative under the memory root.
pub fn resolve_cgroup(s: &str) -> Option<PathBuf> {
    if s.is_empty() {
        return None;
    }
    let p = Path::new(s);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    let root = ebb::cgroup::memory_root()
        .ok()
        .flatten()
        .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), |(_, r)| r);
    Some(root.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, usize, String) {
        match Config::parse(text, "t.toml") {
            Err(Error::Invalid {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn empty_is_the_contract_defaults() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.ranks.scan_interval_ms, 200);
        assert_eq!(c.ranks.cached, 900);
        assert_eq!(c.compaction.min_interval_s, 10);
        assert_eq!(c.compaction.min_anon_rss_mib, 12);
        assert_eq!(c.compaction.min_growth_mib, 8);
        assert_eq!(c.compaction.file_only_below_free_swap_pct, 20);
        assert_eq!(c.compaction.trigger, Trigger::OnCached);
        assert_eq!(c.compaction.headroom_pct, 20);
        assert!(!c.compaction.prefetch_on_resume);
        assert_eq!(c.kill.min_level, MinLevel::Critical);
        assert_eq!(c.kill.min_adj, 200);
        assert_eq!(c.kill.order, KillOrder::AdjThenRss);
        assert_eq!(c.kill.wait_exit_ms, 2000);
        assert_eq!(c.socket.path, PathBuf::from("/run/ebbd.sock"));
        assert_eq!(c.socket.mode, 0o660);
        assert_eq!(c.metrics.listen, "");
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
[scope]
cgroup = "/sys/fs/cgroup/memory/ebb-x"
[ranks]
scan_interval_ms = 100
foreground = 0
visible = 100
perceptible = 200
previous = 700
cached = 900
cached_cgroups = ["a"]
frozen_is_cached = false
[compaction]
enabled = true
trigger = "headroom"
headroom_pct = 25
min_interval_s = 1
min_anon_rss_mib = 1
min_growth_mib = 1
file_only_below_free_swap_pct = 5
prefetch_on_resume = true
[kill]
enabled = false
cgroup = "x"
min_level = "medium"
min_adj = 500
protected = ["sshd"]
order = "rss"
wait_exit_ms = 10
[socket]
path = "/tmp/x.sock"
mode = 0o600
[metrics]
listen = "127.0.0.1:9750"
"#;
        let c = Config::parse(text, "t").unwrap();
        assert_eq!(c.kill.order, KillOrder::Rss);
        assert_eq!(c.compaction.trigger, Trigger::Headroom);
        assert_eq!(c.compaction.headroom_pct, 25);
        assert_eq!(c.socket.mode, 0o600);
        assert_eq!(c.kill.protected, vec!["sshd".to_string()]);
        assert_eq!(
            c.scope_cgroup().unwrap(),
            Path::new("/sys/fs/cgroup/memory/ebb-x")
        );
    }

    #[test]
    fn unknown_key_has_its_line_and_column() {
        let (line, col, msg) = err("[ranks]\nscan_interval_ms = 100\n  cachd = 900\n");
        assert_eq!((line, col), (3, 3), "{msg}");
        assert!(msg.contains("cachd"), "{msg}");
    }

    #[test]
    fn unknown_table_is_refused() {
        let (line, _, msg) = err("[scope]\n[bogus]\nx = 1\n");
        assert_eq!(line, 2, "{msg}");
    }

    #[test]
    fn bad_values_are_refused_where_they_are() {
        let (line, col, msg) = err("[kill]\nmin_level = \"severe\"\n");
        assert_eq!((line, col), (2, 13), "{msg}");
        let (line, _, msg) = err("[ranks]\ncached = 5000\n");
        assert_eq!(line, 2);
        assert!(msg.contains("-1000..=1000"), "{msg}");
        let (line, _, msg) = err("\n[ranks]\nscan_interval_ms = 0\n");
        assert_eq!(line, 3);
        assert!(msg.contains("10..=60000"), "{msg}");
        let (line, _, msg) = err("[metrics]\nlisten = \"0.0.0.0:9750\"\n");
        assert_eq!(line, 2);
        assert!(msg.contains("loopback"), "{msg}");
        let (line, _, _) = err("[socket]\nmode = 0o7777\n");
        assert_eq!(line, 2);
        let (line, _, _) = err("[compaction]\nmin_interval_s = -1\n");
        assert_eq!(line, 2);
        let (line, _, _) = err("[compaction]\nenabled = \"yes\"\n");
        assert_eq!(line, 2);
        let (line, _, _) = err("[kill]\norder = \"random\"\n");
        assert_eq!(line, 2);
        let (line, col, msg) = err("[compaction]\ntrigger = \"eager\"\n");
        assert_eq!((line, col), (2, 11), "{msg}");
        assert!(
            msg.contains("on_cached") && msg.contains("headroom"),
            "{msg}"
        );
        let (line, _, msg) = err("[compaction]\n\nheadroom_pct = 95\n");
        assert_eq!(line, 3);
        assert!(msg.contains("1..=90"), "{msg}");
    }

    #[test]
    fn malformed_toml_has_a_position() {
        let (line, _, _) = err("[ranks\nx=1\n");
        assert_eq!(line, 1);
        let (line, _, _) = err("[kill]\nmin_adj = \n");
        assert_eq!(line, 2);
    }

    #[test]
    fn bands_must_rise() {
        let (line, col, msg) = err("[ranks]\nvisible = 100\n cached = 50\n");
        assert_eq!((line, col), (3, 2), "{msg}");
        assert!(msg.contains("ranks.cached"), "{msg}");
    }
}
