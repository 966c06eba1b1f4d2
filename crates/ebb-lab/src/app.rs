//! An app: a child process that behaves like a phone app for the app-switch benchmark.
//!
//! The child (the `ebb-app` binary, which calls [`run_child`]) builds a working set and
//! then waits to be brought to the foreground. It reads one command per line on stdin and
//! answers one line on stdout:
//!
//! | command | effect | reply |
//! | --- | --- | --- |
//! | `build <anon> <file> <hot> <seed> <rounds> <path>` | build the working set (below) | `ok <anon> <file> <hot>` |
//! | `resume` | touch the hot part and check it page by page | `ok <majflt> <minflt>` / `corrupt <page>` |
//! | `work <ms>` | foreground work over the hot part for `ms` milliseconds | `ok <bytes processed>` |
//! | `verify` | check every page of the working set | `ok` / `corrupt <page>` |
//! | `exit` | exit 0 | `ok` |
//!
//! Anything else gets `err <message>`.
//!
//! # The working set
//! - `anon` bytes of anonymous memory. Each 4 KiB page is computed from a **hash chain**:
//!   the state of page *p* is `rounds` rounds of a 64-bit mixer over the state of page
//!   *p − 1*, so building is real, sequential CPU work (a cold start), which no cache can
//!   skip. The state picks the page's kind, giving a realistic mix for zram: 1/8 zero pages
//!   (allocated, never written heap), 1/8 incompressible (media, compressed data),
//!   3/8 text-like (tokens from a small dictionary), 3/8 structured records (small
//!   integers, pointers sharing their high bits, a few random fields).
//! - `file` bytes of a data file at `path`, mapped `MAP_PRIVATE`, read-only: the app's
//!   installed data. The first start writes it (and `fdatasync`s it, so its page cache
//!   is clean and the kernel can drop it); later starts map it and check every page
//!   against the hash chain. Under pressure its pages are dropped, not swapped, and read
//!   back from disk.
//! - the **hot part**: the first `hot` bytes of the anonymous memory plus the first
//!   `hot / 4` bytes of the file mapping, touched on every `resume` and by `work`.
//!
//! The hash of every page is remembered when it is built; `resume` and `verify` recompute
//! and compare them, so a page that comes back from swap wrong, or lost (read as zeros),
//! is reported as `corrupt` with its page number.
//!
//! `resume` also reports the major and minor page faults it took (`getrusage`): a major
//! fault is a page read back from swap or disk, so `majflt > 0` means "hot from swap".
//!
//! [`App`] is the parent side: it spawns the child (inside a [`Sandbox`](crate::Sandbox)),
//! speaks the protocol, and kills and reaps the child on drop.
//!
//! # Safety contract
//! The `unsafe` here maps and unmaps the data file (`FileMap`): the mapping is
//! private and read-only, owned by one `FileMap` that unmaps it exactly once, and slices
//! into it never outlive it; and one `getrusage(2)` into a local buffer.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::Sandbox;
use crate::proto::{Answer, exchange};

/// Bytes per page of the working set (the content unit; the kernel's page size on x86_64).
pub const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

/// The mixer of the hash chain (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The chain step: `rounds` dependent rounds of [`mix`] (at least one).
fn chain(state: u64, page: u64, rounds: u32) -> u64 {
    let mut s = state ^ page.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    for _ in 0..rounds.max(1) {
        s = mix(s);
    }
    s
}

/// A small fast generator for the words of one page.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for content, a few cycles per word.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const TOKENS: [&[u8; 8]; 16] = [
    b"the     ",
    b"memory  ",
    b"kernel  ",
    b"page    ",
    b"swap    ",
    b"return  ",
    b"if (x)  ",
    b"{\n      ",
    b"}\n      ",
    b"0000000 ",
    b"value=  ",
    b"name:   ",
    b"<div>   ",
    b"</div>  ",
    b"null,   ",
    b"\"id\":   ",
];

