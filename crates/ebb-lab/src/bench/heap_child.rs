//! `ebb-heap-child`: a process holding one heap (ebb's, a keep-everything one, jemalloc or
//! mimalloc), driven over stdin/stdout, so that the pressure tests and benchmark can put it in
//! a [`Sandbox`](crate::Sandbox) and watch a neighbour, or it, get OOM-killed.
//!
//! | command | effect | reply |
//! | --- | --- | --- |
//! | `fill <bytes> <block>` | allocate `bytes` in blocks of `block`, write every byte | `ok` |
//! | `free` | free every block (the heap now holds the memory free) | `ok` |
//! | `pressure <low\|medium\|critical>` | ebb heaps: `handle_pressure` | `ok <bytes released>` |
//! | `stats` | the heap's accounting and the THP coverage of its reservation | `ok <live> <free_held> <released> <rss> <anon_huge> <lazy_free> <splits>` |
//! | `exit` | exit | `ok` |
//!
//! Kinds: `ebb` (default options), `ebb-keep` (never releases: infinite delay, pressure
//! ignored), `jemalloc`, `mimalloc` (their defaults, via their `GlobalAlloc` impls).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use ebb::heap::{HeapOptions, PageHeap, Span};
use ebb::pressure::Level;

/// The child program: `$EBB_HEAP_CHILD`, else `ebb-heap-child` next to the current
/// executable or in its parent directory (tests run from `target/<profile>/deps`).
pub fn program() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EBB_HEAP_CHILD") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("ebb-heap-child");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "cannot find the ebb-heap-child binary: run `cargo build -p ebb-lab --bins` or set EBB_HEAP_CHILD",
    ))
}

enum Heap {
    Ebb(PageHeap),
    Jemalloc,
    Mimalloc,
}

fn level(word: &str) -> Option<Level> {
    match word {
        "low" => Some(Level::Low),
        "medium" => Some(Level::Medium),
        "critical" => Some(Level::Critical),
        _ => None,
    }
}

