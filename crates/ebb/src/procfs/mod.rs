//! Typed, panic-free parsers for the /proc files ebb reads.
//!
//! Every file has a module with a pure `parse(text: &str)` function (what the tests and the
//! fuzz targets in `fuzz/` drive) and a reader that opens the file and maps I/O errors:
//!
//! | module | file | parsed into |
//! | --- | --- | --- |
//! | [`smaps`] | `/proc/PID/smaps_rollup`, `/proc/PID/smaps` | [`smaps::SmapsRollup`], [`smaps::SmapsEntry`] |
//! | [`maps`] | `/proc/PID/maps` | [`maps::MapsEntry`] |
//! | [`status`] | `/proc/PID/status` | [`status::Status`] |
//! | [`meminfo`] | `/proc/meminfo` | [`meminfo::Meminfo`] |
//! | [`vmstat`] | `/proc/vmstat` | [`vmstat::Vmstat`] |
//! | [`pressure`] | `/proc/pressure/memory`, cgroup v2 `memory.pressure` | [`pressure::Pressure`] |
//! | [`oom`] | `/proc/PID/oom_score_adj`, `/proc/PID/oom_score` | `i16`, `u32` |
//!
//! # Conventions
//! - Sizes are in **bytes** (`u64`): the kernel's `kB` values are multiplied by 1024 with
//!   `checked_mul`, so a value that would overflow is a [`ParseError`], not a wrap or a panic.
//! - Keys the parser does not know are skipped (kernels add keys over time). A line that is
//!   malformed where a known key or the file's grammar is concerned is a [`ParseError`]; each
//!   module says which lines it skips and which it rejects.
//! - Files are read whole and decoded with [`String::from_utf8_lossy`]: mapping pathnames and
//!   task names are arbitrary bytes, and one odd byte should not make a whole file unreadable.
//! - Reading `/proc/PID/...` of a process that has gone away gives [`Error::NoProcess`].
//!
//! # References
//! - `proc(5)`, `proc_pid_smaps(5)`, `proc_pid_maps(5)`, `proc_pid_status(5)`,
//!   `proc_meminfo(5)`, `proc_pid_oom_score_adj(5)`.
//! - Linux `Documentation/filesystems/proc.rst`, `Documentation/accounting/psi.rst`;
//!   `fs/proc/task_mmu.c` (`show_map_vma`, `__show_smap`), `fs/proc/array.c`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub mod maps;
pub mod meminfo;
pub mod oom;
pub mod pressure;
pub mod smaps;
pub mod status;
pub mod swaps;
pub mod vmstat;

/// Longest excerpt of offending input kept in a [`ParseError`], in characters.
pub const MAX_EXCERPT_CHARS: usize = 80;

/// Which /proc file a [`ParseError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FileKind {
    /// `/proc/PID/maps`.
    Maps,
    /// `/proc/PID/smaps`.
    Smaps,
    /// `/proc/PID/smaps_rollup`.
    SmapsRollup,
    /// `/proc/PID/status`.
    Status,
    /// `/proc/meminfo`.
    Meminfo,
    /// `/proc/vmstat`.
    Vmstat,
    /// `/proc/pressure/*` or a cgroup v2 `*.pressure` file.
    Pressure,
    /// `/proc/PID/oom_score_adj`.
    OomScoreAdj,
    /// `/proc/PID/oom_score`.
    OomScore,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Maps => "maps",
            Self::Smaps => "smaps",
            Self::SmapsRollup => "smaps_rollup",
            Self::Status => "status",
            Self::Meminfo => "meminfo",
            Self::Vmstat => "vmstat",
            Self::Pressure => "pressure",
            Self::OomScoreAdj => "oom_score_adj",
            Self::OomScore => "oom_score",
        })
    }
}

/// Text that is not what the kernel writes into a /proc file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} line {line}: {what}: {text:?}")]
pub struct ParseError {
    /// The file being parsed.
    pub kind: FileKind,
    /// 1-based line number; 0 when the problem is the file as a whole (empty, key missing).
    pub line: usize,
    /// What was wrong.
    pub what: &'static str,
    /// The offending text, truncated to [`MAX_EXCERPT_CHARS`] characters.
    pub text: String,
}

impl ParseError {
    /// A parse error about `text` on 1-based `line` (0: the whole file) of a `kind` file.
    pub fn new(kind: FileKind, line: usize, what: &'static str, text: &str) -> Self {
        Self {
            kind,
            line,
            what,
            text: text.chars().take(MAX_EXCERPT_CHARS).collect(),
        }
    }
}

/// Failure to read a /proc file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process does not exist (any more): `/proc/PID` is gone (ENOENT or ESRCH).
    #[error("process {pid} does not exist")]
    NoProcess {
        /// The process id asked for.
        pid: u32,
    },
    /// Reading or writing the file failed for another reason (EACCES, ESRCH of a kernel
    /// thread's `smaps_rollup`, ...).
    #[error("I/O on {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The file was read but its text did not parse.
    #[error("parsing {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What did not parse, and where.
        source: ParseError,
    },
    /// A value to write is outside the range the kernel accepts.
    #[error("{name} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// What the value is (`oom_score_adj`).
        name: &'static str,
        /// The rejected value.
        value: i64,
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
}

/// `/proc/<pid>/<name>`.
pub fn pid_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// The pid `path` is about, if it has the form `/proc/<digits>/...`.
fn pid_of_path(path: &Path) -> Option<u32> {
    let rest = path.strip_prefix("/proc").ok()?;
    let first = rest.components().next()?;
    first.as_os_str().to_str()?.parse().ok()
}

