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
/// The ports come last in both keys: [`entry`] hashes the last word apart from the rest.
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
        0,
        pair(flow.ports_word(), flow.proto_word()),
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
    1 + (cpu << bits) + set_of(key, bits)
}

/// Multiplicative hashing, twice. The words before the last (the addresses) are folded
/// (the rotations keep equal words, the same prefix twice, from cancelling) and multiplied;
/// the last word (ports, protocol) goes into a second product, whose top bits are the set.
/// One client's sequential source ports then land in sets evenly spaced around the table,
/// as Fibonacci hashing spaces consecutive keys. A single product of everything folded, as
/// before, put 53 % of 1024 such flows in a set with another flow (random flows: 22 %):
/// ways to compare, mispredicted branches, and three-flow sets that miss on every packet.
#[inline(always)]
fn set_of<const N: usize>(key: &[u64; N], bits: u32) -> u32 {
    let mut folded = 0u64;
    let mut i = 0;
    while i + 1 < N {
        folded ^= key[i].rotate_left(29 * i as u32);
        i += 1;
    }
    let last = if N == 0 { 0 } else { key[N - 1] };
    let mixed = (folded.wrapping_mul(GOLDEN) ^ last).wrapping_mul(GOLDEN);
    (mixed >> (64 - bits)) as u32
}

/// 2^64 divided by the golden ratio, odd: the multiplier of Fibonacci hashing.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

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

    /// Sets holding more than one of `keys`, as a share of the keys, over `2^bits` sets.
    fn shared_share<const N: usize>(keys: &[[u64; N]], bits: u32) -> f64 {
        let mut per_set = std::collections::HashMap::new();
        for k in keys {
            *per_set.entry(entry(k, 0, bits)).or_insert(0u32) += 1;
        }
        let shared: u32 = per_set.values().filter(|&&n| n > 1).sum();
        f64::from(shared) / keys.len() as f64
    }

    fn v4(src: u32, sport: u16) -> [u64; V4_WORDS] {
        key_v4(&FlowKeyV4 {
            src,
            dst: 0x0101_12c6,
            sport_be: sport.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        })
    }

    /// Not random numbers, so that the test is the same on every run: a fixed LCG.
    fn lcg(state: &mut u64) -> u32 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (*state >> 32) as u32
    }

    #[test]
    fn one_clients_sequential_ports_rarely_share_a_set() {
        // The forwarding bench's pattern: 1024 consecutive source ports of one client over
        // the 4096 sets of a CPU. Placed at random, 22 % of them would share a set.
        let bench: Vec<_> = (1024..2048u16).map(|p| v4(0x0a00_12c6, p)).collect();
        assert_eq!(shared_share(&bench, 12), 0.0);
        // Other clients, starting ports and services: 16 fixed draws. The old single
        // product averaged 41 % here.
        let mut state = 11;
        let mut total = 0.0;
        for _ in 0..16 {
            let client = lcg(&mut state);
            let base = lcg(&mut state) as u16;
            let keys: Vec<_> = (0..1024u16)
                .map(|i| v4(client, base.wrapping_add(i)))
                .collect();
            total += shared_share(&keys, 12);
        }
        assert!(total / 16.0 < 0.10, "mean share {}", total / 16.0);
        // IPv6 (2048 sets): no worse than random placement (1 - e^-0.5 = 39 %).
        let keys: Vec<_> = (0..1024u16)
            .map(|i| {
                key_v6(&FlowKey {
                    src: [0xfd, 0, 0, 0x0a00_0000],
                    dst: [0xfd, 0, 0, 0x0100_0000],
                    sport_be: (20_000 + i).to_be(),
                    dport_be: 443u16.to_be(),
                    proto: 6,
                    family: crate::addr::FAMILY_V6,
                    _pad: [0; 2],
                })
            })
            .collect();
        let share = shared_share(&keys, 11);
        assert!(share < 0.45, "IPv6: {share}");
    }

    #[test]
    fn many_clients_spread_like_random_placement() {
        // 1024 flows in 4096 sets placed at random share a set 22 % of the time
        // (1 - e^-0.25). Random clients and ports, then one port from 1024 addresses.
        let mut state = 7;
        let random: Vec<_> = (0..1024)
            .map(|_| v4(lcg(&mut state), lcg(&mut state) as u16))
            .collect();
        let share = shared_share(&random, 12);
        assert!(share < 0.30, "random flows: {share}");
        let clients: Vec<_> = (0..1024u32)
            .map(|i| {
                v4(
                    u32::from_be_bytes([198, 18, (i >> 8) as u8, i as u8]).to_be(),
                    40_000,
                )
            })
            .collect();
        let share = shared_share(&clients, 12);
        assert!(share < 0.30, "one port per client: {share}");
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
