//! `/proc/vmstat`: system-wide virtual memory event counters and page counts.
//!
//! Every line is `key value` with a decimal value (pages or events, not bytes). All keys are
//! kept in file order and reachable with [`Vmstat::get`]; the ones ebb watches also have a
//! named field (0 when the kernel does not print the key, e.g. without swap support or THP).
//! Any malformed line is a [`ParseError`]; an empty file is one too.
//!
//! Most keys are monotonic event counters (`pgfault`, `pswpout`, ...): compare two readings
//! with [`Vmstat::delta`]. The `nr_*` keys are gauges, for which a delta is meaningless.

use super::{Error, FileKind, ParseError, read_parsed};

macro_rules! vmstat_fields {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// The counters of `/proc/vmstat` ebb watches, plus every key via [`Vmstat::get`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Vmstat {
            $($(#[$doc])* pub $field: u64,)*
            /// Every key in file order, with its value.
            entries: Vec<(String, u64)>,
        }

        impl Vmstat {
            fn field(&mut self, key: &str) -> Option<&mut u64> {
                match key {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

vmstat_fields! {
    /// `pswpin`: pages swapped in.
    pswpin,
    /// `pswpout`: pages swapped out.
    pswpout,
    /// `pglazyfree`: pages marked lazily freeable with MADV_FREE.
    pglazyfree,
    /// `pglazyfreed`: lazily freed pages the kernel actually discarded.
    pglazyfreed,
    /// `thp_split_pmd`: huge page mappings split into base pages (e.g. by a partial
    /// MADV_FREE or MADV_DONTNEED inside a THP).
    thp_split_pmd,
    /// `thp_collapse_alloc`: huge pages assembled by khugepaged or MADV_COLLAPSE.
    thp_collapse_alloc,
    /// `thp_fault_alloc`: huge pages allocated at fault time.
    thp_fault_alloc,
    /// `workingset_refault_anon`: evicted anonymous pages faulted back soon after.
    workingset_refault_anon,
    /// `workingset_refault_file`: evicted file pages faulted back soon after.
    workingset_refault_file,
    /// `pgfault`: page faults.
    pgfault,
    /// `pgmajfault`: page faults that needed I/O.
    pgmajfault,
    /// `oom_kill`: processes killed by the OOM killer.
    oom_kill,
}

impl Vmstat {
    /// Builds the value from (key, value) pairs in file order; a repeated key keeps its
    /// last value.
    fn from_entries(pairs: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut v = Self::default();
        for (key, value) in pairs {
            if let Some(field) = v.field(&key) {
                *field = value;
            }
            match v.entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => v.entries.push((key, value)),
            }
        }
        v
    }

    /// The value of any key, e.g. `"nr_free_pages"`.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.entries.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }

    /// Every key with its value, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Pages reclaimed, by every reclaimer: the sum of `pgsteal_*` (`kswapd`, `direct`,
    /// `khugepaged`, `proactive`, and the per-zone keys of old kernels), saturating.
    ///
    /// `pgsteal_anon` and `pgsteal_file` (Linux 5.8+) split the same pages by type rather than
    /// by reclaimer, so they are left out: adding them would count every page twice.
    pub fn pgsteal_total(&self) -> u64 {
        self.sum_prefix("pgsteal_", &["pgsteal_anon", "pgsteal_file"])
    }

    /// Direct-reclaim stalls: the sum of `allocstall_*` (and `allocstall` of old kernels),
    /// saturating.
    pub fn allocstall_total(&self) -> u64 {
        self.get("allocstall")
            .unwrap_or(0)
            .saturating_add(self.sum_prefix("allocstall_", &[]))
    }

    fn sum_prefix(&self, prefix: &str, except: &[&str]) -> u64 {
        self.entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && !except.contains(&k.as_str()))
            .fold(0u64, |sum, &(_, v)| sum.saturating_add(v))
    }

    /// What changed since `earlier`: each key of `self` minus the same key of `earlier`
    /// (0 when absent there), saturating at 0 so a gauge that shrank, or a counter reset,
    /// reads 0 rather than wrapping.
    pub fn delta(&self, earlier: &Vmstat) -> Vmstat {
        Self::from_entries(
            self.entries
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(earlier.get(k).unwrap_or(0)))),
        )
    }
}

/// Parses the text of `/proc/vmstat`.
pub fn parse(text: &str) -> Result<Vmstat, ParseError> {
    let kind = FileKind::Vmstat;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |what| ParseError::new(kind, line_no, what, line);
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let value = words.next().ok_or_else(|| err("missing value"))?;
        if words.next().is_some() {
            return Err(err("expected `key value`"));
        }
        let value: u64 = value
            .parse()
            .map_err(|_| err("value is not an unsigned integer"))?;
        pairs.push((key.to_owned(), value));
    }
    if pairs.is_empty() {
        return Err(ParseError::new(kind, 0, "empty", text));
    }
    Ok(Vmstat::from_entries(pairs))
}

