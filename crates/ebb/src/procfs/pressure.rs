//! Pressure stall information (PSI): `/proc/pressure/memory` and cgroup v2 `memory.pressure`.
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! `some` is the share of wall time in which at least one task stalled on memory, `full` the
//! share in which all non-idle tasks did; `avgN` are running averages over N seconds, in
//! percent, and `total` is the cumulative stall time in microseconds
//! (`Documentation/accounting/psi.rst`).
//!
//! The `some` line is required; `full` is optional (the system-wide `cpu` file had none
//! before Linux 5.13). Unknown `key=value` pairs are skipped; a missing one of the four
//! fields, a repeated line, an unknown line, or an average that is not a finite number in
//! 0..=100 is a [`ParseError`].

use std::path::Path;

use super::{Error, FileKind, ParseError, read_parsed};

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PressureLine {
    /// Percent of time stalled, averaged over the last 10 s.
    pub avg10: f64,
    /// Percent of time stalled, averaged over the last 60 s.
    pub avg60: f64,
    /// Percent of time stalled, averaged over the last 300 s.
    pub avg300: f64,
    /// Total stall time since boot (or cgroup creation), in microseconds.
    pub total_us: u64,
}

/// A parsed pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Pressure {
    /// Time in which some tasks stalled.
    pub some: PressureLine,
    /// Time in which all non-idle tasks stalled, if the file has the line.
    pub full: Option<PressureLine>,
}

fn parse_line(line_no: usize, line: &str, fields: &str) -> Result<PressureLine, ParseError> {
    let err = |what| ParseError::new(FileKind::Pressure, line_no, what, line);
    let avg = |v: &str| {
        let x: f64 = v.parse().map_err(|_| err("average is not a number"))?;
        if x.is_finite() && (0.0..=100.0).contains(&x) {
            Ok(x)
        } else {
            Err(err("average is not a percentage in 0..=100"))
        }
    };
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for pair in fields.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| err("expected `key=value`"))?;
        match key {
            "avg10" => avg10 = Some(avg(value)?),
            "avg60" => avg60 = Some(avg(value)?),
            "avg300" => avg300 = Some(avg(value)?),
            "total" => {
                total = Some(
                    value
                        .parse()
                        .map_err(|_| err("total is not an unsigned integer"))?,
                )
            }
            _ => {}
        }
    }
    match (avg10, avg60, avg300, total) {
        (Some(avg10), Some(avg60), Some(avg300), Some(total_us)) => Ok(PressureLine {
            avg10,
            avg60,
            avg300,
            total_us,
        }),
        _ => Err(err("needs avg10, avg60, avg300 and total")),
    }
}

/// Parses the text of a pressure file.
pub fn parse(text: &str) -> Result<Pressure, ParseError> {
    let (mut some, mut full) = (None, None);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |what| ParseError::new(FileKind::Pressure, line_no, what, line);
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let (kind, fields) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            _ => return Err(err("line is neither `some` nor `full`")),
        };
        if slot.is_some() {
            return Err(err("repeated line"));
        }
        *slot = Some(parse_line(line_no, line, fields)?);
    }
    let some =
        some.ok_or_else(|| ParseError::new(FileKind::Pressure, 0, "no `some` line", text))?;
    Ok(Pressure { some, full })
}

/// Reads a pressure file: `/proc/pressure/{memory,io,cpu}` or a cgroup v2 `*.pressure`.
pub fn read_path(path: impl AsRef<Path>) -> Result<Pressure, Error> {
    read_parsed(path, parse)
}

