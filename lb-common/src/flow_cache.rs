//! Where the balancer's per-CPU flow cache keeps a flow (`lb-ebpf/src/bin/balancer/cache.rs`):
//! its key words and its entry index. Pure, so tests can place flows where they want.
//!
//! Entry 0 of each cache map is never used: CPU `c`'s sets are entries
//! `1 + c × sets ..`, and a map of one entry is a cache that no CPU reaches (how
//! `xlb run --no-flow-cache` turns it off).

use crate::flow::{FlowKey, FlowKeyV4};

/// Words of an IPv4 key: `FlowKeyV4`'s 16 bytes.
pub const V4_WORDS: usize = 2;
/// Words of an IPv6 key: `FlowKey`'s 40 bytes and a zero word, which makes a way 64 bytes.
pub const V6_WORDS: usize = 6;

/// An IPv4 key as the cache compares it, in its memory layout (composed from fields: in
/// BPF, reading the 4-aligned key as `u64`s would compile to byte loads).
#[inline(always)]
pub fn key_v4(key: &FlowKeyV4) -> [u64; V4_WORDS] {
    let ports = u32::from(key.sport_be) | u32::from(key.dport_be) << 16;
    [pair(key.src, key.dst), pair(ports, u32::from(key.proto))]
}

/// An IPv6 flow's key as the cache compares it (see [`key_v4`]).
#[inline(always)]
pub fn key_v6(flow: &FlowKey) -> [u64; V6_WORDS] {
    [
        pair(flow.src[0], flow.src[1]),
        pair(flow.src[2], flow.src[3]),
        pair(flow.dst[0], flow.dst[1]),
        pair(flow.dst[2], flow.dst[3]),
        pair(flow.ports_word(), flow.proto_word()),
        0,
    ]
}

/// Two 32-bit words as one, `a` first in memory (little-endian).
#[inline(always)]
fn pair(a: u32, b: u32) -> u64 {
    u64::from(a) | u64::from(b) << 32
}

/// The map entry of `key`'s set on CPU `cpu`, with `2^bits` sets per CPU.
#[inline(always)]
pub fn entry<const N: usize>(key: &[u64; N], cpu: u32, bits: u32) -> u32 {
    // Multiplicative hashing: the top bits of the product depend on every input bit; the
    // rotations keep equal words (the same prefix twice) from cancelling, and move the
    // ports (low bits of the last word) away from the addresses.
    let mut folded = 0u64;
    for (i, w) in key.iter().enumerate() {
        folded ^= w.rotate_left(29 * i as u32);
    }
    let set = (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as u32;
    1 + (cpu << bits) + set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_inside_their_cpus_part_and_skip_entry_0() {
        let bits = 4;
        for cpu in 0..3u32 {
            for port in 0..200u16 {
                let key = FlowKeyV4 {
                    src: 0x0a00_12c6,
                    dst: 0x0101_12c6,
                    sport_be: port,
                    dport_be: 80u16.to_be(),
                    proto: 6,
                    _pad: [0; 3],
                };
                let e = entry(&key_v4(&key), cpu, bits);
                assert!((1 + (cpu << bits)..1 + ((cpu + 1) << bits)).contains(&e));
            }
        }
    }

    #[test]
    fn key_words_follow_the_keys_memory_layout() {
        let key = FlowKeyV4 {
            src: 0x0a00_12c6,
            dst: 0x0101_12c6,
            sport_be: 0x3412,
            dport_be: 0x5000,
            proto: 17,
            _pad: [0; 3],
        };
        // SAFETY: FlowKeyV4 is repr(C), 16 bytes of plain integers.
        let raw: [u8; 16] = unsafe { core::mem::transmute(key) };
        let words = key_v4(&key);
        assert_eq!(words[0].to_le_bytes(), raw[..8]);
        assert_eq!(words[1].to_le_bytes(), raw[8..]);
    }
}