/// Reads `/proc/vmstat`.
pub fn read() -> Result<Vmstat, Error> {
    read_parsed("/proc/vmstat", parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `cat /proc/vmstat` on the lab machine (Linux 6.18), abridged; a few values edited to be
    /// non-zero.
    const SAMPLE: &str = "\
nr_free_pages 886556
nr_zone_inactive_anon 933
workingset_refault_anon 0
workingset_refault_file 37214
nr_anon_pages 1857
pswpin 3
pswpout 5
allocstall_dma 0
allocstall_dma32 1
allocstall_normal 2
allocstall_movable 0
allocstall_device 0
pglazyfree 12288
pgfault 1584954
pgmajfault 431
pglazyfreed 6144
pgsteal_kswapd 100
pgsteal_direct 20
pgsteal_khugepaged 3
pgsteal_proactive 0
pgscan_kswapd 200
pgsteal_anon 23
pgsteal_file 100
oom_kill 1
thp_fault_alloc 7
thp_collapse_alloc 2
thp_split_pmd 9
nr_unstable 0
";

    #[test]
    fn parses_real_sample() {
        let v = parse(SAMPLE).unwrap();
        assert_eq!((v.pswpin, v.pswpout), (3, 5));
        assert_eq!((v.pglazyfree, v.pglazyfreed), (12288, 6144));
        assert_eq!((v.pgfault, v.pgmajfault), (1584954, 431));
        assert_eq!(v.workingset_refault_file, 37214);
        assert_eq!(
            (v.thp_fault_alloc, v.thp_collapse_alloc, v.thp_split_pmd),
            (7, 2, 9)
        );
        assert_eq!(v.oom_kill, 1);
        assert_eq!(v.get("nr_free_pages"), Some(886556));
        assert_eq!(v.get("nope"), None);
        assert_eq!(v.entries().count(), 28);
    }

    #[test]
    fn totals_do_not_double_count() {
        let v = parse(SAMPLE).unwrap();
        assert_eq!(v.pgsteal_total(), 123, "anon/file split excluded");
        assert_eq!(v.allocstall_total(), 3);
        let old = parse("allocstall 4\npgsteal_kswapd_normal 5\npgsteal_direct_dma32 6\n").unwrap();
        assert_eq!((old.allocstall_total(), old.pgsteal_total()), (4, 11));
        let huge = parse(&format!(
            "pgsteal_kswapd {0}\npgsteal_direct {0}\n",
            u64::MAX
        ))
        .unwrap();
        assert_eq!(huge.pgsteal_total(), u64::MAX);
    }

    #[test]
    fn delta_saturates() {
        let before = parse("pgfault 10\nnr_free_pages 100\noom_kill 0\n").unwrap();
        let after = parse("pgfault 15\nnr_free_pages 90\noom_kill 1\npswpout 4\n").unwrap();
        let d = after.delta(&before);
        assert_eq!((d.pgfault, d.oom_kill, d.pswpout), (5, 1, 4));
        assert_eq!(d.get("nr_free_pages"), Some(0));
        assert_eq!(d.entries().count(), 4);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse("").unwrap_err().line, 0);
        assert_eq!(parse("\n \n").unwrap_err().line, 0);
        for (text, line) in [
            ("pgfault\n", 1),
            ("pgfault 1\npgfault -1\n", 2),
            ("pgfault 1 2\n", 1),
            ("pgfault 18446744073709551616\n", 1),
            ("pgfault 0x10\n", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.kind, e.line), (FileKind::Vmstat, line), "{text:?}");
        }
        assert_eq!(
            parse("pgfault 18446744073709551615").unwrap().pgfault,
            u64::MAX
        );
    }

    #[test]
    fn live() {
        let a = read().unwrap();
        assert!(a.pgfault > 0);
        assert!(a.get("nr_free_pages").is_some());
        let b = read().unwrap();
        assert!(b.delta(&a).pgfault < b.pgfault);
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_vmstat_like_lines(text in "([a-z_]{1,12} [0-9]{0,22}\n){0,10}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips_and_delta_with_self_is_zero(values in proptest::collection::btree_map("[a-z_]{1,16}", any::<u64>(), 1..30)) {
            let text: String = values.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            let v = parse(&text).unwrap();
            for (k, value) in &values {
                prop_assert_eq!(v.get(k), Some(*value));
            }
            prop_assert!(v.delta(&v).entries().all(|(_, d)| d == 0));
        }
    }
}
