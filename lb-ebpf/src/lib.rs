//! Code shared by xlb's XDP programs.
//!
//! Each XDP object is a `[[bin]]` under `src/bin/` with its own maps; what they share lives
//! here: bounds-checked packet access, the header parsers, checksums and counter helpers.
//!
//! Layout:
//! - [`ptr`]: the one bounds-checked accessor every read and write goes through.
//! - [`parse`]: Ethernet (+ one 802.1Q tag), IPv4 (options), IPv6 (extension headers),
//!   TCP/UDP ports, ICMP — one function per header.
//! - [`csum`]: Internet checksum helpers for headers we build.
//! - [`stats`]: per-CPU counter increments.
//! - [`subprog`]: passing results across BPF-to-BPF calls.
#![no_std]

/// The programs cannot unwind or print; the verifier proves they never panic, so this is
/// never reached (one handler for every XDP object).
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

pub mod csum;
pub mod parse;
pub mod ptr;
pub mod stats;
pub mod subprog;
