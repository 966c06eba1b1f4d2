//! The purgeable cache against the real kernel: a model of insert/get/remove/pressure
//! (proptest), real purges in a squeezed memory cgroup (needs root and the cgroup v1 memory
//! controller; runs on the lab machine), and a pressure Monitor driving the cache.
//! The sandboxed tests move this test process into the sandbox: nextest runs each test in
//! its own process, and the process moves back before the sandbox is removed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ebb::cache::{CacheOptions, PurgeableCache};
use ebb::pressure::{Level, Monitor, Source};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, usize, u8),
    Get(u8),
    Remove(u8),
    Pressure(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..24u8, 0..9000usize, any::<u8>()).prop_map(|(k, n, b)| Op::Insert(k, n, b)),
        4 => (0..24u8).prop_map(Op::Get),
        1 => (0..24u8).prop_map(Op::Remove),
        1 => (0..3u8).prop_map(Op::Pressure),
    ]
}

fn value(len: usize, b: u8) -> Vec<u8> {
    (0..len).map(|i| b.wrapping_add((i % 251) as u8)).collect()
}

/// A plain LRU with the same byte budget and the same Critical policy.
#[derive(Default)]
struct Model {
    map: HashMap<u8, (Vec<u8>, u64)>,
    tick: u64,
    budget: usize,
}

