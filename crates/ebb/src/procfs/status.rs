//! `/proc/PID/status`: identity and memory summary of a process.
//!
//! Lines are `Key:\tvalue`. `Name`, `State`, `Tgid`, `Pid`, `PPid`, `Uid` and `Threads` are
//! required (the kernel always prints them); the memory lines (`VmRSS`, `RssAnon`, ...) are
//! absent for kernel threads and read as 0. Unknown keys are skipped; a known key with a
//! malformed value, or a line without `Key:`, is a [`ParseError`].
//!
//! The task name (`comm`, at most 15 bytes) may contain spaces and colons; the kernel escapes
//! `\n` and `\\` in it, and other bytes come through as they are. It is kept verbatim
//! (after the single tab that follows `Name:`).

use super::{Error, FileKind, ParseError, parse_kb, pid_path, read_parsed, split_key};

/// The parts of `/proc/PID/status` ebb uses. Sizes in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `Name`: the task's command name (`comm`).
    pub name: String,
    /// `State`: the one-letter state (`R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`).
    pub state: char,
    /// `Tgid`: thread group id (the process id).
    pub tgid: u32,
    /// `Pid`: the task (thread) id.
    pub pid: u32,
    /// `PPid`: parent process id (0 for init and kthreadd).
    pub ppid: u32,
    /// `Uid`: real, effective, saved set and filesystem user ids.
    pub uid: [u32; 4],
    /// `VmRSS`: resident set size.
    pub vm_rss: u64,
    /// `RssAnon`: resident anonymous memory.
    pub rss_anon: u64,
    /// `RssFile`: resident file mappings.
    pub rss_file: u64,
    /// `RssShmem`: resident shared memory (shmem, tmpfs, shared anonymous).
    pub rss_shmem: u64,
    /// `VmSwap`: swapped-out anonymous memory.
    pub vm_swap: u64,
    /// `VmSize`: virtual memory size.
    pub vm_size: u64,
    /// `VmHWM`: peak resident set size.
    pub vm_hwm: u64,
    /// `Threads`: number of threads.
    pub threads: u32,
    /// `Kthread`: whether the task is a kernel thread; `None` on kernels without the line
    /// (before 6.10).
    pub kthread: Option<bool>,
}

/// Parses the text of `/proc/PID/status`.
pub fn parse(text: &str) -> Result<Status, ParseError> {
    let kind = FileKind::Status;
    let mut s = Status::default();
    // Required keys seen: name, state, tgid, pid, ppid, uid, threads.
    let mut seen = [false; 7];
    // Split on '\n' only: `lines()` would also eat a '\r' that ends a task name.
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        if line.is_empty() {
            continue;
        }
        let err = |what| ParseError::new(kind, line_no, what, line);
        if let Some(name) = line.strip_prefix("Name:") {
            s.name = name
                .strip_prefix('\t')
                .unwrap_or(name.trim_start())
                .to_owned();
            seen[0] = true;
            continue;
        }
        let (key, value) = split_key(line).ok_or_else(|| err("expected `Key: value`"))?;
        let id = |v: &str| v.parse::<u32>().map_err(|_| err("id is not a u32"));
        let kb = |v: &str| parse_kb(kind, line_no, line, v);
        match key {
            "State" => {
                let mut chars = value.chars();
                let c = chars
                    .next()
                    .filter(char::is_ascii_alphabetic)
                    .ok_or_else(|| err("bad state"))?;
                if !matches!(chars.next(), None | Some(' ')) {
                    return Err(err("bad state"));
                }
                s.state = c;
                seen[1] = true;
            }
            "Tgid" => (s.tgid, seen[2]) = (id(value)?, true),
            "Pid" => (s.pid, seen[3]) = (id(value)?, true),
            "PPid" => (s.ppid, seen[4]) = (id(value)?, true),
            "Uid" => {
                let mut ids = value.split_whitespace();
                for slot in &mut s.uid {
                    *slot = id(ids.next().ok_or_else(|| err("Uid needs four ids"))?)?;
                }
                if ids.next().is_some() {
                    return Err(err("Uid needs four ids"));
                }
                seen[5] = true;
            }
            "Threads" => (s.threads, seen[6]) = (id(value)?, true),
            "Kthread" => {
                s.kthread = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(err("Kthread is not 0 or 1")),
                })
            }
            "VmRSS" => s.vm_rss = kb(value)?,
            "RssAnon" => s.rss_anon = kb(value)?,
            "RssFile" => s.rss_file = kb(value)?,
            "RssShmem" => s.rss_shmem = kb(value)?,
            "VmSwap" => s.vm_swap = kb(value)?,
            "VmSize" => s.vm_size = kb(value)?,
            "VmHWM" => s.vm_hwm = kb(value)?,
            _ => {}
        }
    }
    const NAMES: [&str; 7] = ["Name", "State", "Tgid", "Pid", "PPid", "Uid", "Threads"];
    if let Some((name, _)) = NAMES.iter().zip(seen).find(|(_, seen)| !seen) {
        return Err(ParseError::new(kind, 0, "a required key is missing", name));
    }
    Ok(s)
}

/// Reads `/proc/PID/status`.
pub fn read(pid: u32) -> Result<Status, Error> {
    read_parsed(pid_path(pid, "status"), parse)
}

