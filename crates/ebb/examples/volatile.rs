//! Volatile memory in a few lines: fill a region, unpin it, let the kernel decide, pin it
//! again and rebuild exactly what was lost.
//!
//! `cargo run --release -p ebb --example volatile` (on an idle machine nothing is lost; run
//! it inside a small memory cgroup next to a memory hog to watch pages go).
use ebb::volatile::{self, VolatileRegion};

const PAGE: usize = 4096;

fn page_value(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

fn main() -> Result<(), volatile::Error> {
    let mut region = VolatileRegion::new(64 << 20)?;
    println!(
        "region of {} MiB, purge unit {} KiB, purgeable: {}",
        region.len() >> 20,
        region.purge_unit() >> 10,
        region.is_purgeable()
    );
    for (i, page) in region
        .pin()
        .unwrap_or_else(|p| p.into_pinned())
        .chunks_mut(PAGE)
        .enumerate()
    {
        page.fill(page_value(i));
    }
    // The guard is gone: unpinned. Wait a little for the kernel to need memory.
    std::thread::sleep(std::time::Duration::from_secs(2));
    match region.pin() {
        Ok(pinned) => {
            let intact = pinned
                .chunks(PAGE)
                .enumerate()
                .all(|(i, p)| p.iter().all(|b| *b == page_value(i)));
            println!("nothing was lost; every byte intact: {intact}");
        }
        Err(mut purged) => {
            println!("{} pages lost: rebuilding them", purged.lost_pages());
            let lost = purged.lost().to_vec();
            let pinned = purged.pinned();
            for range in lost {
                for at in range.step_by(PAGE) {
                    pinned[at..at + PAGE].fill(page_value(at / PAGE));
                }
            }
        }
    }
    println!("{:?}", volatile::process_stats());
    Ok(())
}
