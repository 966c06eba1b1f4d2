//! A memory hog: a child process that allocates and checks memory on command.
//!
//! The child (the `ebb-hog` binary, or any binary that calls [`run_child`]) reads one
//! command per line on stdin and answers one line on stdout:
//!
//! | command | effect | reply |
//! | --- | --- | --- |
//! | `alloc <bytes> [seed]` | map anonymous memory and fill it with the pattern of `seed` | `ok <addr> <len>` |
//! | `fill <bytes>` | same, reporting nothing until every page is touched (for overruns) | `ok <len>` |
//! | `verify` | read every allocation back and check the pattern | `ok <checksum>` / `corrupt <offset>` |
//! | `touch` | like `verify`, and rewrite each word (re-dirties every page) | same |
//! | `free` | release every allocation | `ok` |
//! | `rss` | the child's `VmRSS` | `ok <bytes>` |
//! | `exit` | exit 0 | `ok` |
//!
//! Anything else gets `err <message>`. Offsets count bytes across all allocations in
//! the order they were made.
//!
//! The pattern is deterministic, not all-zero and not same-filled (zram stores those
//! without compressing), and compresses to roughly a sixth with lz4: each 4 KiB page
//! starts with 512 pseudo-random bytes and repeats a 64-byte pseudo-random block after.
//! Swapped-out pages that come back wrong, or lazily freed pages the kernel discarded,
//! show up as `corrupt`.
//!
//! [`Hog`] is the parent side: it spawns the child (optionally inside a
//! [`Sandbox`](crate::Sandbox)), speaks the protocol, and kills and reaps the child on drop.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};

use crate::Sandbox;
use crate::proto::{Answer, exchange};

const WORDS_PER_PAGE: usize = 4096 / 8;
/// Words at the start of each page that are all distinct.
const RANDOM_WORDS: usize = 64;
/// Length in words of the block repeated over the rest of the page.
const REPEAT_WORDS: usize = 8;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The base value of page `page` of the allocation with `seed`.
fn page_base(seed: u64, page: u64) -> u64 {
    splitmix(seed ^ splitmix(page))
}

/// Word `k` (0..512) of a page whose base is `base`.
fn page_word(base: u64, k: usize) -> u64 {
    let j = if k < RANDOM_WORDS {
        k
    } else {
        RANDOM_WORDS + k % REPEAT_WORDS
    } as u64;
    let v = (base ^ j.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    v ^ (v >> 29)
}

/// Word `index` of the pattern for `seed`.
pub fn pattern_word(seed: u64, index: usize) -> u64 {
    page_word(
        page_base(seed, (index / WORDS_PER_PAGE) as u64),
        index % WORDS_PER_PAGE,
    )
}

struct Allocation {
    seed: u64,
    words: Vec<u64>,
}

impl Allocation {
    /// Allocate `bytes` (rounded up to 8) and write the pattern page by page.
    fn new(bytes: u64, seed: u64) -> Allocation {
        // vec![0; n] is calloc: large sizes are fresh anonymous mmap, untouched until written.
        let mut words = vec![0u64; bytes.div_ceil(8) as usize];
        for (page, chunk) in words.chunks_mut(WORDS_PER_PAGE).enumerate() {
            let base = page_base(seed, page as u64);
            for (k, w) in chunk.iter_mut().enumerate() {
                *w = page_word(base, k);
            }
        }
        Allocation { seed, words }
    }

    /// Check the pattern; `Err(word index)` at the first mismatch.
    fn check(&mut self, rewrite: bool, sum: &mut u64) -> Result<(), usize> {
        for (page, chunk) in self.words.chunks_mut(WORDS_PER_PAGE).enumerate() {
            let base = page_base(self.seed, page as u64);
            for (k, w) in chunk.iter_mut().enumerate() {
                let want = page_word(base, k);
                // Volatile read: the point is to fault the page in, not to be optimised away.
                let got = std::hint::black_box(*w);
                if got != want {
                    return Err(page * WORDS_PER_PAGE + k);
                }
                if rewrite {
                    *w = std::hint::black_box(want);
                }
                *sum = sum.rotate_left(5) ^ got;
            }
        }
        Ok(())
    }
}

fn vm_rss() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/self/status"))
}

