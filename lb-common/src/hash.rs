//! Hashes both sides must compute identically.
//!
//! [`flow_hash`] picks a new flow's lookup-table slot in BPF; user space uses the very same
//! function to explain and predict placement, and a test_run fixture proves the BPF build
//! agrees. It is MurmurHash3 (x86, 32-bit) over the key's words: cheap in BPF (no loops
//! that depend on data, no tables) and well mixed.
//!
//! The Maglev permutation hashes are the same function with other seeds, over a backend's
//! address, so every load balancer with the same backends builds the same table.

use crate::flow::FlowKey;

/// Seed of the flow hash. Changing it moves every new flow: it is part of the wire contract
/// between load balancers that share backends.
pub const FLOW_HASH_SEED: u32 = 0x786c_6231; // "xlb1"
/// Seed of Maglev's `offset` hash.
pub const MAGLEV_OFFSET_SEED: u32 = 0x6d61_6731;
/// Seed of Maglev's `skip` hash.
pub const MAGLEV_SKIP_SEED: u32 = 0x6d61_6732;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn round(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len_bytes: u32) -> u32 {
    h ^= len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3_x86_32 over whole words (the input length is always a multiple of 4).
#[inline(always)]
pub fn murmur3_words(words: &[u32], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < words.len() {
        h = round(h, words[i]);
        i += 1;
    }
    finish(h, (words.len() * 4) as u32)
}

/// Hash of a flow's full 5-tuple: the default lookup-table slot selector.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    // Unrolled by hand: the BPF verifier sees straight-line code.
    let mut h = FLOW_HASH_SEED;
    h = round(h, k.src[0]);
    h = round(h, k.src[1]);
    h = round(h, k.src[2]);
    h = round(h, k.src[3]);
    h = round(h, k.dst[0]);
    h = round(h, k.dst[1]);
    h = round(h, k.dst[2]);
    h = round(h, k.dst[3]);
    h = round(h, k.ports_word());
    h = round(h, k.proto_word());
    finish(h, 40)
}

/// Hash of the client address only: VIPs with source hashing send every flow of a client
/// to the same backend.
#[inline(always)]
pub fn src_hash(k: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = round(h, k.src[0]);
    h = round(h, k.src[1]);
    h = round(h, k.src[2]);
    h = round(h, k.src[3]);
    h = round(h, k.family as u32);
    finish(h, 20)
}

/// How many more hashes least connection tries for a second, distinct candidate.
pub const SECOND_CHOICE_PROBES: u32 = 8;

/// The next of the hashes least connection derives from a flow's hash to find a second
/// candidate in the VIP's table (power of two choices); both sides must agree, so that the
/// control socket can name a flow's two candidates.
#[inline(always)]
pub fn next_probe(h: u32) -> u32 {
    h.rotate_left(16).wrapping_mul(0x9e37_79b1) ^ 0x5bd1_e995
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_murmur3() {
        // Reference values of MurmurHash3_x86_32 (from the algorithm's published test vectors).
        assert_eq!(murmur3_words(&[], 0), 0);
        assert_eq!(murmur3_words(&[], 1), 0x514e_28b7);
        assert_eq!(
            murmur3_words(&[u32::from_le_bytes(*b"abcd")], 0x9747_b28c),
            0xf047_8627
        );
    }

    #[test]
    fn unrolled_flow_hash_equals_generic() {
        let k = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport_be: 0x1234,
            dport_be: 0x5000,
            proto: 6,
            family: 6,
            _pad: [0; 2],
        };
        let words = [1, 2, 3, 4, 5, 6, 7, 8, k.ports_word(), k.proto_word()];
        assert_eq!(flow_hash(&k), murmur3_words(&words, FLOW_HASH_SEED));
        assert_eq!(
            src_hash(&k),
            murmur3_words(&[1, 2, 3, 4, 6], FLOW_HASH_SEED)
        );
    }

    #[test]
    fn every_field_moves_the_hash() {
        let base = FlowKey {
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
            sport_be: 3,
            dport_be: 4,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let h = flow_hash(&base);
        let variants = [
            FlowKey {
                src: [9, 0, 0, 0],
                ..base
            },
            FlowKey {
                dst: [9, 0, 0, 0],
                ..base
            },
            FlowKey {
                sport_be: 9,
                ..base
            },
            FlowKey {
                dport_be: 9,
                ..base
            },
            FlowKey { proto: 17, ..base },
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), h, "{v:?}");
        }
        assert_eq!(
            src_hash(&FlowKey {
                sport_be: 9,
                ..base
            }),
            src_hash(&base)
        );
    }
}
