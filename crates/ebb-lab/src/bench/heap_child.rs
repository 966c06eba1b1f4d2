//! `ebb-heap-child`: a process holding one heap (ebb's, a keep-everything one, jemalloc or
//! mimalloc), driven over stdin/stdout, so that the pressure tests and benchmark can put it in
//! a [`Sandbox`](crate::Sandbox) and watch a neighbour, or it, get OOM-killed.
//!
//! | command | effect | reply |
//! | --- | --- | --- |
//! | `fill <bytes> <block>` | allocate `bytes` in blocks of `block`, write every byte | `ok` |
//! | `free` | free every block (the heap now holds the memory free) | `ok` |
//! | `pressure <low\|medium\|critical>` | ebb heaps: `handle_pressure` | `ok <bytes released>` |
//! | `watch <cgroup dir>` | ebb: attach an `ebb::pressure::Monitor` on the cgroup (v1 `memory.pressure_level` and a usage watermark) with `PageHeap::attach`, and record the first event | `ok` |
//! | `events` | ebb: `<count> <first event ms (CLOCK_MONOTONIC)> <released by +100 ms> <released by +1 s> <free at watch>` (bytes) | `ok …` |
//! | `stats` | the heap's accounting and the THP coverage of its reservation | `ok <live> <free_held> <released> <rss> <anon_huge> <lazy_free> <splits>` |
//! | `exit` | exit | `ok` |
//!
//! Arguments: `<kind> [release delay ms]`. Kinds: `ebb` (default options but the delay), `ebb-keep` (never releases: infinite delay, pressure
//! ignored), `jemalloc`, `mimalloc` (their defaults, via their `GlobalAlloc` impls).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::io::{self, BufRead, Write};

use crate::proto::{Answer, exchange};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb::heap::{HeapOptions, PageHeap, Span};
use ebb::pressure::Level;

/// The child program: `$EBB_HEAP_CHILD`, else `ebb-heap-child` next to the current
/// executable or in its parent directory (tests run from `target/<profile>/deps`).
pub fn program() -> io::Result<PathBuf> {
    crate::proto::locate("EBB_HEAP_CHILD", "ebb-heap-child").map_err(|searched| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot find the ebb-heap-child binary (looked at {searched:?}): run `cargo build -p ebb-lab --bins` or set EBB_HEAP_CHILD"
            ),
        )
    })
}

/// The first pressure event as the child saw it: (events so far, its time in ms of
/// `CLOCK_MONOTONIC`, bytes released by +100 ms, by +1 s, free bytes when watching began).
type FirstEvent = Arc<Mutex<(u64, f64, u64, u64, u64)>>;

enum Heap {
    Ebb(Arc<PageHeap>),
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

/// Runs the child: `args` is `[kind, release delay ms]`.
pub fn child_main(args: impl IntoIterator<Item = String>) -> io::Result<()> {
    let mut args = args.into_iter();
    let kind = args.next().unwrap_or_else(|| "ebb".into());
    let delay = args
        .next()
        .and_then(|d| d.parse().ok())
        .map_or(HeapOptions::default().release_delay, Duration::from_millis);
    let ebb = |release_delay| {
        PageHeap::new(HeapOptions {
            reservation: 8 << 30,
            release_delay,
            ..HeapOptions::default()
        })
        .map(|h| Heap::Ebb(Arc::new(h)))
        .map_err(io::Error::other)
    };
    let heap = match kind.as_str() {
        "ebb" => ebb(delay)?,
        "ebb-keep" => ebb(Duration::from_secs(1 << 30))?,
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
    let mut monitor: Option<ebb::pressure::Monitor> = None;
    // (count, first event ms, released by +100 ms, by +1 s, free at watch)
    let first: FirstEvent = Arc::default();
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
            ["watch", dir] => match &heap {
                Heap::Ebb(h) if !keep => {
                    let m = watch(h, dir, &first)?;
                    monitor = Some(m);
                    "ok".to_string()
                }
                _ => "error watch is for ebb heaps".to_string(),
            },
            ["events"] => {
                let f = *first.lock().unwrap_or_else(|e| e.into_inner());
                format!("ok {} {} {} {} {}", f.0, f.1, f.2, f.3, f.4)
            }
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
                drop(monitor.take());
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

/// Milliseconds of `CLOCK_MONOTONIC` (what `Instant` reads on Linux) at `at`.
fn monotonic_ms(at: Instant) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into our stack variable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
    now - at.elapsed().as_secs_f64() * 1e3
}

/// Attaches a monitor of `dir` to the heap, and samples the heap's released bytes 100 ms
/// and 1 s after the first event into `first`.
fn watch(
    heap: &Arc<PageHeap>,
    dir: &str,
    first: &FirstEvent,
) -> io::Result<ebb::pressure::Monitor> {
    use ebb::pressure::{Monitor, Source};
    let monitor = Monitor::new().map_err(io::Error::other)?;
    monitor
        .add(Source::v1_pressure_level(dir))
        .map_err(io::Error::other)?;
    monitor
        .add(Source::watermark(dir))
        .map_err(io::Error::other)?;
    let rx = monitor.subscribe();
    heap.attach(&monitor);
    let s = heap.stats();
    let (base, free) = (s.released_bytes as u64, s.free_held_bytes as u64);
    first.lock().unwrap_or_else(|e| e.into_inner()).4 = free;
    let heap = Arc::clone(heap);
    let first = Arc::clone(first);
    std::thread::spawn(move || {
        let Ok(e) = rx.recv() else { return };
        let released = |h: &PageHeap| (h.stats().released_bytes as u64).saturating_sub(base);
        std::thread::sleep(Duration::from_millis(100).saturating_sub(e.at.elapsed()));
        let r100 = released(&heap);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(e.at.elapsed()));
        let r1 = released(&heap);
        let count = 1 + rx.try_iter().count() as u64;
        *first.lock().unwrap_or_else(|e| e.into_inner()) =
            (count, monotonic_ms(e.at), r100, r1, free);
    });
    Ok(monitor)
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
        HeapChild::spawn_with(kind, &[], sandbox)
    }

    /// Like [`HeapChild::spawn`], with more arguments (the release delay in ms).
    pub fn spawn_with(
        kind: &str,
        args: &[&str],
        sandbox: Option<&crate::Sandbox>,
    ) -> io::Result<HeapChild> {
        let mut cmd = std::process::Command::new(program()?);
        cmd.arg(kind)
            .args(args)
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
        let reply = match exchange(&mut self.child, &mut self.stdin, &mut self.stdout, command)? {
            Answer::Line(reply) => reply,
            Answer::Died(status) => {
                return Err(io::Error::other(format!(
                    "ebb-heap-child died during {command:?}: {status}"
                )));
            }
        };
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
