//! A purgeable cache: byte values in volatile memory that the kernel may take back.
//!
//! [`PurgeableCache`] maps keys to byte values packed into [`VolatileRegion`] chunks (so
//! small values share pages instead of wasting one each). Chunks in use stay pinned; the
//! least recently used beyond [`CacheOptions::max_pinned_chunks`] are unpinned, and under
//! memory pressure every idle chunk is. The kernel may then discard their pages; a later
//! [`get`](PurgeableCache::get) of an entry on a discarded page is a miss, counted as
//! *purged*, and the entry is gone: a value is returned intact or not at all, never damaged.
//!
//! An LRU byte budget bounds the bytes held; inserting beyond it evicts the least recently
//! used entries (counted as *evicted*).
//!
//! Pressure policy, after Chromium's discardable-memory manager:
//! [`handle_pressure`](PurgeableCache::handle_pressure) with [`Level::Medium`] unpins every
//! idle chunk at once; with [`Level::Critical`] it also releases the least recently used half
//! of the bytes outright (their chunks are unmapped when empty). [`attach`](PurgeableCache::attach)
//! does this on every event of a [`Monitor`]: the callback applies the level at once if the
//! cache is free, or the next cache call applies it if a call (or a [`Hit`]) holds it.
//!
//! ```
//! use ebb::cache::{CacheOptions, PurgeableCache};
//! use ebb::pressure::Level;
//!
//! let cache = PurgeableCache::new(CacheOptions { budget: 1 << 20, ..CacheOptions::default() });
//! cache.insert("greeting", b"hello")?;
//! assert_eq!(cache.get(&"greeting").as_deref(), Some(&b"hello"[..]));
//! cache.handle_pressure(Level::Medium); // unpinned: the kernel may now discard it
//! match cache.get(&"greeting") {
//!     Some(v) => assert_eq!(&*v, b"hello"), // still there
//!     None => {}                             // purged: rebuild it
//! }
//! # Ok::<(), ebb::cache::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::pressure::{Level, Monitor};
use crate::volatile::{self, HugeMode, VolatileOptions, VolatileRegion};

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value alone exceeds the byte budget.
    #[error("a value of {len} bytes does not fit the cache's budget of {budget} bytes")]
    TooLarge {
        /// The value's length.
        len: usize,
        /// The budget.
        budget: usize,
    },
    /// Mapping a chunk failed.
    #[error("mapping a cache chunk: {0}")]
    Volatile(#[from] volatile::Error),
}

/// How a cache is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Bytes of values held at most; inserting beyond evicts the least recently used.
    pub budget: usize,
    /// Bytes per chunk (values larger than this get a chunk of their own).
    pub chunk_size: usize,
    /// Chunks kept pinned between calls; the least recently used beyond are unpinned.
    pub max_pinned_chunks: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            budget: 64 << 20,
            chunk_size: 256 << 10,
            max_pinned_chunks: 4,
        }
    }
}

/// The cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Gets that returned a value.
    pub hits: u64,
    /// Gets that returned nothing (absent or purged).
    pub misses: u64,
    /// Entries lost to the kernel discarding their pages.
    pub purged: u64,
    /// Entries dropped by the byte budget or by critical pressure.
    pub evicted: u64,
    /// Bytes of values held now.
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Chunks mapped now.
    pub chunks: u64,
    /// Chunks pinned now.
    pub pinned_chunks: u64,
    /// Bytes of chunks mapped now.
    pub chunk_bytes: u64,
}

struct Chunk {
    region: VolatileRegion,
    /// Bytes handed out (bump allocation).
    used: usize,
    /// Live entries.
    live: usize,
    /// When last pinned or used (cache tick).
    last_use: u64,
}

struct Slot {
    chunk: usize,
    range: Range<usize>,
    tick: u64,
}

struct Inner<K> {
    opts: CacheOptions,
    map: HashMap<K, Slot>,
    lru: BTreeMap<u64, K>,
    chunks: Vec<Option<Chunk>>,
    /// The chunk new small values are appended to.
    open: Option<usize>,
    tick: u64,
    stats: CacheStats,
}

const NO_LEVEL: u8 = 0;

fn level_code(l: Level) -> u8 {
    match l {
        Level::Low => 1,
        Level::Medium => 2,
        Level::Critical => 3,
    }
}

fn code_level(c: u8) -> Option<Level> {
    match c {
        1 => Some(Level::Low),
        2 => Some(Level::Medium),
        3 => Some(Level::Critical),
        _ => None,
    }
}

