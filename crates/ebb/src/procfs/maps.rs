//! `/proc/PID/maps`: one line per mapping (VMA).
//!
//! ```text
//! 55592be37000-55592be39000 r--p 00000000 fe:00 247030                     /usr/bin/cat
//! 7f9b6c90f000-7f9b6c931000 rw-p 00000000 00:00 0
//! ```
//!
//! The kernel (`show_map_vma` in `fs/proc/task_mmu.c`) prints five fixed fields, pads with
//! spaces, then the pathname, which may contain spaces (a newline in a name is printed as
//! `\012`). Leading spaces of a pathname cannot be told from the padding and are lost.
//!
//! Every non-empty line must be a well-formed mapping: a malformed line is a [`ParseError`].
//! Empty lines are skipped; an empty file (a kernel thread, a zombie) is an empty list.

use super::{Error, FileKind, ParseError, pid_path, read_parsed};

/// Access permissions of a mapping (`rwxp` / `rw-s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Perms {
    /// Readable (`r`).
    pub read: bool,
    /// Writable (`w`).
    pub write: bool,
    /// Executable (`x`).
    pub exec: bool,
    /// Shared (`s`) rather than private copy-on-write (`p`).
    pub shared: bool,
}

impl Perms {
    /// Parses the four-character permission field.
    fn parse(field: &str) -> Option<Self> {
        let b = field.as_bytes();
        let [r, w, x, s] = b else { return None };
        let flag = |c: u8, set: u8| match c {
            c if c == set => Some(true),
            b'-' => Some(false),
            _ => None,
        };
        Some(Self {
            read: flag(*r, b'r')?,
            write: flag(*w, b'w')?,
            exec: flag(*x, b'x')?,
            shared: match s {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        })
    }
}

/// One mapping: a line of `/proc/PID/maps`, or the header of an entry of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapsEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    /// Access permissions.
    pub perms: Perms,
    /// Offset into the file (or the page offset of anonymous memory), in bytes.
    pub offset: u64,
    /// Device (major, minor) of the file; (0, 0) for anonymous memory.
    pub dev: (u32, u32),
    /// Inode of the file; 0 for anonymous memory.
    pub inode: u64,
    /// Pathname or pseudo-name (`[heap]`, `[anon:name]`); `None` for anonymous memory.
    pub pathname: Option<String>,
}

/// What a mapping is, from its pathname field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MapKind<'a> {
    /// Anonymous memory without a name.
    Anonymous,
    /// A file (or other inode, e.g. `anon_inode:[perf_event]`), by path.
    File(&'a str),
    /// A file that has been unlinked (`(deleted)` suffix, removed here); memfds and SysV
    /// shared memory show up this way.
    Deleted(&'a str),
    /// The brk heap, `[heap]`.
    Heap,
    /// A stack, `[stack]` (or `[stack:TID]` on old kernels).
    Stack,
    /// Anonymous memory named with `PR_SET_VMA_ANON_NAME`: `[anon:NAME]` or
    /// `[anon_shmem:NAME]`; holds NAME.
    AnonNamed(&'a str),
    /// Another kernel pseudo-mapping (`[vdso]`, `[vvar]`, `[vsyscall]`, `[uprobes]`, ...);
    /// holds the name without brackets.
    Special(&'a str),
}

impl MapsEntry {
    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the mapping is empty (never true for a mapping the kernel reports).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the mapping is, from its pathname.
    pub fn kind(&self) -> MapKind<'_> {
        let Some(path) = self.pathname.as_deref() else {
            return MapKind::Anonymous;
        };
        if let Some(inner) = path.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            if let Some(name) = inner
                .strip_prefix("anon:")
                .or_else(|| inner.strip_prefix("anon_shmem:"))
            {
                return MapKind::AnonNamed(name);
            }
            return match inner {
                "heap" => MapKind::Heap,
                "stack" => MapKind::Stack,
                s if s.starts_with("stack:") => MapKind::Stack,
                s => MapKind::Special(s),
            };
        }
        match path.strip_suffix(" (deleted)") {
            Some(deleted) => MapKind::Deleted(deleted),
            None => MapKind::File(path),
        }
    }

    /// Whether the mapping is private (copy-on-write), not shared.
    pub fn is_private(&self) -> bool {
        !self.perms.shared
    }

    /// Whether the mapping is backed by a file ([`MapKind::File`] or [`MapKind::Deleted`]).
    pub fn is_file_backed(&self) -> bool {
        matches!(self.kind(), MapKind::File(_) | MapKind::Deleted(_))
    }

    /// Parses one line of `maps` (or an `smaps` header); `line_no` is 1-based, for errors.
    pub fn parse_line(kind: FileKind, line_no: usize, line: &str) -> Result<Self, ParseError> {
        let err = |what| ParseError::new(kind, line_no, what, line);
        let mut rest = line;
        let mut field = |what| {
            let trimmed = rest.trim_start_matches(' ');
            let end = trimmed.find(' ').unwrap_or(trimmed.len());
            let (f, r) = trimmed.split_at(end);
            rest = r;
            if f.is_empty() { Err(err(what)) } else { Ok(f) }
        };
        let range = field("missing address range")?;
        let perms = field("missing permissions")?;
        let offset = field("missing offset")?;
        let dev = field("missing device")?;
        let inode = field("missing inode")?;

        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| err("address range has no '-'"))?;
        let hex = |s: &str, what| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(what));
            }
            u64::from_str_radix(s, 16).map_err(|_| err(what))
        };
        let start = hex(start, "bad start address")?;
        let end = hex(end, "bad end address")?;
        if end < start {
            return Err(err("end address before start"));
        }
        let perms = Perms::parse(perms).ok_or_else(|| err("bad permissions"))?;
        let offset = hex(offset, "bad offset")?;
        let (major, minor) = dev
            .split_once(':')
            .ok_or_else(|| err("device has no ':'"))?;
        let major = hex(major, "bad device major")?;
        let minor = hex(minor, "bad device minor")?;
        let dev = (
            u32::try_from(major).map_err(|_| err("device major too large"))?,
            u32::try_from(minor).map_err(|_| err("device minor too large"))?,
        );
        if !inode.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("bad inode"));
        }
        let inode = inode.parse().map_err(|_| err("bad inode"))?;
        let path = rest.trim_start_matches(' ');
        let pathname = (!path.is_empty()).then(|| path.to_owned());
        Ok(Self {
            start,
            end,
            perms,
            offset,
            dev,
            inode,
            pathname,
        })
    }
}

