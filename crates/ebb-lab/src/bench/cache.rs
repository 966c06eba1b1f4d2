//! `ebb bench cache`: [`ebb::cache::PurgeableCache`] against a plain in-memory LRU of the
//! same byte budget, each in a [`Sandbox`] squeezed by a neighbour.
//!
//! Each cache runs in a child process (`ebb-cache-worker`, whose logic is [`worker_main`]) so
//! that an OOM kill is observable. The child fills its cache to the budget, says `warm`, and
//! then serves a skewed stream of gets, regenerating and inserting on a miss, printing its
//! counters as it goes. Once it is warm, a [`Hog`] in the same sandbox (protected from the
//! OOM killer with `oom_score_adj` -1000, as a foreground neighbour would be) takes memory
//! the cache's budget assumed. The plain LRU cannot give any back and is OOM-killed (there
//! is no swap in the sandbox); ebb's cache has its idle chunks unpinned (at most
//! `max_pinned_chunks` stay pinned, and a pressure [`ebb::pressure::Monitor`] on its own
//! cgroup unpins the rest), the kernel discards them, and its gets turn into misses counted
//! as purged, while it keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Hog, Sandbox, SandboxConfig};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A shorter, smaller run.
    pub quick: bool,
}

/// A benchmark error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox could not be made (needs root and a memory cgroup controller).
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::sandbox::Error),
    /// The neighbour failed to start.
    #[error("hog: {0}")]
    Hog(#[from] crate::hog::Error),
    /// The worker program was not found next to this executable (build the workspace's bins).
    #[error(
        "ebb-cache-worker not found (looked at {searched:?}; set EBB_CACHE_WORKER or `cargo build --bins`)"
    )]
    NoWorker {
        /// Paths tried.
        searched: Vec<PathBuf>,
    },
    /// Spawning or talking to the worker failed.
    #[error("cache worker: {0}")]
    Io(#[from] std::io::Error),
}

/// One cache's run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheRun {
    /// `ebb` or `plain`.
    pub kind: String,
    /// Gets served (up to the end or the kill).
    pub gets: u64,
    /// Hits / gets.
    pub hit_rate: f64,
    /// Hits.
    pub hits: u64,
    /// Misses (absent, evicted or purged).
    pub misses: u64,
    /// Entries lost to the kernel (ebb only).
    pub purged: u64,
    /// Values returned that differ from what was stored.
    pub corrupt: u64,
    /// Whether the worker was OOM-killed (SIGKILL).
    pub killed: bool,
    /// Whether the neighbour got its memory.
    pub neighbour_ok: bool,
}

/// The report; its JSON is the contract of `ebb bench cache --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// ebb's PurgeableCache.
    pub ebb: CacheRun,
    /// The plain LRU.
    pub plain: CacheRun,
    /// Workers OOM-killed (both runs).
    pub kills: u64,
    /// The sandbox's memory limit.
    pub limit_bytes: u64,
    /// The caches' byte budget.
    pub budget_bytes: u64,
    /// What the neighbour takes.
    pub neighbour_bytes: u64,
}

