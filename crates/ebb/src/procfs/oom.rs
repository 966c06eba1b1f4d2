//! The OOM killer's view of a process: `/proc/PID/oom_score_adj` and `/proc/PID/oom_score`.
//!
//! `oom_score_adj` (-1000..=1000) is added to a process's badness when the OOM killer picks
//! a victim; -1000 exempts it, 1000 makes it the first choice. Lowering it below the value
//! the process started with needs `CAP_SYS_RESOURCE`. `oom_score` (0..=2000 since Linux
//! 5.9) is the resulting badness. See `proc_pid_oom_score_adj(5)`, `mm/oom_kill.c`.
//!
//! Both files hold one decimal integer and a newline; surrounding whitespace is ignored,
//! anything else is a [`ParseError`].

use super::{Error, FileKind, ParseError, io_error, pid_path, read_parsed};

/// Smallest `oom_score_adj` (never killed by the OOM killer).
pub const OOM_SCORE_ADJ_MIN: i16 = -1000;
/// Largest `oom_score_adj` (killed first).
pub const OOM_SCORE_ADJ_MAX: i16 = 1000;

/// Parses the text of `/proc/PID/oom_score_adj`: an integer in -1000..=1000.
pub fn parse_oom_score_adj(text: &str) -> Result<i16, ParseError> {
    let kind = FileKind::OomScoreAdj;
    let value = text.trim();
    let n: i16 = value
        .parse()
        .map_err(|_| ParseError::new(kind, 1, "not an integer in -1000..=1000", value))?;
    if !(OOM_SCORE_ADJ_MIN..=OOM_SCORE_ADJ_MAX).contains(&n) {
        return Err(ParseError::new(
            kind,
            1,
            "not an integer in -1000..=1000",
            value,
        ));
    }
    Ok(n)
}

/// Parses the text of `/proc/PID/oom_score`: a non-negative integer.
pub fn parse_oom_score(text: &str) -> Result<u32, ParseError> {
    let value = text.trim();
    value
        .parse()
        .map_err(|_| ParseError::new(FileKind::OomScore, 1, "not an unsigned integer", value))
}

/// Reads `/proc/PID/oom_score_adj`.
pub fn read_oom_score_adj(pid: u32) -> Result<i16, Error> {
    read_parsed(pid_path(pid, "oom_score_adj"), parse_oom_score_adj)
}

/// Reads `/proc/PID/oom_score`.
pub fn read_oom_score(pid: u32) -> Result<u32, Error> {
    read_parsed(pid_path(pid, "oom_score"), parse_oom_score)
}

/// Writes `/proc/PID/oom_score_adj`.
///
/// A value outside -1000..=1000 is [`Error::OutOfRange`] and nothing is written. Lowering
/// the value without `CAP_SYS_RESOURCE` fails with EACCES ([`Error::Io`]).
pub fn write_oom_score_adj(pid: u32, value: i16) -> Result<(), Error> {
    if !(OOM_SCORE_ADJ_MIN..=OOM_SCORE_ADJ_MAX).contains(&value) {
        return Err(Error::OutOfRange {
            name: "oom_score_adj",
            value: value.into(),
            min: OOM_SCORE_ADJ_MIN.into(),
            max: OOM_SCORE_ADJ_MAX.into(),
        });
    }
    let path = pid_path(pid, "oom_score_adj");
    std::fs::write(&path, format!("{value}\n")).map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Child, Command};

    #[test]
    fn parses() {
        assert_eq!(parse_oom_score_adj("0\n"), Ok(0));
        assert_eq!(parse_oom_score_adj("-1000\n"), Ok(-1000));
        assert_eq!(parse_oom_score_adj(" 1000 "), Ok(1000));
        assert_eq!(parse_oom_score("666\n"), Ok(666));
        for bad in [
            "", "\n", "1001", "-1001", "40000", "1.5", "0x10", "1 2", "--1",
        ] {
            let e = parse_oom_score_adj(bad).unwrap_err();
            assert_eq!((e.kind, e.line), (FileKind::OomScoreAdj, 1), "{bad:?}");
        }
        for bad in ["", "-1", "4294967296", "x"] {
            assert_eq!(
                parse_oom_score(bad).unwrap_err().kind,
                FileKind::OomScore,
                "{bad:?}"
            );
        }
    }

    /// A child this test started, killed and reaped on drop (also when the test fails).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn live_read_write_on_own_child() {
        let me = std::process::id();
        assert!((-1000..=1000).contains(&read_oom_score_adj(me).unwrap()));
        assert!(read_oom_score(me).unwrap() <= 2000);

        let child = Reaped(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.0.id();
        write_oom_score_adj(pid, 500).unwrap();
        assert_eq!(read_oom_score_adj(pid).unwrap(), 500);
        assert!(read_oom_score(pid).unwrap() >= 500);
        assert!(matches!(
            write_oom_score_adj(pid, 1001),
            Err(Error::OutOfRange { value: 1001, .. })
        ));
        assert_eq!(read_oom_score_adj(pid).unwrap(), 500, "nothing written");
        drop(child);
        assert!(matches!(
            read_oom_score_adj(pid),
            Err(Error::NoProcess { .. })
        ));
        assert!(matches!(
            write_oom_score_adj(pid, 0),
            Err(Error::NoProcess { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,40}") {
            let _ = parse_oom_score_adj(&text);
            let _ = parse_oom_score(&text);
        }

        #[test]
        fn round_trips(v in -1000i16..=1000) {
            prop_assert_eq!(parse_oom_score_adj(&format!("{v}\n")), Ok(v));
        }

        #[test]
        fn rejects_out_of_range(v in any::<i64>().prop_filter("outside", |v| !(-1000..=1000).contains(v))) {
            prop_assert!(parse_oom_score_adj(&v.to_string()).is_err());
        }
    }
}
