//! The errors of the pressure monitor.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::SourceKind;

/// What went wrong registering or running a pressure source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cgroup directory given does not exist.
    #[error(
        "cgroup {path} does not exist: give a cgroup directory such as /sys/fs/cgroup/memory/ebb-x (v1) or /sys/fs/cgroup/x (v2)"
    )]
    NoSuchCgroup {
        /// The path given.
        path: PathBuf,
    },
    /// The directory exists but the memory controller is not enabled in it.
    #[error(
        "{path} is not a memory cgroup: it has neither memory.usage_in_bytes (cgroup v1) nor memory.current (cgroup v2)"
    )]
    NotMemoryCgroup {
        /// The path given.
        path: PathBuf,
    },
    /// The source needs the other cgroup version.
    #[error("the {kind} source needs a cgroup {needs} memory cgroup, but {path} is cgroup {found}")]
    WrongCgroupVersion {
        /// The cgroup.
        path: PathBuf,
        /// The source asked for.
        kind: SourceKind,
        /// `v1` or `v2`: what the source needs.
        needs: &'static str,
        /// `v1` or `v2`: what the cgroup is.
        found: &'static str,
    },
    /// A PSI trigger whose arguments break the kernel's fixed rules (checked before asking it).
    #[error("PSI trigger on {path}: {rule}")]
    PsiArgs {
        /// The pressure file.
        path: PathBuf,
        /// The rule broken, with the values given.
        rule: String,
    },
    /// The kernel refused the PSI trigger window (EINVAL) although the fixed rules hold.
    #[error(
        "PSI trigger on {path}: the kernel refused a {window:?} window (EINVAL); {rule}; nearest accepted window: {}",
        match nearest { Some(n) => format!("{n:?}"), None => "none found".to_string() }
    )]
    PsiWindow {
        /// The pressure file.
        path: PathBuf,
        /// The window asked for.
        window: Duration,
        /// The nearest window the kernel did accept when asked (probed), if any.
        nearest: Option<Duration>,
        /// The rule this kernel applies.
        rule: &'static str,
    },
    /// The file exists but does not behave as a PSI file (e.g. it cannot be polled).
    #[error("{path} is not a PSI pressure file: {reason}")]
    NotPsi {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// PSI is not available (kernel without CONFIG_PSI, or booted with psi=0).
    #[error("PSI is not available: {path} does not exist (kernel needs CONFIG_PSI=y and psi=1)")]
    NoPsi {
        /// The pressure file looked for.
        path: PathBuf,
    },
    /// The process may not open or write a file the source needs.
    #[error("permission denied {action} {path}: {rule}")]
    Permission {
        /// The file.
        path: PathBuf,
        /// What was being done ("writing", "opening").
        action: &'static str,
        /// Who may do it.
        rule: &'static str,
    },
    /// A watermark needs a limit, and the cgroup has none.
    #[error(
        "cgroup {path} has no memory limit ({file} is unlimited); a watermark needs a limit to compare usage with"
    )]
    NoLimit {
        /// The cgroup.
        path: PathBuf,
        /// The limit file read.
        file: &'static str,
    },
    /// Watermark or MemAvailable thresholds that do not rise within (0, 1].
    #[error(
        "thresholds must satisfy 0 < low <= medium <= critical <= 1 (fractions of memory in use); got low {low}, medium {medium}, critical {critical}"
    )]
    Thresholds {
        /// Low.
        low: f64,
        /// Medium.
        medium: f64,
        /// Critical.
        critical: f64,
    },
    /// A polling interval of zero.
    #[error("a polling interval must be at least 1 ms, got {0:?}")]
    Interval(Duration),
    /// A kernel file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A kernel file did not parse.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Creating the epoll instance, an eventfd or the thread failed.
    #[error("starting the pressure monitor ({what}): {source}")]
    Start {
        /// Which resource.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The monitor thread has exited (it panicked in a callback, or could not wait).
    #[error("the pressure monitor thread has stopped")]
    Stopped,
    /// `Monitor::auto` found no usable source at all.
    #[error("no pressure source is usable here: {0}")]
    NoSource(String),
}

impl Error {
    /// An I/O error on `path`, turned into [`Error::Permission`] when it is EACCES/EPERM.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => Error::Permission {
                path,
                action,
                rule: "registering pressure notifications needs write access to this file (root, or a cgroup delegated to this user)",
            },
            _ => Error::Io {
                action,
                path,
                source,
            },
        }
    }
}
