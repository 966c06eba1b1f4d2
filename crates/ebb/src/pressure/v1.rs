//! cgroup v1 `memory.pressure_level` notifications through `cgroup.event_control`.
//!
//! For each level (`low`, `medium`, `critical`) an eventfd is registered by writing
//! `"<eventfd> <fd of memory.pressure_level> <level>,<mode>"` to the cgroup's
//! `cgroup.event_control`. The kernel (mm/vmpressure.c, `vmpressure_event`) signals every
//! registration whose level is at most the level computed from the reclaim scan/reclaimed
//! ratio, so a `critical` event also signals the `low` and `medium` eventfds: the monitor
//! reads all three and reports the highest. On `rmdir` of the cgroup the kernel signals each
//! eventfd once more (`memcg_event_remove`); the monitor then finds the directory gone.
//! Closing an eventfd unregisters it (the kernel sees `EPOLLHUP` on it).
//!
//! The v1 watermark uses the same interface for usage thresholds (memory.rst §9):
//! `"<eventfd> <fd of memory.usage_in_bytes> <bytes>"`.
//!
//! # References
//! Documentation/admin-guide/cgroup-v1/memory.rst §9 "Memory thresholds", §11 "Memory
//! Pressure"; eventfd(2).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::event::{EventfdFlags, eventfd};

use super::{Error, Level, Thresholds, V1Mode};

/// Registers one eventfd per level on `cgroup` (which must be a v1 memory cgroup).
pub(crate) fn register(cgroup: &Path, mode: V1Mode) -> Result<Vec<(Level, OwnedFd)>, Error> {
    let pl_path = cgroup.join("memory.pressure_level");
    let ec_path = cgroup.join("cgroup.event_control");
    let pressure_level = File::open(&pl_path).map_err(|e| Error::io("opening", &pl_path, e))?;
    let mut control = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&ec_path)
        .map_err(|e| v1_io("opening", &ec_path, e))?;
    let mut out = Vec::with_capacity(3);
    for level in [Level::Low, Level::Medium, Level::Critical] {
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| {
            Error::Start {
                what: "eventfd",
                source: e.into(),
            }
        })?;
        let line = format!(
            "{} {} {},{}",
            efd.as_raw_fd(),
            pressure_level.as_raw_fd(),
            level.as_str(),
            mode.as_str()
        );
        control
            .write_all(line.as_bytes())
            .map_err(|e| v1_io("writing", &ec_path, e))?;
        out.push((level, efd));
    }
    Ok(out)
}

/// v1 usage thresholds armed at a limit: one eventfd per level, signalled by the kernel
/// when `memory.usage_in_bytes` crosses `fraction × limit` in either direction
/// (memory.rst §9 "Memory thresholds"; checked every 128 page events per CPU).
#[derive(Debug)]
pub(crate) struct Armed {
    /// The limit the thresholds were computed from.
    pub(crate) limit: Option<u64>,
    /// Per level, its eventfd.
    pub(crate) fds: Vec<(Level, OwnedFd)>,
}

/// Reads `memory.limit_in_bytes` (`None`: unlimited).
pub(crate) fn read_limit(cgroup: &Path) -> Result<Option<u64>, Error> {
    let path = cgroup.join("memory.limit_in_bytes");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    crate::cgroup::parse_limit(&text).map_err(|reason| Error::Parse { path, reason })
}

/// Arms one usage threshold per level at `thresholds × limit` (none when unlimited).
pub(crate) fn arm_thresholds(cgroup: &Path, thresholds: &Thresholds) -> Result<Armed, Error> {
    let limit = read_limit(cgroup)?;
    let Some(bytes) = limit else {
        return Ok(Armed {
            limit,
            fds: Vec::new(),
        });
    };
    let usage_path = cgroup.join("memory.usage_in_bytes");
    let ec_path = cgroup.join("cgroup.event_control");
    let usage = File::open(&usage_path).map_err(|e| Error::io("opening", &usage_path, e))?;
    let mut control = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&ec_path)
        .map_err(|e| v1_io("opening", &ec_path, e))?;
    let mut fds = Vec::with_capacity(3);
    for (level, fraction) in [
        (Level::Low, thresholds.low),
        (Level::Medium, thresholds.medium),
        (Level::Critical, thresholds.critical),
    ] {
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| {
            Error::Start {
                what: "eventfd",
                source: e.into(),
            }
        })?;
        let at = (fraction * bytes as f64) as u64;
        let line = format!("{} {} {at}", efd.as_raw_fd(), usage.as_raw_fd());
        control
            .write_all(line.as_bytes())
            .map_err(|e| v1_io("writing", &ec_path, e))?;
        fds.push((level, efd));
    }
    Ok(Armed { limit, fds })
}

/// Reads and clears an eventfd's counter; `None` when it was zero (EAGAIN) or on error.
pub(crate) fn drain(efd: &OwnedFd) -> Option<u64> {
    let mut buf = [0u8; 8];
    match rustix::io::read(efd, &mut buf) {
        Ok(8) => Some(u64::from_ne_bytes(buf)),
        _ => None,
    }
}

fn v1_io(action: &'static str, path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        Error::Permission {
            path: path.to_path_buf(),
            action,
            rule: "registering v1 pressure_level events needs write access to cgroup.event_control (root, or the cgroup's owner)",
        }
    } else {
        Error::io(action, path, e)
    }
}
