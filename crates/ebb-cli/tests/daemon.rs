//! `ebb mark` and `ebb daemon status` against a real ebbd (the binary built beside `ebb`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ebb_lab::{Sandbox, SandboxConfig};

fn ebbd_exe() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ebb")).with_file_name("ebbd");
    assert!(
        exe.is_file(),
        "{} missing: build the workspace bins first (scripts/test does)",
        exe.display()
    );
    exe
}

fn ebb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn mark_and_daemon_status_talk_to_ebbd() {
    let sb = Sandbox::new(SandboxConfig {
        name_hint: "cli_ebbd".into(),
        ..SandboxConfig::default()
    })
    .unwrap();
    let mut child = sb.spawn(Command::new("sleep").arg("600")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ebbd.sock");
    let config = dir.path().join("ebbd.toml");
    std::fs::write(
        &config,
        format!(
            "[scope]\ncgroup = {:?}\n[socket]\npath = {:?}\n[ranks]\nscan_interval_ms = 20\n[kill]\nenabled = false\n",
            sb.path().display().to_string(),
            socket.display().to_string()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(ebbd_exe())
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ebbd never opened its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = socket.to_str().unwrap();
    let pid = child.id().to_string();
    let out = ebb(&["mark", &pid, "cached", "--socket", sock]);
    assert!(out.status.success(), "{out:?}");
    let t0 = Instant::now();
    let status = loop {
        let out = ebb(&["daemon", "status", "--json", "--socket", sock]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["processes"]["cached"] == 1 || t0.elapsed() > Duration::from_secs(5) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["processes"]["cached"], 1, "{status}");
    // `sleep` is too small to compact: the throttle says so.
    let out = ebb(&["daemon", "status", "--socket", sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cached 1"), "{text}");
    // Refusals exit 1 with the daemon's reason.
    let out = ebb(&["mark", "1", "cached", "--socket", sock]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the managed scope"));
    // No daemon: says so.
    let out = ebb(&["daemon", "status", "--socket", "/nonexistent.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is ebbd running"));
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    child.kill().unwrap();
    child.wait().unwrap();
}
