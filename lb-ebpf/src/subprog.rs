//! Results across BPF-to-BPF calls.
//!
//! Stages that are separate BPF functions (to keep each call chain under the verifier's
//! 512-byte combined stack) cannot return a `Result` by value: LLVM returns it through a
//! pointer to the caller's stack, and the verifier refuses a function that returns a stack
//! pointer. So such a stage returns its `Result<u32, Drop>` packed in one register.

use lb_common::counters::{Drop, COUNTER_SLOTS};

const ERR_BIT: u64 = 1 << 32;

/// Packs a stage's result into one register.
#[inline(always)]
pub fn pack(r: Result<u32, Drop>) -> u64 {
    match r {
        Ok(v) => u64::from(v),
        Err(d) => ERR_BIT | u64::from(d.slot()),
    }
}

/// Unpacks what [`pack`] produced.
#[inline(always)]
pub fn unpack(v: u64) -> Result<u32, Drop> {
    if v & ERR_BIT == 0 {
        Ok(v as u32)
    } else {
        Err(Drop::from_slot(v as u32).unwrap_or(Drop::Internal))
    }
}

/// The packed result of a global BPF function (`#[no_mangle] pub extern "C"`), bounded for
/// the verifier, which checks a global function once, on its own, rather than at every
/// call with the caller's state (what keeps the program's verification far from its limit
/// of a million instructions), and so knows nothing of its result. LLVM, which sees the
/// function's body, drops the bounds checks it knows the result passes (an error's counter
/// slot indexes the counters): the mask comes behind a barrier LLVM cannot see through.
/// Such a function's `Ok` values must be below [`COUNTER_SLOTS`].
#[inline(always)]
pub fn from_global(v: u64) -> u64 {
    core::hint::black_box(v) & (ERR_BIT | u64::from(COUNTER_SLOTS - 1))
}
