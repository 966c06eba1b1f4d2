//! Throwaway memory cgroups for tests and benchmarks.
//!
//! A [`Sandbox`] is a new memory cgroup named `ebb-<hint>-<pid>-<counter>` directly under
//! the memory root (v2 if cgroup2 has the memory controller, else v1). Children started
//! with [`Sandbox::spawn`] join it between `fork` and `exec`, so every byte of the
//! program they run is charged to it. Dropping the sandbox SIGKILLs its members, waits
//! until `cgroup.procs` is empty and removes the directory.
//!
//! The creating pid is part of the name so that [`sweep_stale`] (run by every
//! [`Sandbox::new`]) can remove groups left behind by a test process that crashed.
//! Groups whose name does not start with `ebb-` are never touched.
//!
//! # Safety contract
//! This module's only `unsafe` is the `pre_exec` hook of [`Sandbox::spawn`], which runs in
//! the forked child and therefore may only make async-signal-safe calls (`open`, `write`,
//! `close`) on memory prepared before the fork.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ebb::cgroup::{self, CgroupVersion, MemoryCgroup, MemoryStat};

/// An error creating, using or removing a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No memory cgroup controller is mounted.
    #[error("no memory cgroup controller mounted (neither cgroup2 with memory nor v1 memory)")]
    NoMemoryController,
    /// A cgroup file operation failed.
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    /// Creating or removing the group directory failed.
    #[error("{path}: {source}")]
    Dir {
        /// The group directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The members did not go away within the timeout.
    #[error("{path}: processes {pids:?} still present after {timeout:?} of SIGKILL")]
    KillTimeout {
        /// The group directory.
        path: PathBuf,
        /// Members left.
        pids: Vec<u32>,
        /// How long we waited.
        timeout: Duration,
    },
    /// v2: the parent does not delegate the memory controller and we could not enable it.
    #[error("{path}: cannot enable the memory controller in cgroup.subtree_control: {source}")]
    Delegation {
        /// The parent's `cgroup.subtree_control`.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// What a [`Sandbox`] should look like.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// A word for the group name (`ebb-<hint>-<pid>-<n>`); characters other than
    /// `[A-Za-z0-9_]` are replaced by `_`.
    pub name_hint: String,
    /// Hard memory limit in bytes; `None` for unlimited.
    pub memory_limit: Option<u64>,
    /// Swap the group may use beyond the memory limit; `None` for unlimited.
    /// v1 needs a memory limit for this (it limits memory+swap).
    pub swap_limit: Option<u64>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How long [`Drop`] waits for members to die.
const DROP_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A memory cgroup of our own, removed on drop with everything in it killed.
#[derive(Debug)]
pub struct Sandbox {
    cgroup: MemoryCgroup,
    /// `<path>/cgroup.procs`, NUL-terminated, made before any fork for the pre_exec hook.
    procs_file: CString,
}

/// Split `ebb-<hint>-<pid>-<counter>` into the creating pid; `None` if not an ebb group.
pub fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("ebb-")?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let _hint = parts.next()?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn memory_root() -> Result<(CgroupVersion, PathBuf), Error> {
    cgroup::memory_root()?.ok_or(Error::NoMemoryController)
}

/// Remove `ebb-*` groups under the memory root whose creating process is dead, killing
/// anything still inside them (only ebb puts processes there). Returns the removed paths.
pub fn sweep_stale() -> Result<Vec<PathBuf>, Error> {
    let (_, root) = memory_root()?;
    let entries = std::fs::read_dir(&root).map_err(|source| Error::Dir {
        path: root.clone(),
        source,
    })?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(creator_pid) else {
            continue;
        };
        if pid_alive(pid) || !entry.path().is_dir() {
            continue;
        }
        let Ok(cg) = MemoryCgroup::open(entry.path()) else {
            continue;
        };
        // Another sweeper may race us; a vanished group is fine.
        match kill_and_remove(&cg, DROP_KILL_TIMEOUT) {
            Ok(()) => removed.push(entry.path()),
            Err(Error::Cgroup(cgroup::Error::NotFound { .. })) => {}
            Err(Error::Dir { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// SIGKILL every member of `cg` until `cgroup.procs` is empty.
///
/// Each pid is pinned with a pidfd and re-checked to still be in the group before the
/// signal, so a pid recycled by an unrelated process in between is never signalled.
fn kill_members(cg: &MemoryCgroup, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    let wanted = cg.path().to_path_buf();
    loop {
        let pids = cg.procs()?;
        if pids.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::KillTimeout {
                path: wanted,
                pids,
                timeout,
            });
        }
        for pid in pids {
            let Some(rpid) = rustix::process::Pid::from_raw(pid as i32) else {
                continue;
            };
            let Ok(pidfd) = rustix::process::pidfd_open(rpid, rustix::process::PidfdFlags::empty())
            else {
                continue; // already gone
            };
            if member_of(pid, &wanted) {
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Is `pid` (pinned by a pidfd held by the caller) in the memory cgroup at `dir`?
fn member_of(pid: u32, dir: &Path) -> bool {
    let Ok(Some(cg)) = cgroup::own_memory_cgroup(pid) else {
        return false;
    };
    cg.path() == dir
}

fn kill_and_remove(cg: &MemoryCgroup, timeout: Duration) -> Result<(), Error> {
    kill_members(cg, timeout)?;
    // rmdir can see EBUSY briefly while dying tasks are still being uncharged.
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(cg.path()) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < timeout => {
                kill_members(cg, timeout)?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Dir {
                    path: cg.path().to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// v2: make sure `root` hands the memory controller to its children.
fn enable_v2_memory(root: &Path) -> Result<(), Error> {
    let control = root.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&control).unwrap_or_default();
    if current.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(&control, "+memory").map_err(|source| Error::Delegation {
        path: control,
        source,
    })
}

fn sanitize(hint: &str) -> String {
    let s: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "sandbox".into() } else { s }
}

impl Sandbox {
    /// Create a new memory cgroup under the memory root with the configured limits,
    /// after sweeping stale `ebb-*` groups (see [`sweep_stale`]).
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        let (version, root) = memory_root()?;
        // A stale group we cannot remove must not stop new work: report it and go on.
        if let Err(e) = sweep_stale() {
            eprintln!("ebb-lab: sweeping stale sandboxes: {e}");
        }
        if version == CgroupVersion::V2 {
            enable_v2_memory(&root)?;
        }
        let name = format!(
            "ebb-{}-{}-{}",
            sanitize(&config.name_hint),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|source| Error::Dir {
            path: path.clone(),
            source,
        })?;
        let procs_file = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup paths have no NUL bytes");
        // From here on, Drop removes the directory whatever fails next.
        let sandbox = Sandbox {
            cgroup: MemoryCgroup::open(&path)?,
            procs_file,
        };
        if config.memory_limit.is_some() {
            sandbox.cgroup.set_limit(config.memory_limit)?;
        }
        if config.swap_limit.is_some() {
            sandbox.cgroup.set_swap_limit(config.swap_limit)?;
        }
        Ok(sandbox)
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        self.cgroup.path()
    }

    /// The group, for reading any of its files.
    pub fn cgroup(&self) -> &MemoryCgroup {
        &self.cgroup
    }

    /// Spawn `cmd` inside the group: the child moves itself in (writes `0` to
    /// `cgroup.procs`) after `fork` and before `exec`, so no user code runs outside it.
    ///
    /// If joining fails, `spawn` fails with that error and the child never execs.
    /// The hook stays on `cmd`: spawn a reused `Command` only through the same sandbox.
    /// (v1 has no `CLONE_INTO_CGROUP`; the pre-exec write works for v1 and v2 alike.)
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let procs = self.procs_file.clone();
        let hook = move || -> io::Result<()> {
            // Runs in the forked child of a possibly multi-threaded parent: only
            // async-signal-safe calls (signal-safety(7)), no allocation, no locks.
            // `procs` was allocated before the fork; open/write/close are raw syscalls,
            // and io::Error::last_os_error only reads errno into an integer variant.
            let data = b"0";
            // SAFETY: `procs` is a valid NUL-terminated path owned by this closure;
            // open(2) is async-signal-safe.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `data` is a live 1-byte buffer and `fd` was just opened by us;
            // write(2) is async-signal-safe.
            let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            let err = io::Error::last_os_error();
            // SAFETY: `fd` is ours and closed exactly once; close(2) is async-signal-safe.
            unsafe { libc::close(fd) };
            if n != 1 {
                return Err(err);
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe syscalls on memory captured
        // before the fork (see the comments inside it), as `pre_exec` requires.
        unsafe { cmd.pre_exec(hook) };
        cmd.spawn()
    }

    /// Move an existing process into the group.
    pub fn add(&self, pid: u32) -> Result<(), Error> {
        Ok(self.cgroup.add_process(pid)?)
    }

    /// Memory charged to the group, in bytes.
    pub fn usage(&self) -> Result<u64, Error> {
        Ok(self.cgroup.usage()?)
    }

    /// Swap used by the group, in bytes.
    pub fn swap_usage(&self) -> Result<u64, Error> {
        Ok(self.cgroup.swap_usage()?)
    }

    /// How often the group hit its limit.
    pub fn failcnt(&self) -> Result<u64, Error> {
        Ok(self.cgroup.failcnt()?)
    }

    /// The group's `memory.stat`.
    pub fn stat(&self) -> Result<MemoryStat, Error> {
        Ok(self.cgroup.stat()?)
    }

    /// Process ids in the group.
    pub fn procs(&self) -> Result<Vec<u32>, Error> {
        Ok(self.cgroup.procs()?)
    }

    /// SIGKILL every member and wait until `cgroup.procs` is empty, at most `timeout`.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), Error> {
        kill_members(&self.cgroup, timeout)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = kill_and_remove(&self.cgroup, DROP_KILL_TIMEOUT) {
            eprintln!("ebb-lab: leaving sandbox behind: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(creator_pid("ebb-test-123-0"), Some(123));
        assert_eq!(creator_pid("ebb-a-b-c-77-12"), Some(77));
        assert_eq!(creator_pid("ebb-77-12"), None);
        assert_eq!(creator_pid("other-x-1-2"), None);
        assert_eq!(creator_pid("ebb-x-y-2"), None);
        assert_eq!(sanitize("a b-c"), "a_b_c");
    }
}