/// Turns an I/O error on `path` into [`Error`], recognising a vanished process.
///
/// ENOENT or ESRCH under `/proc/PID/` mean the process is gone, unless `/proc/PID` itself
/// still exists: a kernel thread's `smaps_rollup` fails with ESRCH because it has no mm,
/// and that is reported as [`Error::Io`].
pub(crate) fn io_error(path: &Path, source: io::Error) -> Error {
    let gone = matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ESRCH));
    if gone {
        if let Some(pid) = pid_of_path(path) {
            if !pid_path(pid, "").exists() {
                return Error::NoProcess { pid };
            }
        }
    }
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file into a string (invalid UTF-8 replaced by U+FFFD), mapping errors.
///
/// ENOENT/ESRCH on `/proc/PID/...` of a process that is gone is [`Error::NoProcess`].
pub fn read_file(path: impl AsRef<Path>) -> Result<String, Error> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Reads `path` and parses it with `parse`, attaching the path to a parse error.
pub(crate) fn read_parsed<T>(
    path: impl AsRef<Path>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, Error> {
    let path = path.as_ref();
    let text = read_file(path)?;
    parse(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The ids of the processes currently in /proc (its numeric directory names), ascending.
///
/// Processes may exit or start while this runs; readers of the returned pids must expect
/// [`Error::NoProcess`].
pub fn list_pids() -> Result<Vec<u32>, Error> {
    let dir = Path::new("/proc");
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    let mut pids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Splits `Key:   value` into (`Key`, `value` trimmed); `None` when the line has no colon or
/// the key is empty or contains whitespace (e.g. a mapping header line).
pub(crate) fn split_key(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    Some((key, value.trim()))
}

/// Parses `N kB` to bytes, or a bare `N` as a count; other units are errors.
pub(crate) fn parse_size(
    kind: FileKind,
    line_no: usize,
    line: &str,
    value: &str,
) -> Result<u64, ParseError> {
    let mut parts = value.split_whitespace();
    let number = parts
        .next()
        .ok_or_else(|| ParseError::new(kind, line_no, "missing value", line))?;
    let n: u64 = number
        .parse()
        .map_err(|_| ParseError::new(kind, line_no, "value is not an unsigned integer", line))?;
    let n = match parts.next() {
        None => n,
        Some("kB") => n.checked_mul(1024).ok_or_else(|| {
            ParseError::new(kind, line_no, "value in kB overflows u64 bytes", line)
        })?,
        Some(_) => return Err(ParseError::new(kind, line_no, "unit is not kB", line)),
    };
    if parts.next().is_some() {
        return Err(ParseError::new(
            kind,
            line_no,
            "trailing text after value",
            line,
        ));
    }
    Ok(n)
}

/// Parses `N kB` to bytes, rejecting a bare number.
pub(crate) fn parse_kb(
    kind: FileKind,
    line_no: usize,
    line: &str,
    value: &str,
) -> Result<u64, ParseError> {
    if !value.trim_end().ends_with("kB") {
        return Err(ParseError::new(
            kind,
            line_no,
            "expected a value in kB",
            line,
        ));
    }
    parse_size(kind, line_no, line, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_truncates_excerpt_on_char_boundary() {
        let long = "é".repeat(200);
        let e = ParseError::new(FileKind::Maps, 3, "bad", &long);
        assert_eq!(e.text.chars().count(), MAX_EXCERPT_CHARS);
        assert!(e.to_string().starts_with("maps line 3: bad: "));
    }

    #[test]
    fn pid_of_path_recognises_only_numeric_proc_dirs() {
        assert_eq!(pid_of_path(Path::new("/proc/42/smaps")), Some(42));
        assert_eq!(pid_of_path(Path::new("/proc/self/smaps")), None);
        assert_eq!(pid_of_path(Path::new("/proc/meminfo")), None);
        assert_eq!(pid_of_path(Path::new("/sys/42/x")), None);
    }

    #[test]
    fn sizes() {
        let k = FileKind::Meminfo;
        assert_eq!(parse_size(k, 1, "", "12 kB"), Ok(12 * 1024));
        assert_eq!(parse_size(k, 1, "", "12"), Ok(12));
        assert!(parse_size(k, 1, "", "").is_err());
        assert!(parse_size(k, 1, "", "12 MB").is_err());
        assert!(parse_size(k, 1, "", "12 kB x").is_err());
        assert!(parse_size(k, 1, "", "-1 kB").is_err());
        assert!(parse_size(k, 1, "", "18446744073709551615 kB").is_err());
        assert_eq!(parse_size(k, 1, "", "18446744073709551615"), Ok(u64::MAX));
        assert!(parse_kb(k, 1, "", "12").is_err());
    }

    #[test]
    fn list_pids_contains_self() {
        let pids = list_pids().expect("list /proc");
        assert!(pids.contains(&std::process::id()));
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn read_file_of_missing_pid_is_no_process() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let pid = 4_194_304 + 7;
        match read_file(pid_path(pid, "status")) {
            Err(Error::NoProcess { pid: p }) => assert_eq!(p, pid),
            other => panic!("expected NoProcess, got {other:?}"),
        }
    }

    #[test]
    fn read_file_of_missing_system_file_is_io() {
        match read_file("/proc/ebb-does-not-exist") {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