impl Report {
    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "caches of {} MiB in a {} MiB sandbox (no swap), a neighbour takes {} MiB\n  {:<6} {:>9} {:>8} {:>9} {:>8} {:>7} {:>7}\n",
            self.budget_bytes >> 20,
            self.limit_bytes >> 20,
            self.neighbour_bytes >> 20,
            "cache",
            "gets",
            "hit rate",
            "purged",
            "corrupt",
            "killed",
            "nbr ok"
        );
        for r in [&self.plain, &self.ebb] {
            s.push_str(&format!(
                "  {:<6} {:>9} {:>8.3} {:>9} {:>8} {:>7} {:>7}\n",
                r.kind, r.gets, r.hit_rate, r.purged, r.corrupt, r.killed, r.neighbour_ok
            ));
        }
        s.push_str(&format!("kills: {}\n", self.kills));
        s
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The value of `key`: `len` bytes, deterministic, not compressible.
fn value_of(key: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = u64::from(key) << 20;
    while v.len() < len {
        x = splitmix(x);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A plain in-memory LRU of byte values with a byte budget: the baseline.
#[derive(Debug, Default)]
pub struct PlainLru {
    map: HashMap<u32, (Vec<u8>, u64)>,
    lru: BTreeMap<u64, u32>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

impl PlainLru {
    /// An empty LRU holding at most `budget` bytes of values.
    pub fn new(budget: usize) -> Self {
        PlainLru {
            budget,
            ..PlainLru::default()
        }
    }

    /// The value of `key`, marking it recently used.
    pub fn get(&mut self, key: u32) -> Option<&[u8]> {
        self.tick += 1;
        let tick = self.tick;
        let (_, t) = self.map.get_mut(&key)?;
        let old = std::mem::replace(t, tick);
        self.lru.remove(&old);
        self.lru.insert(tick, key);
        self.map.get(&key).map(|(v, _)| v.as_slice())
    }

    /// Stores `value`, evicting the least recently used beyond the budget.
    pub fn insert(&mut self, key: u32, value: Vec<u8>) {
        if let Some((v, t)) = self.map.remove(&key) {
            self.bytes -= v.len();
            self.lru.remove(&t);
        }
        while self.bytes + value.len() > self.budget {
            let Some((_, k)) = self.lru.pop_first() else {
                break;
            };
            if let Some((v, _)) = self.map.remove(&k) {
                self.bytes -= v.len();
            }
        }
        self.tick += 1;
        self.bytes += value.len();
        self.lru.insert(self.tick, key);
        self.map.insert(key, (value, self.tick));
    }
}

/// The worker's counters, one line of `key=value` words.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    gets: u64,
    hits: u64,
    misses: u64,
    purged: u64,
    corrupt: u64,
}

impl Counters {
    fn line(&self) -> String {
        format!(
            "stats gets={} hits={} misses={} purged={} corrupt={}",
            self.gets, self.hits, self.misses, self.purged, self.corrupt
        )
    }

    fn parse(line: &str) -> Option<Counters> {
        let rest = line.strip_prefix("stats ")?;
        let mut c = Counters::default();
        for w in rest.split_whitespace() {
            let (k, v) = w.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "gets" => c.gets = v,
                "hits" => c.hits = v,
                "misses" => c.misses = v,
                "purged" => c.purged = v,
                "corrupt" => c.corrupt = v,
                _ => {}
            }
        }
        Some(c)
    }
}

/// The child side (`ebb-cache-worker KIND BUDGET VALUE_LEN SECONDS`): fill a cache of KIND
/// (`ebb` or `plain`) to BUDGET bytes of VALUE_LEN-byte values, print `warm`, then serve gets
/// for SECONDS, printing a `stats …` line every 10 000 gets and at the end.
pub fn worker_main(args: &[String]) -> Result<(), String> {
    let [kind, budget, len, secs] = args else {
        return Err("usage: ebb-cache-worker ebb|plain BUDGET VALUE_LEN SECONDS".into());
    };
    let budget: usize = budget.parse().map_err(|e| format!("budget: {e}"))?;
    let len: usize = len.parse().map_err(|e| format!("value length: {e}"))?;
    let secs: u64 = secs.parse().map_err(|e| format!("seconds: {e}"))?;
    let keys = (budget / len) as u32;
    // The key space is twice what fits: a skewed stream with a working set that fits.
    let space = keys * 2;
    let mut out = std::io::stdout().lock();
    let mut c = Counters::default();
    let mut x = 0x5eedu64;
    let mut next_key = || {
        x = splitmix(x);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u) * f64::from(space)) as u32
    };
    let end_after = Duration::from_secs(secs);
    match kind.as_str() {
        "plain" => {
            let mut cache = PlainLru::new(budget);
            for k in 0..keys {
                cache.insert(k, value_of(k, len));
            }
            writeln!(out, "warm").map_err(|e| e.to_string())?;
            let start = Instant::now();
            while start.elapsed() < end_after {
                let k = next_key();
                c.gets += 1;
                match cache.get(k) {
                    Some(v) => {
                        c.hits += 1;
                        c.corrupt += u64::from(v != value_of(k, len).as_slice());
                    }
                    None => {
                        c.misses += 1;
                        cache.insert(k, value_of(k, len));
                    }
                }
                if c.gets % 10_000 == 0 {
                    writeln!(out, "{}", c.line()).map_err(|e| e.to_string())?;
                }
            }
        }
        "ebb" => {
            use ebb::cache::{CacheOptions, PurgeableCache};
            let cache = PurgeableCache::new(CacheOptions {
                budget,
                ..CacheOptions::default()
            });
            // A monitor on this process's own cgroup (the sandbox): Medium unpins all idle
            // chunks, Critical also drops the LRU half.
            let monitor = ebb::pressure::Monitor::auto().ok();
            if let Some(m) = &monitor {
                cache.attach(m);
            }
            for k in 0..keys {
                cache
                    .insert(k, &value_of(k, len))
                    .map_err(|e| e.to_string())?;
            }
            writeln!(out, "warm").map_err(|e| e.to_string())?;
            let start = Instant::now();
            while start.elapsed() < end_after {
                let k = next_key();
                c.gets += 1;
                let hit = cache.get(&k).map(|v| *v == value_of(k, len)[..]);
                match hit {
                    Some(same) => {
                        c.hits += 1;
                        c.corrupt += u64::from(!same);
                    }
                    None => {
                        c.misses += 1;
                        cache
                            .insert(k, &value_of(k, len))
                            .map_err(|e| e.to_string())?;
                    }
                }
                if c.gets % 10_000 == 0 {
                    c.purged = cache.stats().purged;
                    writeln!(out, "{}", c.line()).map_err(|e| e.to_string())?;
                }
            }
            c.purged = cache.stats().purged;
        }
        other => return Err(format!("unknown cache kind {other:?} (ebb or plain)")),
    }
    writeln!(out, "{}", c.line()).map_err(|e| e.to_string())?;
    writeln!(out, "done").map_err(|e| e.to_string())?;
    Ok(())
}

