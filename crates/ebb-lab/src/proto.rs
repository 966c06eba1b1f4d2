//! The lab's child programs (the hog, the app, the heap child, the cache worker, ebbd):
//! finding their binaries, and the parent side of the line protocol the workloads speak —
//! one command per line on the child's stdin, one reply line on its stdout.

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, ExitStatus};

/// What one command got back.
pub(crate) enum Answer {
    /// The reply line (with its newline).
    Line(String),
    /// No reply: the child is gone (EOF or a broken pipe), and this is how it ended.
    Died(ExitStatus),
}

/// Sends `command` and reads one reply line. A child that died is reaped and its exit
/// status returned, so callers can say how it ended (SIGKILL is usually the OOM killer).
pub(crate) fn exchange(
    child: &mut Child,
    stdin: &mut ChildStdin,
    stdout: &mut BufReader<ChildStdout>,
    command: &str,
) -> io::Result<Answer> {
    let sent = writeln!(stdin, "{command}").and_then(|()| stdin.flush());
    let mut reply = String::new();
    match sent.and_then(|()| stdout.read_line(&mut reply)) {
        Ok(n) if n > 0 => Ok(Answer::Line(reply)),
        _ => Ok(Answer::Died(child.wait()?)),
    }
}

/// Finds the binary `name`: the path in `$env_var` if set, else `name` next to the current
/// executable or in its parent directory (tests and examples run one level below the
/// binaries, in `target/<profile>/deps` or `examples`). On failure, the paths searched.
pub(crate) fn locate(env_var: &str, name: &str) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let mut searched = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate);
        }
    }
    Err(searched)
}
