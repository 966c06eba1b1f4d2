//! The parent side of the line protocol the lab's child workloads speak (the hog, the app,
//! the heap child): one command per line on the child's stdin, one reply line on its stdout.

use std::io::{self, BufRead, BufReader, Write};
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