/// The child side: serve the protocol on stdin/stdout until `exit` or end of input.
///
/// `args` (without the program name) are currently unused and must be empty.
pub fn run_child<I: IntoIterator<Item = String>>(args: I) -> io::Result<()> {
    if let Some(a) = args.into_iter().next() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ebb-hog takes no arguments (got {a:?}); it reads commands on stdin"),
        ));
    }
    let stdin = io::stdin().lock();
    let mut out = io::stdout().lock();
    let mut allocs: Vec<Allocation> = Vec::new();
    for line in stdin.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["alloc", bytes, rest @ ..] if rest.len() <= 1 => {
                match (
                    bytes.parse::<u64>(),
                    rest.first().map_or(Ok(allocs.len() as u64), |s| s.parse()),
                ) {
                    (Ok(bytes), Ok(seed)) => {
                        let a = Allocation::new(bytes, seed);
                        let reply = format!("ok {:#x} {}", a.words.as_ptr() as usize, bytes);
                        allocs.push(a);
                        reply
                    }
                    _ => format!("err bad numbers in {line:?}"),
                }
            }
            ["fill", bytes] => match bytes.parse::<u64>() {
                Ok(bytes) => {
                    allocs.push(Allocation::new(bytes, allocs.len() as u64));
                    format!("ok {bytes}")
                }
                Err(_) => format!("err bad number in {line:?}"),
            },
            [cmd @ ("verify" | "touch")] => {
                let mut sum = 0u64;
                let mut offset = 0usize;
                let mut bad = None;
                for a in &mut allocs {
                    if let Err(i) = a.check(*cmd == "touch", &mut sum) {
                        bad = Some(offset + i * 8);
                        break;
                    }
                    offset += a.words.len() * 8;
                }
                match bad {
                    Some(off) => format!("corrupt {off}"),
                    None => format!("ok {sum:#018x}"),
                }
            }
            ["free"] => {
                allocs.clear();
                "ok".to_string()
            }
            ["rss"] => format!("ok {}", vm_rss()?),
            ["exit"] => {
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

/// An error driving a hog child.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hog binary was not found.
    #[error(
        "cannot find the ebb-hog binary (looked at {searched:?}); run `cargo build -p ebb-lab` or set EBB_HOG"
    )]
    NotFound {
        /// The paths tried.
        searched: Vec<PathBuf>,
    },
    /// Spawning, or talking to, the child failed.
    #[error("hog: {0}")]
    Io(#[from] io::Error),
    /// The child died before answering (`status`: how it ended; SIGKILL is usually the OOM killer).
    #[error("hog died while running {command:?}: {status}")]
    Died {
        /// The command that got no answer.
        command: String,
        /// How the child ended.
        status: ExitStatus,
    },
    /// The child answered something unexpected.
    #[error("hog answered {reply:?} to {command:?}")]
    Protocol {
        /// The command.
        command: String,
        /// The reply.
        reply: String,
    },
}

/// The result of a [`Hog::touch`] / [`Hog::verify_detail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every byte matched; a checksum of the contents.
    Ok(u64),
    /// The first byte offset that did not match.
    Corrupt(u64),
}

/// A running hog child; killed and reaped on drop.
#[derive(Debug)]
pub struct Hog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_seed: u64,
}

impl Hog {
    /// The hog program: `$EBB_HOG` if set, else `ebb-hog` next to the current executable
    /// or in its parent directory (tests run from `target/<profile>/deps`).
    pub fn program() -> Result<PathBuf, Error> {
        crate::proto::locate("EBB_HOG", "ebb-hog").map_err(|searched| Error::NotFound { searched })
    }

    /// Spawn [`Hog::program`], inside `sandbox` if given.
    pub fn spawn(sandbox: Option<&Sandbox>) -> Result<Hog, Error> {
        Hog::spawn_command(Command::new(Hog::program()?), sandbox)
    }