fn worker_program() -> Result<PathBuf, Error> {
    crate::proto::locate("EBB_CACHE_WORKER", "ebb-cache-worker")
        .map_err(|searched| Error::NoWorker { searched })
}

fn run_one(
    kind: &str,
    limit: u64,
    budget: u64,
    neighbour: u64,
    secs: u64,
) -> Result<CacheRun, Error> {
    let sandbox = Sandbox::new(SandboxConfig {
        name_hint: format!("bench-cache-{kind}"),
        memory_limit: Some(limit),
        swap_limit: Some(0),
    })?;
    let mut cmd = Command::new(worker_program()?);
    cmd.args([kind, &budget.to_string(), "4000", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = sandbox.spawn(&mut cmd)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no worker stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut warm = false;
    for line in lines.by_ref() {
        if line? == "warm" {
            warm = true;
            break;
        }
    }
    let mut run = CacheRun {
        kind: kind.to_string(),
        ..CacheRun::default()
    };
    if warm {
        let mut hog = Hog::spawn(Some(&sandbox))?;
        // The neighbour is the one that must live: the kernel should take from the cache.
        let _ = std::fs::write(format!("/proc/{}/oom_score_adj", hog.pid()), "-1000");
        let reader = std::thread::spawn(move || {
            let mut last = Counters::default();
            for line in lines.map_while(Result::ok) {
                if let Some(c) = Counters::parse(&line) {
                    last = c;
                }
            }
            last
        });
        run.neighbour_ok = hog.fill(neighbour).is_ok();
        let status = child.wait()?;
        run.killed = crate::hog::killed_by_sigkill(&status);
        let c = reader.join().unwrap_or_default();
        run.gets = c.gets;
        run.hits = c.hits;
        run.misses = c.misses;
        run.purged = c.purged;
        run.corrupt = c.corrupt;
        run.hit_rate = if c.gets > 0 {
            c.hits as f64 / c.gets as f64
        } else {
            0.0
        };
        drop(hog);
    } else {
        let status = child.wait()?;
        run.killed = crate::hog::killed_by_sigkill(&status);
    }
    Ok(run)
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let (limit, budget, neighbour, secs) = if opts.quick {
        (160u64 << 20, 96u64 << 20, 96u64 << 20, 4)
    } else {
        (320u64 << 20, 224u64 << 20, 192u64 << 20, 10)
    };
    let plain = run_one("plain", limit, budget, neighbour, secs)?;
    let ebb = run_one("ebb", limit, budget, neighbour, secs)?;
    Ok(Report {
        kills: u64::from(plain.killed) + u64::from(ebb.killed),
        ebb,
        plain,
        limit_bytes: limit,
        budget_bytes: budget,
        neighbour_bytes: neighbour,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--quick` run as a test: the plain LRU is OOM-killed, ebb's cache survives the
    /// same squeeze with purged entries and nothing returned damaged.
    #[test]
    fn quick_plain_dies_ebb_survives() {
        let r = run(&Options { quick: true }).unwrap();
        eprintln!("{}", r.render());
        assert!(r.plain.killed, "{r:?}");
        assert!(!r.ebb.killed, "{r:?}");
        assert!(r.ebb.neighbour_ok, "{r:?}");
        assert!(r.ebb.purged > 0, "{r:?}");
        assert_eq!(r.ebb.corrupt + r.plain.corrupt, 0, "{r:?}");
    }

    #[test]
    fn plain_lru_keeps_its_budget() {
        let mut lru = PlainLru::new(10_000);
        for k in 0..10 {
            lru.insert(k, vec![k as u8; 3000]);
        }
        assert!(lru.get(9).is_some() && lru.get(8).is_some() && lru.get(7).is_some());
        assert!(lru.get(6).is_none());
        assert!(lru.bytes <= 10_000);
    }

    #[test]
    fn counters_round_trip() {
        let c = Counters {
            gets: 5,
            hits: 3,
            misses: 2,
            purged: 1,
            corrupt: 0,
        };
        let p = Counters::parse(&c.line()).unwrap();
        assert_eq!(
            (p.gets, p.hits, p.misses, p.purged, p.corrupt),
            (5, 3, 2, 1, 0)
        );
    }
}