/// Fill `page` with the content of a page whose chain state is `state`.
fn fill_page(state: u64, page: &mut [u64]) {
    let mut g = Gen(state | 1);
    match state >> 60 {
        // Zero page: allocated heap nobody wrote.
        0 | 1 => page.fill(0),
        // Incompressible.
        2 | 3 => page.iter_mut().for_each(|w| *w = g.next()),
        // Text-like: 8-byte tokens from a small dictionary.
        4..=9 => page.iter_mut().for_each(|w| {
            let r = g.next();
            *w = u64::from_le_bytes(*TOKENS[(r >> 60) as usize]);
        }),
        // Structured records of 8 words: a small counter, a pointer with shared high
        // bits, a flag word, a random hash, and four small integers.
        _ => {
            let heap = 0x7f00_0000_0000u64 | ((state & 0xffff) << 20);
            for (i, rec) in page.chunks_mut(8).enumerate() {
                let r = g.next();
                let fields = [
                    i as u64,
                    heap + ((r & 0xffff) << 4),
                    (r >> 16) & 0x7,
                    g.next(),
                    (r >> 24) & 0xff,
                    (r >> 32) & 0xff,
                    0,
                    (r >> 40) & 0xf,
                ];
                rec.copy_from_slice(&fields[..rec.len()]);
            }
        }
    }
}

/// The hash of one page's content (what `resume` and `verify` compare).
fn page_hash(page: &[u64]) -> u64 {
    let mut h = 0x243F_6A88_85A3_08D3u64;
    for &w in page {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(23);
    }
    h
}

/// A private read-only mapping of a file; unmapped on drop.
struct FileMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl FileMap {
    fn map(file: &File, len: usize) -> io::Result<FileMap> {
        if len == 0 {
            return Ok(FileMap {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) cannot overlap any
        // Rust object; `file` is open for reading and at least `len` bytes long.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                0,
            )
        }?;
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(FileMap { ptr, len })
    }

    /// The mapping as words.
    fn words(&self) -> &[u64] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is `len` readable bytes, page-aligned (so aligned for u64),
        // private (no one else writes it: a write to the file by another process is not
        // something this app does), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u64>(), self.len / 8) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr..ptr+len` is the mapping made in `map`, unmapped only here;
            // no slice from `words` outlives `self`.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// The built working set of the child.
struct WorkingSet {
    anon: Vec<u64>,
    file: FileMap,
    /// Hashes of every anonymous page, then every file page.
    hashes: Vec<u64>,
    hot_anon_pages: usize,
    hot_file_pages: usize,
}

fn pages(bytes: u64) -> usize {
    (bytes as usize).div_ceil(PAGE)
}

impl WorkingSet {
    fn build(
        anon: u64,
        file: u64,
        hot: u64,
        seed: u64,
        rounds: u32,
        path: &Path,
    ) -> io::Result<Self> {
        let anon_pages = pages(anon);
        let file_pages = pages(file);
        let mut hashes = Vec::with_capacity(anon_pages + file_pages);
        // vec![0; n] is calloc: fresh anonymous memory, faulted in as we write it.
        let mut words = vec![0u64; anon_pages * WORDS];
        let mut state = mix(seed);
        for (p, page) in words.chunks_mut(WORDS).enumerate() {
            state = chain(state, p as u64, rounds);
            fill_page(state, page);
            hashes.push(page_hash(page));
        }
        // The file continues the same chain.
        let mut expected = Vec::with_capacity(file_pages);
        let mut buf = vec![0u64; WORDS];
        let mut states = Vec::with_capacity(file_pages);
        for p in 0..file_pages {
            state = chain(state, (anon_pages + p) as u64, rounds);
            states.push(state);
            fill_page(state, &mut buf);
            expected.push(page_hash(&buf));
        }
        let len = file_pages * PAGE;
        let fresh = std::fs::metadata(path)
            .map(|m| m.len() != len as u64)
            .unwrap_or(true);
        if fresh {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?;
            let mut bytes = Vec::with_capacity(PAGE);
            for &s in &states {
                fill_page(s, &mut buf);
                bytes.clear();
                buf.iter()
                    .for_each(|w| bytes.extend_from_slice(&w.to_ne_bytes()));
                f.write_all(&bytes)?;
            }
            // Clean page cache: the kernel may drop it under pressure and read it back.
            f.sync_data()?;
        }
        let f = File::open(path)?;
        let map = FileMap::map(&f, len)?;
        // Read every page of the mapping and check it against the chain.
        for (p, page) in map.words().chunks(WORDS).enumerate() {
            let h = page_hash(std::hint::black_box(page));
            if h != expected[p] {
                return Err(io::Error::other(format!(
                    "data file {} page {p} does not match its hash chain",
                    path.display()
                )));
            }
        }
        hashes.extend_from_slice(&expected);
        Ok(WorkingSet {
            anon: words,
            file: map,
            hashes,
            hot_anon_pages: pages(hot).min(anon_pages),
            hot_file_pages: (pages(hot) / 4).min(file_pages),
        })
    }