    /// Spawn `cmd` as the hog (any program that runs [`run_child`], e.g. a hidden CLI
    /// subcommand); stdin and stdout are replaced by pipes.
    pub fn spawn_command(mut cmd: Command, sandbox: Option<&Sandbox>) -> Result<Hog, Error> {
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
        Ok(Hog {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            next_seed: 1,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send one command and return the words after `ok`.
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
        if words.next() == Some("ok") {
            Ok(words.map(str::to_string).collect())
        } else {
            Err(Error::Protocol {
                command: command.to_string(),
                reply: reply.trim_end().to_string(),
            })
        }
    }

    fn number(command: &str, words: &[String], i: usize) -> Result<u64, Error> {
        let w = words.get(i).map(String::as_str).unwrap_or("");
        let parsed = match w.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => w.parse(),
        };
        parsed.map_err(|_| Error::Protocol {
            command: command.to_string(),
            reply: words.join(" "),
        })
    }

    /// Allocate and fill `bytes`, with a fresh seed; returns the child's (address, length).
    pub fn alloc(&mut self, bytes: u64) -> Result<(u64, u64), Error> {
        let seed = self.next_seed;
        self.next_seed += 1;
        self.alloc_seeded(bytes, seed)
    }

    /// Allocate and fill `bytes` with the pattern of `seed`.
    pub fn alloc_seeded(&mut self, bytes: u64, seed: u64) -> Result<(u64, u64), Error> {
        let cmd = format!("alloc {bytes} {seed}");
        let w = self.request(&cmd)?;
        Ok((Hog::number(&cmd, &w, 0)?, Hog::number(&cmd, &w, 1)?))
    }

    /// Allocate and touch `bytes` page by page; in a sandbox too small, this is where the
    /// child gets OOM-killed ([`Error::Died`]).
    pub fn fill(&mut self, bytes: u64) -> Result<u64, Error> {
        let cmd = format!("fill {bytes}");
        let w = self.request(&cmd)?;
        Hog::number(&cmd, &w, 0)
    }

    fn check(&mut self, cmd: &str) -> Result<Verify, Error> {
        match self.request(cmd) {
            Ok(w) => Ok(Verify::Ok(Hog::number(cmd, &w, 0)?)),
            Err(Error::Protocol { reply, .. }) if reply.starts_with("corrupt ") => {
                let off =
                    reply["corrupt ".len()..]
                        .trim()
                        .parse()
                        .map_err(|_| Error::Protocol {
                            command: cmd.to_string(),
                            reply: reply.clone(),
                        })?;
                Ok(Verify::Corrupt(off))
            }
            Err(e) => Err(e),
        }
    }

    /// Read everything back and check it: `true` if all of it is intact.
    pub fn verify(&mut self) -> Result<bool, Error> {
        Ok(matches!(self.verify_detail()?, Verify::Ok(_)))
    }

    /// Like [`Hog::verify`], with the checksum or the first bad offset.
    pub fn verify_detail(&mut self) -> Result<Verify, Error> {
        self.check("verify")
    }

    /// Verify and rewrite every word, making every page dirty and resident again.
    pub fn touch(&mut self) -> Result<Verify, Error> {
        self.check("touch")
    }

    /// Release every allocation.
    pub fn free(&mut self) -> Result<(), Error> {
        self.request("free").map(drop)
    }

    /// The child's resident set size (`VmRSS`), in bytes.
    pub fn rss(&mut self) -> Result<u64, Error> {
        let w = self.request("rss")?;
        Hog::number("rss", &w, 0)
    }

    /// SIGKILL the child and reap it.
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

    /// Whether the child has ended (reaping it if so), and how.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Did the process end by SIGKILL (what the OOM killer sends)?
pub fn killed_by_sigkill(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_not_trivial() {
        let a: Vec<u64> = (0..1024).map(|i| pattern_word(7, i)).collect();
        let b: Vec<u64> = (0..1024).map(|i| pattern_word(7, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a[..512], a[512..]);
        assert_ne!(pattern_word(7, 0), pattern_word(8, 0));
        // Not same-filled: the first 64 words of a page are distinct.
        let mut first: Vec<u64> = a[..64].to_vec();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 64);
        // Repeating tail.
        assert_eq!(a[64], a[72]);
        let mut alloc = Allocation::new(3 * 4096 + 5, 7);
        assert_eq!(alloc.words.len(), 3 * 512 + 1);
        assert_eq!(alloc.words[..1024], a[..]);
        let mut sum = 0;
        assert_eq!(alloc.check(true, &mut sum), Ok(()));
        alloc.words[600] ^= 1;
        assert_eq!(alloc.check(false, &mut sum), Err(600));
    }
}