struct Shared<K> {
    inner: Mutex<Inner<K>>,
    /// The highest level signalled while the cache was busy, applied by the next call.
    pending: AtomicU8,
}

/// A cache of byte values in purgeable memory. See the [module docs](self).
///
/// Methods take `&self` (the state is behind a mutex), so the cache can be shared between
/// threads and a pressure [`Monitor`] can act on it from its own thread.
pub struct PurgeableCache<K> {
    shared: Arc<Shared<K>>,
}

impl<K> std::fmt::Debug for PurgeableCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = self.shared.inner.try_lock().map(|i| i.stats).ok();
        f.debug_struct("PurgeableCache")
            .field("stats", &stats)
            .finish()
    }
}

/// A value found by [`PurgeableCache::get`]: its chunk stays pinned, and the cache locked,
/// while this lives.
pub struct Hit<'a, K: Hash + Eq + Clone> {
    guard: MutexGuard<'a, Inner<K>>,
    pending: &'a AtomicU8,
    chunk: usize,
    range: Range<usize>,
}

impl<K: Hash + Eq + Clone> Deref for Hit<'_, K> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let chunk = self.guard.chunks[self.chunk]
            .as_ref()
            .expect("a hit's chunk is mapped");
        let bytes = chunk
            .region
            .pinned_bytes()
            .expect("a hit's chunk is pinned");
        &bytes[self.range.clone()]
    }
}

impl<K: Hash + Eq + Clone> Drop for Hit<'_, K> {
    fn drop(&mut self) {
        let pending = self.pending.swap(NO_LEVEL, Ordering::AcqRel);
        if let Some(level) = code_level(pending) {
            self.guard.handle_pressure(level);
        }
    }
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for Hit<'_, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hit")
            .field("len", &self.range.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> PurgeableCache<K> {
    /// Has `monitor` apply every pressure event to this cache (see the [module docs](self)).
    /// The monitor holds only a weak reference: dropping the cache ends the effect.
    pub fn attach(&self, monitor: &Monitor) {
        let weak: Weak<Shared<K>> = Arc::downgrade(&self.shared);
        monitor.on_event(move |event| {
            if let Some(shared) = weak.upgrade() {
                shared.signal(event.level);
            }
        });
    }
}

impl<K> Shared<K>
where
    K: Hash + Eq + Clone,
{
    /// Applies `level` now if the cache is free, else leaves it for the next call.
    fn signal(&self, level: Level) {
        self.pending.fetch_max(level_code(level), Ordering::AcqRel);
        if let Ok(mut inner) = self.inner.try_lock() {
            if let Some(level) = code_level(self.pending.swap(NO_LEVEL, Ordering::AcqRel)) {
                inner.handle_pressure(level);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(level) = code_level(self.pending.swap(NO_LEVEL, Ordering::AcqRel)) {
            inner.handle_pressure(level);
        }
        inner
    }
}

impl<K: Hash + Eq + Clone> PurgeableCache<K> {
    /// An empty cache.
    pub fn new(opts: CacheOptions) -> Self {
        let opts = CacheOptions {
            chunk_size: opts.chunk_size.max(crate::sys::page_size()),
            max_pinned_chunks: opts.max_pinned_chunks.max(1),
            ..opts
        };
        PurgeableCache {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    opts,
                    map: HashMap::new(),
                    lru: BTreeMap::new(),
                    chunks: Vec::new(),
                    open: None,
                    tick: 0,
                    stats: CacheStats::default(),
                }),
                pending: AtomicU8::new(NO_LEVEL),
            }),
        }
    }

    /// Stores `value` under `key` (replacing any previous value), evicting least recently
    /// used entries to stay within the budget.
    pub fn insert(&self, key: K, value: &[u8]) -> Result<(), Error> {
        self.shared.lock().insert(key, value)
    }

    /// The value of `key`, if present and not purged. The returned [`Hit`] keeps the cache
    /// locked: drop it before the next call on this cache from the same thread.
    pub fn get(&self, key: &K) -> Option<Hit<'_, K>> {
        let mut guard = self.shared.lock();
        let (chunk, range) = guard.lookup(key)?;
        Some(Hit {
            guard,
            pending: &self.shared.pending,
            chunk,
            range,
        })
    }

    /// Removes `key`; whether it was present (purged entries count as absent).
    pub fn remove(&self, key: &K) -> bool {
        self.shared.lock().remove(key)
    }

    /// Applies a pressure level now: `Low` does nothing; `Medium` unpins every idle chunk;
    /// `Critical` also releases the least recently used half of the bytes.
    pub fn handle_pressure(&self, level: Level) {
        self.shared.lock().handle_pressure(level);
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.shared.lock().stats
    }
}