impl Model {
    fn bytes(&self) -> usize {
        self.map.values().map(|(v, _)| v.len()).sum()
    }
    fn evict_to(&mut self, target: usize) {
        while self.bytes() > target {
            let k = *self.map.iter().min_by_key(|(_, (_, t))| *t).unwrap().0;
            self.map.remove(&k);
        }
    }
    fn insert(&mut self, k: u8, v: Vec<u8>) {
        self.map.remove(&k);
        self.evict_to(self.budget - v.len());
        self.tick += 1;
        self.map.insert(k, (v, self.tick));
    }
    fn touch(&mut self, k: u8) {
        self.tick += 1;
        if let Some(e) = self.map.get_mut(&k) {
            e.1 = self.tick;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every value returned equals the model's; a value the model has but the cache does
    /// not must have been counted as purged (the kernel may discard unpinned chunks at any
    /// time); budgets and evictions follow the model.
    #[test]
    fn cache_matches_an_lru_model(ops in proptest::collection::vec(op(), 1..120)) {
        let budget = 48 << 10;
        let cache = PurgeableCache::new(CacheOptions { budget, chunk_size: 16 << 10, max_pinned_chunks: 2 });
        let mut model = Model { budget, ..Model::default() };
        for op in ops {
            match op {
                Op::Insert(k, n, b) => {
                    let v = value(n, b);
                    cache.insert(k, &v).unwrap();
                    model.insert(k, v);
                }
                Op::Get(k) => {
                    let purged = cache.stats().purged;
                    let got = cache.get(&k).map(|h| h.to_vec());
                    match (got, model.map.get(&k)) {
                        (Some(g), Some((want, _))) => { prop_assert_eq!(&g, want); model.touch(k); }
                        (None, None) => {}
                        // Only once purges made the cache evict less than the model.
                        (Some(_), None) => prop_assert!(cache.stats().purged > 0, "cache returned a value the model lacks"),
                        (None, Some(_)) => {
                            prop_assert!(cache.stats().purged > purged, "a miss that was neither absent nor purged");
                            model.map.remove(&k);
                        }
                    }
                }
                Op::Remove(k) => {
                    let removed = cache.remove(&k);
                    let had = model.map.remove(&k).is_some();
                    prop_assert!(removed || !had || cache.stats().purged > 0);
                }
                Op::Pressure(l) => {
                    let level = [Level::Low, Level::Medium, Level::Critical][l as usize];
                    cache.handle_pressure(level);
                    if level == Level::Critical {
                        // The cache halves what it holds; entries it lost to purges are
                        // already gone from the model only if seen, so compare by bytes.
                        prop_assert!(cache.stats().bytes as usize <= model.bytes() / 2 + 1);
                        let keep: Vec<u8> = model.map.keys().copied().collect();
                        for k in keep {
                            if cache.get(&k).is_none() {
                                model.map.remove(&k);
                            } else {
                                model.touch(k);
                            }
                        }
                    }
                }
            }
            let s = cache.stats();
            prop_assert!(s.bytes as usize <= budget);
            prop_assert!(s.pinned_chunks <= 2);
        }
    }
}

struct Inside {
    home: ebb::cgroup::MemoryCgroup,
    sandbox: Option<ebb_lab::Sandbox>,
}

impl Inside {
    fn new(hint: &str, limit: u64) -> Inside {
        let pid = std::process::id();
        let home = ebb::cgroup::own_memory_cgroup(pid)
            .unwrap()
            .expect("this test needs a memory cgroup (root)");
        let sandbox = ebb_lab::Sandbox::new(ebb_lab::SandboxConfig {
            name_hint: hint.into(),
            memory_limit: Some(limit),
            swap_limit: Some(0),
        })
        .expect("creating a memory cgroup (needs root and the memory controller)");
        sandbox.add(pid).unwrap();
        Inside {
            home,
            sandbox: Some(sandbox),
        }
    }
    fn sandbox(&self) -> &ebb_lab::Sandbox {
        self.sandbox.as_ref().unwrap()
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = self.home.add_process(std::process::id());
        drop(self.sandbox.take());
    }
}

const N: u32 = 4000;
const LEN: usize = 10_000;

fn fill(cache: &PurgeableCache<u32>) {
    for k in 0..N {
        cache.insert(k, &value(LEN, k as u8)).unwrap();
    }
}

/// Every key is either a miss or exactly its value; returns (hits, misses).
fn check_all(cache: &PurgeableCache<u32>) -> (u32, u32) {
    let (mut hits, mut misses) = (0, 0);
    for k in 0..N {
        match cache.get(&k) {
            Some(v) => {
                assert!(*v == value(LEN, k as u8)[..], "entry {k} returned damaged");
                hits += 1;
            }
            None => misses += 1,
        }
    }
    (hits, misses)
}

#[test]
fn squeezed_cache_loses_entries_as_misses_never_damaged() {
    let inside = Inside::new("cache-test", 64 << 20);
    let cache = PurgeableCache::new(CacheOptions {
        budget: 48 << 20,
        ..CacheOptions::default()
    });
    fill(&cache); // ~40 MiB
    cache.handle_pressure(Level::Medium);
    assert_eq!(cache.stats().pinned_chunks, 0);
    let mut hog = ebb_lab::Hog::spawn(Some(inside.sandbox())).unwrap();
    hog.fill(40 << 20)
        .expect("the hog fits once the unpinned chunks are discarded");
    drop(hog);
    let (hits, misses) = check_all(&cache);
    let s = cache.stats();
    eprintln!("hits {hits} misses {misses} {s:?}");
    assert!(s.purged > 0, "the squeeze purged nothing: {s:?}");
    assert_eq!(u64::from(misses), s.purged);
    drop(inside);
}

#[test]
fn attached_monitor_unpins_under_pressure() {
    let inside = Inside::new("cache-monitor", 64 << 20);
    let cache = PurgeableCache::new(CacheOptions {
        budget: 48 << 20,
        max_pinned_chunks: 1 << 20,
        ..CacheOptions::default()
    });
    fill(&cache);
    assert!(
        cache.stats().pinned_chunks > 100,
        "everything starts pinned"
    );
    let monitor = Monitor::new().unwrap();
    monitor
        .add(Source::watermark(inside.sandbox().path()))
        .unwrap();
    monitor
        .add(Source::v1_pressure_level(inside.sandbox().path()))
        .unwrap();
    cache.attach(&monitor);
    let mut hog = ebb_lab::Hog::spawn(Some(inside.sandbox())).unwrap();
    // Ramp up slowly so that the monitor sees usage cross 95 % (Medium) and the cache lets
    // go before the limit is reached.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut total = 0u64;
    while total < (40 << 20) && Instant::now() < deadline {
        if hog.alloc(2 << 20).is_err() {
            break;
        }
        total += 2 << 20;
        std::thread::sleep(Duration::from_millis(150));
    }
    let s = cache.stats();
    eprintln!("hog got {} MiB; {s:?}", total >> 20);
    assert!(
        s.pinned_chunks < 10,
        "the monitor's Medium event should have unpinned the idle chunks: {s:?}"
    );
    assert!(
        total >= 24 << 20,
        "the hog should get the memory the cache let go"
    );
    drop(hog);
    let _ = check_all(&cache);
    drop(monitor);
    drop(inside);
}