    /// Check pages: the hot part only, or everything. `Err(page)` at the first mismatch
    /// (anonymous pages first, then file pages).
    fn check(&self, hot_only: bool) -> Result<(), usize> {
        let (na, nf) = if hot_only {
            (self.hot_anon_pages, self.hot_file_pages)
        } else {
            (self.anon.len() / WORDS, self.file.len / PAGE)
        };
        let anon_pages = self.anon.len() / WORDS;
        for (p, page) in self.anon.chunks(WORDS).take(na).enumerate() {
            if page_hash(std::hint::black_box(page)) != self.hashes[p] {
                return Err(p);
            }
        }
        for (p, page) in self.file.words().chunks(WORDS).take(nf).enumerate() {
            if page_hash(std::hint::black_box(page)) != self.hashes[anon_pages + p] {
                return Err(anon_pages + p);
            }
        }
        Ok(())
    }

    /// Foreground work for `budget`: passes over the hot part, re-dirtying the
    /// anonymous hot pages (rewriting the same values). Returns the bytes processed.
    fn work(&mut self, budget: Duration) -> u64 {
        let start = Instant::now();
        let mut done = 0u64;
        let mut acc = 0u64;
        let hot_words = self.hot_anon_pages * WORDS;
        'outer: loop {
            for page in self.anon[..hot_words].chunks_mut(WORDS) {
                acc = acc.wrapping_add(page_hash(page));
                // Re-dirty the page: an app in use writes its state.
                page[0] = std::hint::black_box(page[0]);
                done += PAGE as u64;
                if done % (64 * PAGE as u64) == 0 && start.elapsed() >= budget {
                    break 'outer;
                }
            }
            if hot_words == 0 || start.elapsed() >= budget {
                break;
            }
        }
        std::hint::black_box(acc);
        done
    }
}

/// Major and minor page faults of this process so far.
fn faults() -> (u64, u64) {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage(2) writes a `struct rusage` into the valid, writable buffer;
    // RUSAGE_SELF cannot fail (EINVAL only for a bad `who`).
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    (u.ru_majflt as u64, u.ru_minflt as u64)
}

/// The child side: serve the protocol on stdin/stdout until `exit` or end of input.
///
/// `args` (without the program name) must be empty.
pub fn run_child<I: IntoIterator<Item = String>>(args: I) -> io::Result<()> {
    if let Some(a) = args.into_iter().next() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ebb-app takes no arguments (got {a:?}); it reads commands on stdin"),
        ));
    }
    let stdin = io::stdin().lock();
    let mut out = io::stdout().lock();
    let mut set: Option<WorkingSet> = None;
    for line in stdin.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match (words.as_slice(), &mut set) {
            (["build", anon, file, hot, seed, rounds, path], _) => {
                match (
                    anon.parse(),
                    file.parse(),
                    hot.parse(),
                    seed.parse(),
                    rounds.parse(),
                ) {
                    (Ok(anon), Ok(file), Ok(hot), Ok(seed), Ok(rounds)) => {
                        set = None;
                        match WorkingSet::build(anon, file, hot, seed, rounds, Path::new(path)) {
                            Ok(ws) => {
                                let reply = format!(
                                    "ok {} {} {}",
                                    ws.anon.len() * 8,
                                    ws.file.len,
                                    (ws.hot_anon_pages + ws.hot_file_pages) * PAGE
                                );
                                set = Some(ws);
                                reply
                            }
                            Err(e) => format!("err build: {e}"),
                        }
                    }
                    _ => format!("err bad numbers in {line:?}"),
                }
            }
            (["resume"], Some(ws)) => {
                let (maj0, min0) = faults();
                match ws.check(true) {
                    Ok(()) => {
                        let (maj1, min1) = faults();
                        format!("ok {} {}", maj1 - maj0, min1 - min0)
                    }
                    Err(p) => format!("corrupt {p}"),
                }
            }
            (["work", ms], Some(ws)) => match ms.parse::<u64>() {
                Ok(ms) => format!("ok {}", ws.work(Duration::from_millis(ms))),
                Err(_) => format!("err bad number in {line:?}"),
            },
            (["verify"], Some(ws)) => match ws.check(false) {
                Ok(()) => "ok".to_string(),
                Err(p) => format!("corrupt {p}"),
            },
            (["resume" | "work" | "verify", ..], None) => "err nothing built yet".to_string(),
            (["exit"], _) => {
                writeln!(out, "ok")?;
                out.flush()?;
                return Ok(());
            }
            _ => format!("err unknown command {line:?}"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// An error driving an app child.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The app binary was not found.
    #[error(
        "cannot find the ebb-app binary (looked at {searched:?}); run `cargo build -p ebb-lab` or set EBB_APP"
    )]
    NotFound {
        /// The paths tried.
        searched: Vec<PathBuf>,
    },
    /// Spawning, or talking to, the child failed.
    #[error("app: {0}")]
    Io(#[from] io::Error),
    /// The child died before answering (`status`: how it ended; SIGKILL is usually a
    /// killer: the kernel's OOM killer, ebbd or earlyoom).
    #[error("app died while running {command:?}: {status}")]
    Died {
        /// The command that got no answer.
        command: String,
        /// How the child ended.
        status: ExitStatus,
    },
    /// A page of the working set came back wrong (lost or corrupted).
    #[error("app reports page {page} of its working set corrupt after {command:?}")]
    Corrupt {
        /// The command.
        command: String,
        /// The page number (anonymous pages first, then the file's).
        page: u64,
    },
    /// The child answered something unexpected.
    #[error("app answered {reply:?} to {command:?}")]
    Protocol {
        /// The command.
        command: String,
        /// The reply.
        reply: String,
    },
}

