//! The page heap in a program: churn spans, watch the accounting and THP coverage, and let a
//! pressure monitor (MemAvailable here) drive the releases.
//!
//! `cargo run --release -p ebb --example heap`

use std::time::Duration;

use ebb::heap::{HeapOptions, PageHeap};
use ebb::pressure::{Monitor, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let heap = PageHeap::new(HeapOptions {
        reservation: 1 << 30,
        release_delay: Duration::from_millis(500),
        ..HeapOptions::default()
    })?;
    let monitor = Monitor::new()?;
    monitor.add(Source::mem_available())?;
    heap.attach(&monitor);

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live = Vec::new();
    for round in 0..5 {
        for _ in 0..2000 {
            if live.len() < 400 && rnd() % 100 < 60 {
                let pages = 1 + (rnd() % 256) as usize;
                let mut span = heap.alloc(pages)?;
                span.as_mut_slice().fill(round as u8);
                live.push(span);
            } else if !live.is_empty() {
                let i = (rnd() as usize) % live.len();
                heap.free(live.swap_remove(i))?;
            }
        }
        let s = heap.stats();
        let c = heap.thp_coverage()?;
        println!(
            "round {round}: live {:>4} MiB, free held {:>4} MiB, released {:>4} MiB, THP {:>5.1}% of {} MiB resident, splits {}",
            s.live_bytes >> 20,
            s.free_held_bytes >> 20,
            s.released_bytes >> 20,
            c.ratio() * 100.0,
            c.rss >> 20,
            s.splits
        );
    }
    for span in live.drain(..) {
        heap.free(span)?;
    }
    std::thread::sleep(Duration::from_millis(800));
    let s = heap.stats();
    println!(
        "all freed, after the release delay: free held {} MiB, released {} MiB (timed releases: {} MiB, no split)",
        s.free_held_bytes >> 20,
        s.released_bytes >> 20,
        s.releases.delay.bytes >> 20
    );
    Ok(())
}