impl<K: Hash + Eq + Clone> Inner<K> {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn refresh_gauges(&mut self) {
        let chunks = self.chunks.iter().flatten();
        let (mut n, mut pinned, mut bytes) = (0, 0, 0);
        for c in chunks {
            n += 1;
            pinned += u64::from(c.region.is_pinned());
            bytes += c.region.len() as u64;
        }
        self.stats.chunks = n;
        self.stats.pinned_chunks = pinned;
        self.stats.chunk_bytes = bytes;
        self.stats.entries = self.map.len() as u64;
    }

    /// Pins chunk `id` (unpinning the least recently used pinned chunk beyond the limit);
    /// drops the entries on pages the kernel discarded.
    fn pin_chunk(&mut self, id: usize) {
        let tick = self.next_tick();
        let Some(chunk) = self.chunks[id].as_mut() else {
            return;
        };
        chunk.last_use = tick;
        if chunk.region.is_pinned() {
            return;
        }
        let lost = chunk.region.pin_raw();
        if !lost.is_empty() {
            let doomed: Vec<K> = self
                .map
                .iter()
                .filter(|(_, s)| {
                    s.chunk == id
                        && lost
                            .iter()
                            .any(|l| l.start < s.range.end && s.range.start < l.end)
                })
                .map(|(k, _)| k.clone())
                .collect();
            self.stats.purged += doomed.len() as u64;
            for k in doomed {
                self.drop_entry(&k);
            }
        }
        let max = self.opts.max_pinned_chunks;
        let mut pinned: Vec<(u64, usize)> = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_ref()
                    .filter(|c| c.region.is_pinned())
                    .map(|c| (c.last_use, i))
            })
            .collect();
        if pinned.len() > max {
            pinned.sort_unstable();
            for &(_, i) in &pinned[..pinned.len() - max] {
                if let Some(c) = self.chunks[i].as_mut() {
                    c.region.unpin_raw();
                }
            }
        }
    }

    /// Removes an entry's bookkeeping; frees its chunk when it was the last entry.
    fn drop_entry(&mut self, key: &K) -> bool {
        let Some(slot) = self.map.remove(key) else {
            return false;
        };
        self.lru.remove(&slot.tick);
        self.stats.bytes -= slot.range.len() as u64;
        let mut empty = false;
        if let Some(c) = self.chunks[slot.chunk].as_mut() {
            c.live -= 1;
            empty = c.live == 0;
        }
        if empty {
            if self.open == Some(slot.chunk) {
                if let Some(c) = self.chunks[slot.chunk].as_mut() {
                    c.used = 0;
                }
            } else {
                self.chunks[slot.chunk] = None;
            }
        }
        true
    }

    fn lookup(&mut self, key: &K) -> Option<(usize, Range<usize>)> {
        let Some(chunk) = self.map.get(key).map(|s| s.chunk) else {
            self.stats.misses += 1;
            return None;
        };
        self.pin_chunk(chunk);
        // Purged by that pin?
        let tick = self.next_tick();
        let Some(slot) = self.map.get_mut(key) else {
            self.stats.misses += 1;
            self.refresh_gauges();
            return None;
        };
        let old = std::mem::replace(&mut slot.tick, tick);
        let range = slot.range.clone();
        if let Some(k) = self.lru.remove(&old) {
            self.lru.insert(tick, k);
        }
        self.stats.hits += 1;
        self.refresh_gauges();
        Some((chunk, range))
    }

    fn remove(&mut self, key: &K) -> bool {
        let present = self.map.contains_key(key);
        if present {
            // An entry on discarded pages is not there any more: find out.
            let chunk = self.map[key].chunk;
            self.pin_chunk(chunk);
        }
        let removed = self.drop_entry(key);
        self.refresh_gauges();
        removed
    }

    fn evict_to(&mut self, target: u64) {
        while self.stats.bytes > target {
            let Some(k) = self.lru.first_key_value().map(|(_, k)| k.clone()) else {
                break;
            };
            if self.drop_entry(&k) {
                self.stats.evicted += 1;
            }
        }
    }

    fn new_chunk(&mut self, size: usize) -> Result<usize, Error> {
        let region = VolatileRegion::with_options(
            size,
            &VolatileOptions {
                huge: HugeMode::Never,
                name: Some("ebb-cache".into()),
            },
        )?;
        let chunk = Chunk {
            region,
            used: 0,
            live: 0,
            last_use: 0,
        };
        let id = match self.chunks.iter().position(Option::is_none) {
            Some(i) => {
                self.chunks[i] = Some(chunk);
                i
            }
            None => {
                self.chunks.push(Some(chunk));
                self.chunks.len() - 1
            }
        };
        Ok(id)
    }

    fn insert(&mut self, key: K, value: &[u8]) -> Result<(), Error> {
        let len = value.len();
        if len > self.opts.budget {
            return Err(Error::TooLarge {
                len,
                budget: self.opts.budget,
            });
        }
        self.drop_entry(&key);
        self.evict_to((self.opts.budget - len) as u64);
        // Where it goes: the open chunk if it has room, else a new chunk.
        let big = len > self.opts.chunk_size / 2;
        let id = if big {
            self.new_chunk(len.max(1))?
        } else {
            let fits = self.open.and_then(|o| {
                self.chunks[o]
                    .as_ref()
                    .map(|c| (o, c.used + len <= c.region.len()))
            });
            match fits {
                Some((o, true)) => o,
                _ => {
                    // The old open chunk becomes an ordinary chunk: free it if empty.
                    if let Some(o) = self.open.take() {
                        if self.chunks[o].as_ref().is_some_and(|c| c.live == 0) {
                            self.chunks[o] = None;
                        }
                    }
                    let id = self.new_chunk(self.opts.chunk_size)?;
                    self.open = Some(id);
                    id
                }
            }
        };
        self.pin_chunk(id);
        let Some(chunk) = self.chunks[id].as_mut() else {
            // Unreachable: the chunk was just found or made and is freed only when empty
            // and not open, or big and empty (a new big chunk has no entries to lose).
            return Ok(());
        };
        let start = chunk.used;
        let bytes = chunk.region.pinned_bytes_mut().expect("pinned just now");
        bytes[start..start + len].copy_from_slice(value);
        chunk.used += len;
        chunk.live += 1;
        let tick = self.next_tick();
        self.lru.insert(tick, key.clone());
        self.map.insert(
            key,
            Slot {
                chunk: id,
                range: start..start + len,
                tick,
            },
        );
        self.stats.bytes += len as u64;
        self.refresh_gauges();
        Ok(())
    }

    fn handle_pressure(&mut self, level: Level) {
        if level >= Level::Medium {
            for c in self.chunks.iter_mut().flatten() {
                c.region.unpin_raw();
            }
        }
        if level >= Level::Critical {
            let target = self.stats.bytes / 2;
            self.evict_to(target);
        }
        self.refresh_gauges();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PurgeableCache<u32> {
        PurgeableCache::new(CacheOptions {
            budget: 64 << 10,
            chunk_size: 16 << 10,
            max_pinned_chunks: 2,
        })
    }

    #[test]
    fn insert_get_remove() {
        let c = small();
        c.insert(1, b"one").unwrap();
        c.insert(2, b"two!").unwrap();
        assert_eq!(c.get(&1).as_deref(), Some(&b"one"[..]));
        assert_eq!(c.get(&2).as_deref(), Some(&b"two!"[..]));
        assert!(c.remove(&1));
        assert!(!c.remove(&1));
        assert!(c.get(&1).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries, s.bytes), (2, 1, 1, 4));
        // Small values share a chunk.
        assert_eq!(s.chunks, 1);
    }

    #[test]
    fn budget_evicts_least_recently_used() {
        let c = small();
        for k in 0..20u32 {
            c.insert(k, &[k as u8; 4096]).unwrap();
            if k >= 1 {
                // Keep 0 hot.
                assert!(c.get(&0).is_some());
            }
        }
        let s = c.stats();
        assert!(s.bytes <= 64 << 10);
        assert_eq!(s.evicted, 4, "{s:?}");
        assert_eq!(s.entries, 16, "{s:?}");
        assert!(c.get(&0).is_some(), "the hot entry survives");
        assert!(c.get(&1).is_none(), "the coldest entry was evicted");
    }

    #[test]
    fn too_large_is_an_error() {
        let c = small();
        assert!(matches!(
            c.insert(1, &vec![1; 65 << 10]),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn critical_releases_the_lru_half() {
        let c = small();
        for k in 0..8u32 {
            c.insert(k, &[1; 4000]).unwrap();
        }
        c.handle_pressure(Level::Critical);
        let s = c.stats();
        assert_eq!(s.pinned_chunks, 0);
        assert!(s.bytes <= 16_000, "{s:?}");
        assert!(c.get(&0).is_none() && c.get(&7).is_some());
    }
}