/// Runs the child: `args` is `[kind]`.
pub fn child_main(args: impl IntoIterator<Item = String>) -> io::Result<()> {
    let kind = args.into_iter().next().unwrap_or_else(|| "ebb".into());
    let heap = match kind.as_str() {
        "ebb" => Heap::Ebb(
            PageHeap::new(HeapOptions {
                reservation: 8 << 30,
                ..HeapOptions::default()
            })
            .map_err(io::Error::other)?,
        ),
        "ebb-keep" => Heap::Ebb(
            PageHeap::new(HeapOptions {
                reservation: 8 << 30,
                release_delay: Duration::from_secs(1 << 30),
                ..HeapOptions::default()
            })
            .map_err(io::Error::other)?,
        ),
        "jemalloc" => Heap::Jemalloc,
        "mimalloc" => Heap::Mimalloc,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown heap kind {other:?}: ebb, ebb-keep, jemalloc or mimalloc"),
            ));
        }
    };
    let keep = kind == "ebb-keep";
    let mut blocks: Vec<(*mut u8, usize)> = Vec::new();
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["fill", bytes, block] => {
                let (Ok(bytes), Ok(block)) = (bytes.parse::<usize>(), block.parse::<usize>())
                else {
                    writeln!(out, "error bad numbers")?;
                    continue;
                };
                let block = block.next_multiple_of(4096).max(4096);
                let layout = Layout::from_size_align(block, 4096).map_err(io::Error::other)?;
                for _ in 0..bytes / block {
                    let p = match &heap {
                        Heap::Ebb(h) => h
                            .alloc(block / 4096)
                            .map_err(io::Error::other)?
                            .into_raw()
                            .0
                            .as_ptr(),
                        // SAFETY: a non-zero-size layout.
                        Heap::Jemalloc => unsafe { tikv_jemallocator::Jemalloc.alloc(layout) },
                        // SAFETY: a non-zero-size layout.
                        Heap::Mimalloc => unsafe { mimalloc::MiMalloc.alloc(layout) },
                    };
                    if p.is_null() {
                        return Err(io::Error::other("allocation failed"));
                    }
                    // SAFETY: a fresh block of `block` bytes.
                    unsafe { p.write_bytes(0x77, block) };
                    blocks.push((p, block));
                }
                "ok".to_string()
            }
            ["free"] => {
                for (p, n) in blocks.drain(..) {
                    let layout = Layout::from_size_align(n, 4096).map_err(io::Error::other)?;
                    match &heap {
                        Heap::Ebb(h) => {
                            let nn = std::ptr::NonNull::new(p).expect("non-null");
                            // SAFETY: rebuilt once from the span `fill` gave up.
                            let span = unsafe { Span::from_raw_parts(nn, n / 4096) };
                            h.free(span).map_err(io::Error::other)?;
                        }
                        // SAFETY: same allocator, same layout.
                        Heap::Jemalloc => unsafe { tikv_jemallocator::Jemalloc.dealloc(p, layout) },
                        // SAFETY: same allocator, same layout.
                        Heap::Mimalloc => unsafe { mimalloc::MiMalloc.dealloc(p, layout) },
                    }
                }
                "ok".to_string()
            }
            ["pressure", l] => match (level(l), &heap) {
                (Some(l), Heap::Ebb(h)) if !keep => {
                    format!("ok {}", h.handle_pressure(l).map_err(io::Error::other)?)
                }
                (Some(_), _) => "ok 0".to_string(),
                (None, _) => "error level is low, medium or critical".to_string(),
            },
            ["stats"] => match &heap {
                Heap::Ebb(h) => {
                    let s = h.stats();
                    let c = h.thp_coverage().map_err(io::Error::other)?;
                    format!(
                        "ok {} {} {} {} {} {} {}",
                        s.live_bytes,
                        s.free_held_bytes,
                        s.released_bytes,
                        c.rss,
                        c.anon_huge_pages,
                        c.lazy_free,
                        s.splits
                    )
                }
                _ => "error stats are for ebb heaps".to_string(),
            },
            ["exit"] => {
                writeln!(out, "ok")?;
                out.flush()?;
                return Ok(());
            }
            _ => format!("error unknown command {line:?}"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// The parent's handle on an `ebb-heap-child`; killed and reaped on drop.
pub struct HeapChild {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: io::BufReader<std::process::ChildStdout>,
}

impl HeapChild {
    /// Spawns a child holding a heap of `kind`, inside `sandbox` if given.
    pub fn spawn(kind: &str, sandbox: Option<&crate::Sandbox>) -> io::Result<HeapChild> {
        let mut cmd = std::process::Command::new(program()?);
        cmd.arg(kind)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = match sandbox {
            Some(s) => s.spawn(&mut cmd)?,
            None => cmd.spawn()?,
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("child has no stdin/stdout pipe"));
        };
        Ok(HeapChild {
            child,
            stdin,
            stdout: io::BufReader::new(stdout),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command; returns the words after `ok`. A child that died answers with an
    /// error naming how it ended.
    pub fn request(&mut self, command: &str) -> io::Result<Vec<String>> {
        let sent = writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush());
        let mut reply = String::new();
        let read = sent.and_then(|()| self.stdout.read_line(&mut reply));
        if !matches!(read, Ok(n) if n > 0) {
            let status = self.child.wait()?;
            return Err(io::Error::other(format!(
                "ebb-heap-child died during {command:?}: {status}"
            )));
        }
        let mut words = reply.split_whitespace();
        if words.next() == Some("ok") {
            Ok(words.map(str::to_string).collect())
        } else {
            Err(io::Error::other(format!(
                "ebb-heap-child answered {:?} to {command:?}",
                reply.trim_end()
            )))
        }
    }

    /// `stats` parsed: live, free_held, released, rss, anon_huge, lazy_free, splits.
    pub fn stats(&mut self) -> io::Result<[u64; 7]> {
        let w = self.request("stats")?;
        let mut r = [0u64; 7];
        for (i, v) in r.iter_mut().enumerate() {
            *v = w
                .get(i)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad stats reply {w:?}")))?;
        }
        Ok(r)
    }

    /// Whether the child has ended, and how.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for HeapChild {
    fn drop(&mut self) {
        // Still our unreaped child, so the pid cannot have been recycled.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
