//! A fixed 512-bit set: one bit per 4 KiB page of a 2 MiB hugepage.

/// Bits in one set: the base pages of one PMD-sized hugepage on x86_64.
pub(crate) const BITS: usize = 512;
const WORDS: usize = BITS / 64;

/// A set of page indices `0..512`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct Bits([u64; WORDS]);

/// A mask of the bits `lo..hi` (`lo < hi <= 64`) of one word.
fn word_mask(lo: usize, hi: usize) -> u64 {
    debug_assert!(lo < hi && hi <= 64);
    let top = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
    top & !((1u64 << lo) - 1)
}

impl Bits {
    /// Every bit set.
    pub(crate) const FULL: Bits = Bits([u64::MAX; WORDS]);
    /// No bit set.
    pub(crate) const EMPTY: Bits = Bits([0; WORDS]);

    /// Calls `f(word_index, mask)` for each word that `start..start+len` touches.
    fn for_words(start: usize, len: usize, mut f: impl FnMut(usize, u64)) {
        debug_assert!(start + len <= BITS);
        let end = start + len;
        let mut i = start;
        while i < end {
            let w = i / 64;
            let hi = (end - w * 64).min(64);
            f(w, word_mask(i % 64, hi));
            i = w * 64 + hi;
        }
    }

    /// A set holding exactly `start..start+len`.
    pub(crate) fn range(start: usize, len: usize) -> Bits {
        let mut b = Bits::EMPTY;
        b.set(start, len);
        b
    }

    /// Sets `start..start+len`.
    pub(crate) fn set(&mut self, start: usize, len: usize) {
        Self::for_words(start, len, |w, m| self.0[w] |= m);
    }

    /// Clears `start..start+len`.
    pub(crate) fn clear(&mut self, start: usize, len: usize) {
        Self::for_words(start, len, |w, m| self.0[w] &= !m);
    }

    /// How many of `start..start+len` are set.
    pub(crate) fn count_in(&self, start: usize, len: usize) -> usize {
        let mut n = 0;
        Self::for_words(start, len, |w, m| {
            n += (self.0[w] & m).count_ones() as usize
        });
        n
    }

    /// Whether bit `i` is set.
    #[cfg(test)]
    pub(crate) fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    /// How many bits are set.
    pub(crate) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether no bit is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The complement.
    pub(crate) fn not(&self) -> Bits {
        Bits(self.0.map(|w| !w))
    }

    /// The intersection.
    pub(crate) fn and(&self, o: &Bits) -> Bits {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a &= b;
        }
        r
    }

    /// The union.
    pub(crate) fn or(&self, o: &Bits) -> Bits {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a |= b;
        }
        r
    }

    /// The first set bit at or after `from`, or `BITS`.
    pub(crate) fn next_set(&self, from: usize) -> usize {
        if from >= BITS {
            return BITS;
        }
        let mut w = from / 64;
        let mut word = self.0[w] & !((1u64 << (from % 64)) - 1);
        loop {
            if word != 0 {
                return w * 64 + word.trailing_zeros() as usize;
            }
            w += 1;
            if w == WORDS {
                return BITS;
            }
            word = self.0[w];
        }
    }

    /// The first clear bit at or after `from`, or `BITS`.
    fn next_clear(&self, from: usize) -> usize {
        if from >= BITS {
            return BITS;
        }
        let mut w = from / 64;
        let mut word = !self.0[w] & !((1u64 << (from % 64)) - 1);
        loop {
            if word != 0 {
                return w * 64 + word.trailing_zeros() as usize;
            }
            w += 1;
            if w == WORDS {
                return BITS;
            }
            word = !self.0[w];
        }
    }

    /// The maximal runs of set bits, as `(start, len)`, in ascending order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let s = self.next_set(pos);
            if s >= BITS {
                return None;
            }
            let e = self.next_clear(s);
            pos = e;
            Some((s, e - s))
        })
    }

    /// The length of the longest run of set bits.
    pub(crate) fn longest_run(&self) -> usize {
        if *self == Bits::FULL {
            return BITS;
        }
        self.runs().map(|(_, l)| l).max().unwrap_or(0)
    }

    /// The start of the shortest run of set bits at least `n` long (best fit; the lowest
    /// such run on ties), if any.
    pub(crate) fn best_fit(&self, n: usize) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (s, l) in self.runs() {
            if l >= n && best.is_none_or(|(_, bl)| l < bl) {
                best = Some((s, l));
                if l == n {
                    break;
                }
            }
        }
        best.map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_runs_and_counts() {
        let mut b = Bits::EMPTY;
        b.set(3, 70);
        b.set(200, 1);
        b.set(500, 12);
        assert_eq!(b.count(), 83);
        assert_eq!(b.count_in(60, 20), 13);
        let runs: Vec<_> = b.runs().collect();
        assert_eq!(runs, vec![(3, 70), (200, 1), (500, 12)]);
        assert_eq!(b.longest_run(), 70);
        assert_eq!(b.best_fit(1), Some(200));
        assert_eq!(b.best_fit(5), Some(500));
        assert_eq!(b.best_fit(71), None);
        b.clear(0, 512);
        assert!(b.is_empty());
        assert_eq!(Bits::FULL.longest_run(), 512);
        assert_eq!(Bits::FULL.not(), Bits::EMPTY);
        assert!(Bits::range(0, 512) == Bits::FULL);
        assert!(Bits::range(5, 1).get(5) && !Bits::range(5, 1).get(6));
    }
}