/// The shape of an app's working set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Anonymous bytes.
    pub anon: u64,
    /// Bytes of the data file mapping.
    pub file: u64,
    /// Anonymous bytes of the hot part (plus a quarter of that from the file).
    pub hot: u64,
    /// Seed of the hash chain (the app's identity).
    pub seed: u64,
    /// Mixer rounds per page: the CPU cost of a cold start.
    pub rounds: u32,
    /// The data file.
    pub data_file: PathBuf,
}

/// What `resume` measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Major faults during the touch (pages read back from swap or disk).
    pub majflt: u64,
    /// Minor faults during the touch.
    pub minflt: u64,
}

/// A running app child; killed and reaped on drop.
#[derive(Debug)]
pub struct App {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl App {
    /// The app program: `$EBB_APP` if set, else `ebb-app` next to the current executable
    /// or in its parent directory (tests and examples run one level down).
    pub fn program() -> Result<PathBuf, Error> {
        crate::proto::locate("EBB_APP", "ebb-app").map_err(|searched| Error::NotFound { searched })
    }

    /// Spawn `program` (see [`App::program`]) inside `sandbox` (if given); it builds
    /// nothing yet.
    pub fn spawn(program: &Path, sandbox: Option<&Sandbox>) -> Result<App, Error> {
        App::spawn_command(Command::new(program), sandbox)
    }

    /// Spawn `cmd` as the app (e.g. the app behind `nsenter`); stdin and stdout are
    /// replaced by pipes.
    pub fn spawn_command(mut cmd: Command, sandbox: Option<&Sandbox>) -> Result<App, Error> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = match sandbox {
            Some(s) => s.spawn(&mut cmd)?,
            None => cmd.spawn()?,
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Io(io::Error::other(
                "child has no stdin/stdout pipe",
            )));
        };
        Ok(App {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&mut self, command: &str) -> Result<Vec<String>, Error> {
        let reply = match exchange(&mut self.child, &mut self.stdin, &mut self.stdout, command)? {
            Answer::Line(reply) => reply,
            Answer::Died(status) => {
                return Err(Error::Died {
                    command: command.to_string(),
                    status,
                });
            }
        };
        let mut words = reply.split_whitespace();
        match words.next() {
            Some("ok") => Ok(words.map(str::to_string).collect()),
            Some("corrupt") => Err(Error::Corrupt {
                command: command.to_string(),
                page: words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u64::MAX),
            }),
            _ => Err(Error::Protocol {
                command: command.to_string(),
                reply: reply.trim_end().to_string(),
            }),
        }
    }

