//! Shared by the ebbd integration tests: a real `ebbd` subprocess scoped to a Sandbox.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ebb_lab::{Sandbox, SandboxConfig};
use ebbd::client::Client;
use serde_json::Value;

/// A running `ebbd` subprocess; SIGTERM and reaped on drop.
pub struct Ebbd {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// The config text: `[scope]` = the sandbox, `[socket]` in `dir`, then `extra` (other tables).
pub fn config_text(scope: &Path, socket: &Path, extra: &str) -> String {
    format!(
        "[scope]\ncgroup = {:?}\n[socket]\npath = {:?}\n{extra}\n",
        scope.display().to_string(),
        socket.display().to_string()
    )
}

impl Ebbd {
    /// Starts ebbd managing `sandbox` with `extra` config and extra `args`; waits for its
    /// socket.
    pub fn start(sandbox: &Sandbox, extra: &str, args: &[&str]) -> Ebbd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ebbd.sock");
        let config = dir.path().join("ebbd.toml");
        let log = dir.path().join("ebbd.log");
        std::fs::write(&config, config_text(sandbox.path(), &socket, extra)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ebbd"))
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .args(args)
            .env("EBBD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut e = Ebbd {
            child: Some(child),
            dir,
            socket,
            config,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(&e.socket).is_err() {
            if let Some(status) = e.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ebbd exited {status}: {}", e.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "ebbd socket never appeared: {}",
                e.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        e
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    pub fn status(&self) -> Value {
        self.client().status().unwrap()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// JSON log lines whose message is `msg`.
    pub fn log_events(&self, msg: &str) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == msg)
            .collect()
    }

    /// Waits until `cond(status)` or `timeout`; returns the last status.
    pub fn wait_status(&self, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if cond(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ebbd did not exit on SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ebbd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- ebbd log ----\n{}", self.log_text());
        }
    }
}

pub fn sandbox(hint: &str) -> Sandbox {
    Sandbox::new(SandboxConfig {
        name_hint: hint.into(),
        memory_limit: None,
        swap_limit: None,
    })
    .unwrap()
}

pub fn set_adj(pid: u32, adj: i16) {
    ebb::procfs::oom::write_oom_score_adj(pid, adj).unwrap();
}

pub fn mem(pid: u32) -> ebb::procfs::smaps::SmapsRollup {
    ebb::procfs::smaps::read_rollup(pid).unwrap()
}

pub fn zram() -> ebb_lab::ZramSwap {
    ebb_lab::ZramSwap::shared(2 << 30, "lz4").unwrap()
}

pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}
