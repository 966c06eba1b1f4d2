//! The Unix socket: `mark` and `status`, one JSON object per line each way.
//!
//! Who may connect is the socket file's mode (`socket.mode`, default 0o660); who may mark a
//! process is checked per request from the peer's credentials (SO_PEERCRED, taken by the
//! kernel at connect time): root, or the target's owner (its real or effective uid). A target
//! outside `scope.cgroup` is refused. The mark is keyed by the target's start time, so it
//! never applies to a later process that reuses the pid.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::metrics::Stats;
use crate::ranks::{Band, Mark};
use crate::scan::read_stat;

/// Marks in force: pid → (start time, band).
pub type Marks = Arc<Mutex<HashMap<u32, (u64, Band)>>>;

/// The socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding failed.
    #[error("binding the socket {path}: {source}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A non-socket file is in the way.
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotSocket {
        /// The path.
        path: PathBuf,
    },
}

/// What a request needs from the daemon.
#[derive(Clone)]
pub struct Context {
    /// The marks table.
    pub marks: Marks,
    /// The counters (for `status`).
    pub stats: Arc<Stats>,
    /// Memory cgroup whose members alone may be marked, if scoped.
    pub scope: Option<ebb::cgroup::MemoryCgroup>,
    /// Wakes the policy loop after a mark.
    pub wake: Sender<()>,
}

/// The socket server thread.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

/// Handles one request line from a peer with uid `peer_uid`.
pub fn handle(line: &str, peer_uid: u32, ctx: &Context) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(format!("not a JSON object: {e}")),
    };
    match req.get("cmd").and_then(Value::as_str) {
        Some("status") => ctx.stats.status_json(),
        Some("mark") => {
            let Some(pid) = req
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
            else {
                return error("mark needs \"pid\": a process id");
            };
            let Some(band) = req.get("band").and_then(Value::as_str) else {
                return error(
                    "mark needs \"band\": foreground, visible, perceptible, cached or normal",
                );
            };
            let mark: Mark = match band.parse() {
                Ok(m) => m,
                Err(e) => return error(e),
            };
            mark_process(pid, mark, peer_uid, ctx)
        }
        Some(other) => error(format!("unknown cmd {other:?}: expected mark or status")),
        None => error("request needs \"cmd\": mark or status"),
    }
}

fn mark_process(pid: u32, mark: Mark, peer_uid: u32, ctx: &Context) -> Value {
    // Hold the process by pidfd while checking who it is, so the checks are about it.
    let process = match ebb::Process::open(pid) {
        Ok(p) => p,
        Err(_) => return error(format!("no process {pid}")),
    };
    let (Ok(status), Some(stat)) = (process.status(), read_stat(pid)) else {
        return error(format!("no process {pid}"));
    };
    if !process.is_alive() {
        return error(format!("no process {pid}"));
    }
    if peer_uid != 0 && status.uid[0] != peer_uid && status.uid[1] != peer_uid {
        return error(format!(
            "permission denied: process {pid} belongs to uid {}, and only root or its owner may mark it",
            status.uid[0]
        ));
    }
    if let Some(scope) = &ctx.scope {
        let members = crate::scan::procs_recursive(scope.path());
        if !members.contains(&pid) {
            return error(format!(
                "process {pid} is outside the managed scope {}",
                scope.path().display()
            ));
        }
    }
    {
        let mut marks = lock(&ctx.marks);
        match mark.band() {
            Some(band) => {
                marks.insert(pid, (stat.start_time, band));
            }
            None => {
                marks.remove(&pid);
            }
        }
    }
    tracing::info!(pid, band = mark.as_str(), peer_uid, "marked");
    let _ = ctx.wake.send(());
    json!({"ok": true})
}

fn serve_conn(stream: UnixStream, ctx: Context) {
    let peer_uid = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) => cred.uid.as_raw(),
        Err(_) => return,
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reader = BufReader::new(stream);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = handle(&line, peer_uid, &ctx);
        if writeln!(writer, "{reply}")
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

impl Server {
    /// Binds `path` with `mode` and serves it from a thread.
    pub fn start(path: &Path, mode: u32, ctx: Context) -> Result<Server, Error> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(Error::NotSocket {
                    path: path.to_path_buf(),
                });
            }
            // A socket left by an earlier run: nobody answers on it any more?
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Bind {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another ebbd is serving it",
                    ),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| Error::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ebbd-socket".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let ctx = ctx.clone();
                    let _ = std::thread::Builder::new()
                        .name("ebbd-conn".into())
                        .spawn(move || serve_conn(conn, ctx));
                }
            })
            .map_err(bind_err)?;
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