/// Reads `/proc/pressure/memory` (needs a kernel with `CONFIG_PSI`, not booted `psi=0`).
pub fn read_memory() -> Result<Pressure, Error> {
    read_path("/proc/pressure/memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `cat /proc/pressure/memory` on the lab machine (idle).
    const IDLE: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
";

    /// Shape of a busy cgroup's `memory.pressure` (values from psi.rst's example style).
    const BUSY: &str = "some avg10=12.50 avg60=3.21 avg300=0.77 total=5612345
full avg10=100.00 avg60=1.00 avg300=0.10 total=1234567
";

    #[test]
    fn parses_samples() {
        let p = parse(IDLE).unwrap();
        assert_eq!(
            p,
            Pressure {
                some: PressureLine::default(),
                full: Some(PressureLine::default())
            }
        );
        let p = parse(BUSY).unwrap();
        assert_eq!(p.some.avg10, 12.5);
        assert_eq!(p.some.avg300, 0.77);
        assert_eq!(p.some.total_us, 5612345);
        assert_eq!(p.full.map(|f| f.avg10), Some(100.0));
    }

    #[test]
    fn full_is_optional_and_unknown_pairs_skipped() {
        let p = parse("some avg10=1.00 avg60=2.00 avg300=3.00 total=4 avg1=9\n").unwrap();
        assert_eq!(p.full, None);
        assert_eq!(p.some.total_us, 4);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse("").unwrap_err().line, 0);
        assert_eq!(parse(&IDLE.replace("some", "full")).unwrap_err().line, 2);
        let line = |s: &str| format!("some {s}\n");
        for bad in [
            "avg10=NaN avg60=0.00 avg300=0.00 total=0",
            "avg10=inf avg60=0.00 avg300=0.00 total=0",
            "avg10=-1.00 avg60=0.00 avg300=0.00 total=0",
            "avg10=100.01 avg60=0.00 avg300=0.00 total=0",
            "avg10=0.00 avg60=0.00 avg300=0.00",
            "avg10=0.00 avg60=0.00 avg300=0.00 total=-1",
            "avg10=0.00 avg60=0.00 avg300=0.00 total=18446744073709551616",
            "avg10=0.00 avg60 avg300=0.00 total=0",
            "",
        ] {
            let e = parse(&line(bad)).unwrap_err();
            assert_eq!((e.kind, e.line), (FileKind::Pressure, 1), "{bad}");
        }
        assert_eq!(
            parse(&format!(
                "{IDLE}some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
            ))
            .unwrap_err()
            .line,
            3
        );
        assert_eq!(parse("partial avg10=0.00\n").unwrap_err().line, 1);
    }

    #[test]
    fn live_and_fake_cgroup_file() {
        let p = read_memory().unwrap();
        assert!(p.full.is_some());
        // No v2 memory controller on the lab machine: a fake cgroup v2 `memory.pressure`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.pressure");
        std::fs::write(&path, BUSY).unwrap();
        assert_eq!(read_path(&path).unwrap(), parse(BUSY).unwrap());
        match read_path(dir.path().join("missing")) {
            Err(Error::Io { path: p, .. }) => assert!(p.ends_with("missing")),
            other => panic!("expected Io, got {other:?}"),
        }
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(read_path(&path), Err(Error::Parse { .. })));
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_psi_like_lines(text in "((some|full)( [a-z0-9]{1,6}=[-+0-9.eEnaif]{0,8}){0,5}\n){0,3}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips(a in 0u32..=10000, b in 0u32..=10000, c in 0u32..=10000, total: u64, full: bool) {
            let pct = |x: u32| format!("{}.{:02}", x / 100, x % 100);
            let fields = format!("avg10={} avg60={} avg300={} total={total}", pct(a), pct(b), pct(c));
            let mut text = format!("some {fields}\n");
            if full {
                text += &format!("full {fields}\n");
            }
            let p = parse(&text).unwrap();
            let expect = PressureLine { avg10: f64::from(a) / 100.0, avg60: f64::from(b) / 100.0, avg300: f64::from(c) / 100.0, total_us: total };
            prop_assert!((p.some.avg10 - expect.avg10).abs() < 1e-9);
            prop_assert!((p.some.avg60 - expect.avg60).abs() < 1e-9);
            prop_assert!((p.some.avg300 - expect.avg300).abs() < 1e-9);
            prop_assert_eq!(p.some.total_us, total);
            prop_assert_eq!(p.full.is_some(), full);
        }
    }
}
