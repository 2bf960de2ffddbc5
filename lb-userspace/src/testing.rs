//! Deterministic pseudo-random numbers for the randomized tests (the unit tests here and
//! the ones in `tests/`): the same sequence on every run, so that a failure repeats.

/// A 64-bit linear congruential generator (Knuth's MMIX constants); the high bits come out.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31 bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    /// Uniform enough in `0..n` (`n` > 0; the bias is far below what the tests could see).
    pub fn below(&mut self, n: usize) -> usize {
        self.next_u32() as usize % n
    }

    /// One of `from` (not empty).
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())]
    }
}