    fn number(command: &str, words: &[String], i: usize) -> Result<u64, Error> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| Error::Protocol {
                command: command.to_string(),
                reply: words.join(" "),
            })
    }

    /// Build the working set (the CPU work of a cold start); returns the resident bytes
    /// it made: (anonymous, file, hot).
    pub fn build(&mut self, spec: &AppSpec) -> Result<(u64, u64, u64), Error> {
        let cmd = format!(
            "build {} {} {} {} {} {}",
            spec.anon,
            spec.file,
            spec.hot,
            spec.seed,
            spec.rounds,
            spec.data_file.display()
        );
        let w = self.request(&cmd)?;
        Ok((
            App::number(&cmd, &w, 0)?,
            App::number(&cmd, &w, 1)?,
            App::number(&cmd, &w, 2)?,
        ))
    }

    /// Touch and check the hot part.
    pub fn resume(&mut self) -> Result<Resume, Error> {
        let w = self.request("resume")?;
        Ok(Resume {
            majflt: App::number("resume", &w, 0)?,
            minflt: App::number("resume", &w, 1)?,
        })
    }

    /// Foreground work for `ms` milliseconds; returns the bytes processed.
    pub fn work(&mut self, ms: u64) -> Result<u64, Error> {
        let cmd = format!("work {ms}");
        let w = self.request(&cmd)?;
        App::number(&cmd, &w, 0)
    }

    /// Check every page of the working set.
    pub fn verify(&mut self) -> Result<(), Error> {
        self.request("verify").map(drop)
    }

    /// Whether the child has ended (reaping it if so), and how.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL the child (if still running) and reap it.
    pub fn kill(&mut self) -> Result<ExitStatus, Error> {
        // Still our unreaped child, so the pid cannot have been recycled.
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        Ok(self.child.wait()?)
    }

    /// Ask the child to exit and reap it.
    pub fn exit(mut self) -> Result<ExitStatus, Error> {
        self.request("exit")?;
        Ok(self.child.wait()?)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The signal that ended `status`, if any.
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_mixed_and_deterministic() {
        let mut kinds = [0usize; 4];
        let mut state = mix(7);
        let mut page = vec![0u64; WORDS];
        for p in 0..4096u64 {
            state = chain(state, p, 1);
            fill_page(state, &mut page);
            let k = match state >> 60 {
                0 | 1 => 0,
                2 | 3 => 1,
                4..=9 => 2,
                _ => 3,
            };
            kinds[k] += 1;
            if k == 0 {
                assert!(page.iter().all(|&w| w == 0));
            } else {
                assert!(page.iter().any(|&w| w != 0));
            }
        }
        // Every kind occurs, in roughly the intended share.
        assert!(kinds.iter().all(|&n| n > 300), "{kinds:?}");
        let mut a = vec![0u64; WORDS];
        let mut b = vec![0u64; WORDS];
        fill_page(12345 << 40 | 9 << 60, &mut a);
        fill_page(12345 << 40 | 9 << 60, &mut b);
        assert_eq!(a, b);
        assert_eq!(chain(1, 2, 10), chain(1, 2, 10));
        assert_ne!(chain(1, 2, 10), chain(1, 3, 10));
    }

    #[test]
    fn working_set_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut ws = WorkingSet::build(64 * 1024, 32 * 1024, 16 * 1024, 3, 4, &path).unwrap();
        assert_eq!(ws.check(false), Ok(()));
        assert_eq!(ws.check(true), Ok(()));
        assert!(ws.work(Duration::from_millis(1)) > 0);
        assert_eq!(ws.check(false), Ok(()));
        // Find a non-zero page and lose it (zero it, as a discarded page reads back).
        let p = ws
            .anon
            .chunks(WORDS)
            .position(|c| c.iter().any(|&w| w != 0))
            .unwrap();
        ws.anon[p * WORDS..(p + 1) * WORDS].fill(0);
        assert_eq!(ws.check(false), Err(p));
        // The second start finds the file and checks it instead of writing it.
        let ws2 = WorkingSet::build(64 * 1024, 32 * 1024, 16 * 1024, 3, 4, &path).unwrap();
        assert_eq!(ws2.check(false), Ok(()));
        // A file that does not match the chain is refused.
        std::fs::write(&path, vec![1u8; 32 * 1024]).unwrap();
        assert!(WorkingSet::build(64 * 1024, 32 * 1024, 16 * 1024, 3, 4, &path).is_err());
    }
}
