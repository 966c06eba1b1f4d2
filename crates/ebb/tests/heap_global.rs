//! `ebb::heap::HugeAlloc` as this test binary's `#[global_allocator]`: large allocations come
//! from the page heap, small ones (and the heap's own bookkeeping) from System.

use ebb::heap::HugeAlloc;

#[global_allocator]
static GLOBAL: HugeAlloc = HugeAlloc::new(64 << 10, 4 << 30);

fn in_heap(p: *const u8) -> bool {
    GLOBAL
        .heap()
        .is_some_and(|h| h.reservation().contains(&(p as usize)))
}

/// One test (the binary's only one), so no other test allocates meanwhile.
#[test]
fn large_allocations_come_from_the_heap_small_ones_from_system() {
    let small = vec![1u8; 1000];
    assert!(!in_heap(small.as_ptr()));
    let mut big = vec![7u8; 1 << 20];
    assert!(in_heap(big.as_ptr()), "a 1 MiB Vec is not in the heap");
    assert_eq!(big.as_ptr() as usize % 4096, 0);
    let live = GLOBAL.stats().unwrap().live_bytes;
    assert!(live >= 1 << 20);

    // Growth moves between spans and keeps the contents.
    big.resize(3 << 20, 9);
    assert!(in_heap(big.as_ptr()));
    assert!(big[..1 << 20].iter().all(|&b| b == 7) && big[1 << 20..].iter().all(|&b| b == 9));

    // Zeroed allocations read zero, also when they reuse dirty freed pages.
    drop(big);
    for _ in 0..4 {
        let z = vec![0u8; 2 << 20];
        assert!(in_heap(z.as_ptr()));
        assert!(z.iter().all(|&b| b == 0));
        let mut d = vec![0u8; 2 << 20];
        d.fill(0xee);
    }

    // Threads churning large and small allocations at once.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut keep = Vec::new();
                for i in 0..300usize {
                    let n = (64 << 10) * (1 + (i * 7 + t) % 13);
                    let mut v = vec![t as u8; n];
                    v[n - 1] = i as u8;
                    keep.push(v);
                    keep.push(vec![0u8; 100]);
                    if keep.len() > 20 {
                        let v = keep.swap_remove(i % keep.len());
                        assert!(v[..v.len() - 1].iter().all(|&b| b == t as u8 || b == 0));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let st = GLOBAL.stats().unwrap();
    assert_eq!(
        st.live_bytes + st.free_held_bytes + st.released_bytes,
        st.committed_bytes
    );
    assert!(st.live_bytes < live + (1 << 20), "leaked spans: {st:?}");
    drop(small);
}
