//! PSI triggers: `<some|full> <stall us> <window us>` written to a pressure file, then
//! `POLLPRI` whenever the stall within the window exceeds the threshold.
//!
//! The kernel's fixed rules (kernel/sched/psi.c, `psi_trigger_create`): the window lies in
//! [500 ms, 10 s], the threshold is non-zero and no longer than the window. On top of those,
//! a kernel may refuse windows that are not whole multiples of 2 s (psi.c applies this to
//! triggers made without CAP_SYS_RESOURCE; this lab's kernel applies it to root as well). An
//! EINVAL for a window that obeys the fixed rules is reported as [`Error::PsiWindow`] with
//! the nearest window the kernel *does* accept, found by asking it on a scratch fd.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Error, Level};

/// The shortest window the kernel accepts.
pub const PSI_WINDOW_MIN: Duration = Duration::from_millis(500);
/// The longest window the kernel accepts.
pub const PSI_WINDOW_MAX: Duration = Duration::from_secs(10);

/// The rule reported when the kernel refuses a window obeying the fixed rules.
const TWO_SECOND_RULE: &str = "this kernel accepts PSI trigger windows only as whole multiples of 2 s (psi.c's rule for triggers without CAP_SYS_RESOURCE)";

/// Which stall a PSI trigger measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stall {
    /// Some task stalled on memory.
    Some,
    /// All non-idle tasks stalled on memory at once.
    Full,
}

impl Stall {
    fn as_str(self) -> &'static str {
        match self {
            Stall::Some => "some",
            Stall::Full => "full",
        }
    }
}

/// A PSI trigger: fire when `stall` time within any `window` exceeds `threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Psi {
    /// `/proc/pressure/memory`, or a v2 cgroup's `memory.pressure`.
    pub file: PathBuf,
    /// some or full.
    pub stall: Stall,
    /// Stall time within the window that fires the trigger.
    pub threshold: Duration,
    /// The tracking window.
    pub window: Duration,
    /// The level of the events this trigger reports.
    pub level: Level,
}

impl Psi {
    /// The system-wide memory pressure file.
    pub const SYSTEM_FILE: &'static str = "/proc/pressure/memory";

    /// A trigger on the system-wide `/proc/pressure/memory`, reporting [`Level::Medium`].
    pub fn system(stall: Stall, threshold: Duration, window: Duration) -> Psi {
        Psi {
            file: PathBuf::from(Self::SYSTEM_FILE),
            stall,
            threshold,
            window,
            level: Level::Medium,
        }
    }

    /// A trigger on a v2 cgroup's `memory.pressure`, reporting [`Level::Medium`].
    pub fn cgroup(
        cgroup: impl AsRef<Path>,
        stall: Stall,
        threshold: Duration,
        window: Duration,
    ) -> Psi {
        Psi {
            file: cgroup.as_ref().join("memory.pressure"),
            ..Psi::system(stall, threshold, window)
        }
    }

    /// The same trigger reporting `level`.
    pub fn with_level(self, level: Level) -> Psi {
        Psi { level, ..self }
    }

    /// The trigger text, e.g. `some 150000 2000000`.
    pub fn trigger(&self) -> String {
        format!(
            "{} {} {}",
            self.stall.as_str(),
            self.threshold.as_micros(),
            self.window.as_micros()
        )
    }

    /// Checks the kernel's fixed rules without asking it.
    pub fn validate(&self) -> Result<(), Error> {
        let rule = if self.window < PSI_WINDOW_MIN || self.window > PSI_WINDOW_MAX {
            format!(
                "the window must lie in [{PSI_WINDOW_MIN:?}, {PSI_WINDOW_MAX:?}], got {:?}",
                self.window
            )
        } else if self.threshold.is_zero() || self.threshold > self.window {
            format!(
                "the stall threshold must be non-zero and at most the window, got {:?} in {:?}",
                self.threshold, self.window
            )
        } else if self.threshold.as_micros() * 1000 != self.threshold.as_nanos()
            || self.window.as_micros() * 1000 != self.window.as_nanos()
        {
            "threshold and window are given to the kernel in whole microseconds".to_string()
        } else {
            return Ok(());
        };
        Err(Error::PsiArgs {
            path: self.file.clone(),
            rule,
        })
    }

    /// Opens the pressure file and writes the trigger (with its NUL, as psi.rst shows).
    ///
    /// # References
    /// Documentation/accounting/psi.rst "Userspace monitor usage example".
    pub(crate) fn open(&self) -> Result<OwnedFd, Error> {
        self.validate()?;
        match write_trigger(&self.file, &self.trigger()) {
            Ok(fd) => Ok(fd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.missing()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(Error::PsiWindow {
                path: self.file.clone(),
                window: self.window,
                nearest: self.nearest_accepted(),
                rule: TWO_SECOND_RULE,
            }),
            Err(e) => Err(Error::io("writing a PSI trigger to", &self.file, e)),
        }
    }

    /// The error for a pressure file that is not there.
    fn missing(&self) -> Error {
        if self.file == Path::new(Self::SYSTEM_FILE) {
            return Error::NoPsi {
                path: self.file.clone(),
            };
        }
        match self.file.parent() {
            Some(dir) if !dir.is_dir() => Error::NoSuchCgroup {
                path: dir.to_path_buf(),
            },
            Some(dir) => Error::NotMemoryCgroup {
                path: dir.to_path_buf(),
            },
            None => Error::NoPsi {
                path: self.file.clone(),
            },
        }
    }

    /// Asks the kernel, on scratch fds, for the 2 s-multiple windows nearest to ours, and
    /// returns the first it accepts.
    fn nearest_accepted(&self) -> Option<Duration> {
        let two = 2_000_000u128;
        let us = self.window.as_micros();
        let mut candidates: Vec<u128> = (1..=5).map(|k| k * two).collect();
        candidates.sort_by_key(|c| (c.abs_diff(us), *c));
        candidates.into_iter().find_map(|w| {
            let window = Duration::from_micros(u64::try_from(w).ok()?);
            let probe = Psi {
                window,
                threshold: self.threshold.min(window),
                ..self.clone()
            };
            write_trigger(&probe.file, &probe.trigger())
                .ok()
                .map(|_fd| window)
        })
    }
}

/// Opens `file` read-write, non-blocking, and writes `trigger` plus its NUL.
fn write_trigger(file: &Path, trigger: &str) -> std::io::Result<OwnedFd> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)?;
    let mut bytes = trigger.as_bytes().to_vec();
    bytes.push(0);
    f.write_all(&bytes)?;
    Ok(f.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_text_and_fixed_rules() {
        let p = Psi::system(
            Stall::Some,
            Duration::from_millis(150),
            Duration::from_secs(2),
        );
        assert_eq!(p.trigger(), "some 150000 2000000");
        assert!(p.validate().is_ok());
        let short = Psi::system(
            Stall::Full,
            Duration::from_millis(1),
            Duration::from_millis(100),
        );
        let e = short.validate().unwrap_err().to_string();
        assert!(
            e.contains("/proc/pressure/memory") && e.contains("500ms"),
            "{e}"
        );
        let over = Psi::system(Stall::Some, Duration::from_secs(3), Duration::from_secs(2));
        assert!(
            over.validate()
                .unwrap_err()
                .to_string()
                .contains("at most the window")
        );
    }
}