/// Reads `/proc/self/status`.
pub fn read_self() -> Result<Status, Error> {
    read_parsed("/proc/self/status", parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `cat /proc/self/status` on the lab machine (Linux 6.18), abridged.
    const SAMPLE: &str = "Name:\tcat
Umask:\t0022
State:\tR (running)
Tgid:\t3546
Ngid:\t0
Pid:\t3546
PPid:\t3543
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t 
NStgid:\t3546
Kthread:\t0
VmPeak:\t    3060 kB
VmSize:\t    3060 kB
VmLck:\t       0 kB
VmHWM:\t    1752 kB
VmRSS:\t    1752 kB
RssAnon:\t     116 kB
RssFile:\t    1636 kB
RssShmem:\t       0 kB
VmSwap:\t       0 kB
THP_enabled:\t1
Threads:\t1
SigQ:\t0/96364
Cpus_allowed_list:\t0-1
voluntary_ctxt_switches:\t0
";

    /// `cat /proc/2/status` (kthreadd), abridged: no memory lines.
    const KTHREAD: &str = "Name:\tkthreadd
State:\tS (sleeping)
Tgid:\t2
Pid:\t2
PPid:\t0
Uid:\t0\t0\t0\t0
Kthread:\t1
Threads:\t1
";

    #[test]
    fn parses_real_sample() {
        let s = parse(SAMPLE).unwrap();
        assert_eq!(s.name, "cat");
        assert_eq!(s.state, 'R');
        assert_eq!((s.tgid, s.pid, s.ppid), (3546, 3546, 3543));
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.vm_rss, 1752 * 1024);
        assert_eq!(s.rss_anon, 116 * 1024);
        assert_eq!(s.rss_file, 1636 * 1024);
        assert_eq!(s.vm_size, 3060 * 1024);
        assert_eq!(s.vm_hwm, 1752 * 1024);
        assert_eq!(s.threads, 1);
        assert_eq!(s.kthread, Some(false));
    }

    #[test]
    fn kernel_thread_has_no_memory_lines() {
        let s = parse(KTHREAD).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.vm_rss, s.kthread),
            ('S', 0, 0, Some(true))
        );
    }

    #[test]
    fn odd_names() {
        let with = |name: &str| parse(&KTHREAD.replacen("kthreadd", name, 1)).unwrap().name;
        assert_eq!(with("my prog: 2 "), "my prog: 2 ");
        assert_eq!(with("a\\nb"), "a\\nb");
        assert_eq!(with("\u{fffd}x"), "\u{fffd}x");
        assert_eq!(with(""), "");
    }

    #[test]
    fn edge_cases() {
        let e = parse("").unwrap_err();
        assert_eq!((e.line, e.text.as_str()), (0, "Name"));
        let e = parse(&KTHREAD.replace("Threads:\t1\n", "")).unwrap_err();
        assert_eq!((e.line, e.text.as_str()), (0, "Threads"));
        for (from, to) in [
            ("Pid:\t2", "Pid:\t-2"),
            ("Pid:\t2", "Pid:\t99999999999"),
            ("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0"),
            ("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0\t0\t0"),
            ("State:\tS (sleeping)", "State:\t"),
            ("State:\tS (sleeping)", "State:\tSS"),
            ("Kthread:\t1", "Kthread:\tyes"),
            ("Threads:\t1", "Threads:\t1\nVmRSS:\t18014398509481984 kB"),
            ("Threads:\t1", "Threads:\t1\nVmRSS:\t12"),
            ("Threads:\t1", "Threads:\t1\ngarbage"),
        ] {
            let text = KTHREAD.replacen(from, to, 1);
            let e = parse(&text).unwrap_err();
            assert_eq!(e.kind, FileKind::Status);
            assert!(e.line > 0, "{to:?}");
        }
    }

    #[test]
    fn live_self_and_missing_pid() {
        let me = read_self().unwrap();
        assert_eq!(me.tgid, std::process::id());
        assert!(me.vm_rss > 0 && me.threads >= 1);
        assert_ne!(me.kthread, Some(true));
        assert_eq!(read(std::process::id()).unwrap().tgid, me.tgid);
        assert!(matches!(
            read(4_194_311),
            Err(Error::NoProcess { pid: 4_194_311 })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_status_like_lines(text in "([A-Za-z]{1,8}:[\t ]{0,2}[0-9a-zA-Z() ]{0,24}( kB)?\n){0,12}") {
            let _ = parse(&text);
        }

        #[test]
        fn name_and_ids_round_trip(name in "[^\n]{0,15}", pid: u32, ppid: u32, uid: [u32; 4], rss in 0..=u64::MAX / 1024) {
            let text = format!(
                "Name:\t{name}\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t{ppid}\nUid:\t{}\t{}\t{}\t{}\nVmRSS:\t{rss:>8} kB\nThreads:\t3\n",
                uid[0], uid[1], uid[2], uid[3]
            );
            let s = parse(&text).unwrap();
            prop_assert_eq!(s.name, name);
            prop_assert_eq!((s.pid, s.ppid, s.uid, s.vm_rss, s.threads), (pid, ppid, uid, rss * 1024, 3));
        }
    }
}