/// Parses the text of `/proc/PID/maps`.
pub fn parse(text: &str) -> Result<Vec<MapsEntry>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| MapsEntry::parse_line(FileKind::Maps, i + 1, line))
        .collect()
}

/// Reads `/proc/PID/maps`.
pub fn read(pid: u32) -> Result<Vec<MapsEntry>, Error> {
    read_parsed(pid_path(pid, "maps"), parse)
}

/// Reads `/proc/self/maps`.
pub fn read_self() -> Result<Vec<MapsEntry>, Error> {
    read_parsed("/proc/self/maps", parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Captured from `cat /proc/self/maps` on the lab machine (Linux 6.18), plus a few
    /// lines from other processes (memfd, named anonymous memory, a path with spaces).
    const SAMPLE: &str = "\
55592be37000-55592be39000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55592be42000-55592be43000 rw-p 0000a000 fe:00 247030                     /usr/bin/cat
555932daf000-555932dd0000 rw-p 00000000 00:00 0                          [heap]
7f9b6c90f000-7f9b6c931000 rw-p 00000000 00:00 0 
7f9b6cb77000-7f9b6cb7e000 r--s 00000000 fe:00 325745                     /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7f9b6cb81000-7f9b6cb85000 r--p 00000000 00:00 0                          [vvar]
7f9b6cb87000-7f9b6cb89000 r-xp 00000000 00:00 0                          [vdso]
7f5198189000-7f5198193000 r--p 00000000 00:01 1024                       /memfd:sealed-91173221a7ea (deleted)
7f0000000000-7f0000200000 rw-p 00000000 00:00 0                          [anon:ebb heap]
7f0000200000-7f0000201000 r--p 00000000 103:02 99                        /home/a user/my file.txt
7fffb7796000-7fffb77b7000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_real_sample() {
        let maps = parse(SAMPLE).unwrap();
        assert_eq!(maps.len(), 12);
        let cat = &maps[0];
        assert_eq!(cat.start, 0x55592be37000);
        assert_eq!(cat.len(), 0x2000);
        assert_eq!(
            cat.perms,
            Perms {
                read: true,
                write: false,
                exec: false,
                shared: false
            }
        );
        assert_eq!(cat.dev, (0xfe, 0));
        assert_eq!(cat.inode, 247030);
        assert_eq!(cat.kind(), MapKind::File("/usr/bin/cat"));
        assert!(cat.is_private() && cat.is_file_backed());
        assert_eq!(maps[1].offset, 0xa000);
        assert_eq!(maps[2].kind(), MapKind::Heap);
        assert_eq!(maps[3].pathname, None);
        assert_eq!(maps[3].kind(), MapKind::Anonymous);
        assert!(!maps[3].is_file_backed());
        assert!(maps[4].perms.shared && !maps[4].is_private());
        assert_eq!(maps[5].kind(), MapKind::Special("vvar"));
        assert_eq!(maps[6].kind(), MapKind::Special("vdso"));
        assert_eq!(
            maps[7].kind(),
            MapKind::Deleted("/memfd:sealed-91173221a7ea")
        );
        assert!(maps[7].is_file_backed());
        assert_eq!(maps[8].kind(), MapKind::AnonNamed("ebb heap"));
        assert_eq!(maps[9].dev, (0x103, 2));
        assert_eq!(maps[9].kind(), MapKind::File("/home/a user/my file.txt"));
        assert_eq!(maps[10].kind(), MapKind::Stack);
        assert_eq!(maps[11].end, 0xffffffffff601000);
        assert_eq!(maps[11].kind(), MapKind::Special("vsyscall"));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("\n\n"), Ok(vec![]));
        for bad in [
            "garbage",
            "5000-4000 r--p 00000000 00:00 0",
            "4000-5000 r--p 00000000 00:00",
            "4000-5000 rwzp 00000000 00:00 0",
            "4000-5000 r--p 00000000 0000 0",
            "4000 r--p 00000000 00:00 0",
            "-5000 r--p 00000000 00:00 0",
            "+4000-5000 r--p 00000000 00:00 0",
            "4000-5000 r--p 00000000 00:00 -1",
            "4000-10000000000000000 r--p 00000000 00:00 0",
            "4000-5000 r--p 00000000 100000000:00 0",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.kind, e.line), (FileKind::Maps, 1), "{bad}");
        }
        let e = parse("4000-5000 r--p 0 0:0 0\nbad line\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn kind_of_odd_names() {
        let with = |p: &str| MapsEntry {
            pathname: Some(p.to_owned()),
            ..MapsEntry::default()
        };
        assert_eq!(with("[stack:1234]").kind(), MapKind::Stack);
        assert_eq!(with("[anon_shmem:x]").kind(), MapKind::AnonNamed("x"));
        assert_eq!(with("[uprobes]").kind(), MapKind::Special("uprobes"));
        assert_eq!(with("[").kind(), MapKind::File("["));
        assert_eq!(
            with("anon_inode:[perf_event]").kind(),
            MapKind::File("anon_inode:[perf_event]")
        );
        assert_eq!(
            with("/SYSV00000000 (deleted)").kind(),
            MapKind::Deleted("/SYSV00000000")
        );
    }

    #[test]
    fn live_self_and_missing_pid() {
        let maps = read_self().unwrap();
        assert!(maps.iter().any(|m| m.kind() == MapKind::Stack));
        let here = parses_real_sample as fn() as usize as u64;
        assert!(
            maps.iter()
                .any(|m| m.start <= here && here < m.end && m.perms.exec)
        );
        assert!(!read(std::process::id()).unwrap().is_empty());
        assert!(matches!(
            read(4_194_311),
            Err(Error::NoProcess { pid: 4_194_311 })
        ));
    }

    fn format_entry(e: &MapsEntry) -> String {
        let p = e.perms;
        let mut line = format!(
            "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
            e.start,
            e.end,
            if p.read { 'r' } else { '-' },
            if p.write { 'w' } else { '-' },
            if p.exec { 'x' } else { '-' },
            if p.shared { 's' } else { 'p' },
            e.offset,
            e.dev.0,
            e.dev.1,
            e.inode
        );
        if let Some(path) = &e.pathname {
            while line.len() < 73 {
                line.push(' ');
            }
            line.push_str(path);
        }
        line
    }

    prop_compose! {
        fn entry()(start in any::<u64>(), len in any::<u64>(), r: bool, w: bool, x: bool, s: bool,
                   offset: u64, major: u32, minor: u32, inode: u64,
                   path in proptest::option::of("[/\\[][ -~]{0,40}")) -> MapsEntry {
            MapsEntry {
                start,
                end: start.saturating_add(len),
                perms: Perms { read: r, write: w, exec: x, shared: s },
                offset,
                dev: (major, minor),
                inode,
                pathname: path,
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "(?s).{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_maps_like_lines(text in "([0-9a-f]{1,17}-[0-9a-f]{1,17} [rwxsp-]{3,5} [0-9a-f]{1,9} [0-9a-f]{1,9}:[0-9a-f]{1,9} [0-9]{1,21} *[ -~]{0,10}\n){0,4}") {
            let _ = parse(&text);
        }

        #[test]
        fn round_trips_kernel_format(entries in proptest::collection::vec(entry(), 0..8)) {
            let text: String = entries.iter().map(|e| format_entry(e) + "\n").collect();
            prop_assert_eq!(parse(&text).unwrap(), entries);
        }
    }
}
