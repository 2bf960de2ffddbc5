//! `xlb_mss_clamp`: TC egress on backends (`xlb decap --clamp-mss`). Lowers the MSS option
//! of SYN-ACKs sent from a VIP (`CLAMP_SOURCES`) to what `MSS_CLAMP` says, so that the
//! clients' segments still fit the path once the balancer has tunnelled them, without
//! anyone depending on ICMP reaching the client (see `lb_common::mss`).
//!
//! Every packet leaves as it came unless it is exactly that: the program only ever
//! lowers one MSS value and fixes the TCP checksum for it (`bpf_l4_csum_replace`, which
//! leaves a checksum the NIC has yet to compute alone). Anything it cannot read is let go
//! untouched. Reads go through `bpf_skb_load_bytes`, which also sees headers outside the
//! linear part of the buffer.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::{Array, HashMap},
    programs::TcContext,
};
use lb_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    counters::Event,
    maps::DecapAddr,
    mss::MssClamp,
};
use lb_ebpf::{
    parse::{
        eth::{ETH_HLEN, VLAN_HLEN},
        ETH_P_IP, ETH_P_IPV6,
    },
    stats::bump,
};

use crate::STATS;

/// The VIPs whose SYN-ACKs are clamped. Written by `xlb decap`.
#[map]
static CLAMP_SOURCES: HashMap<DecapAddr, u32> = HashMap::with_max_entries(256, 0);

/// The largest MSS per family (slot 0). Written by `xlb decap`.
#[map]
static MSS_CLAMP: Array<MssClamp> = Array::with_max_entries(1, 0);

const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOLEN_MSS: u8 = 4;
/// TCP options take at most 40 bytes, so at most 40 of them (all one-byte NOPs).
const MAX_OPTIONS: usize = 40;
/// `bpf_l4_csum_replace`'s flags: the field changed is 2 bytes wide.
const CSUM_FIELD_2: u64 = 2;

#[classifier]
pub fn xlb_mss_clamp(ctx: TcContext) -> i32 {
    if clamp(&ctx).is_some() {
        bump(&STATS, Event::MssClamped.slot());
    }
    TC_ACT_OK as i32
}

/// Lowers the MSS of a SYN-ACK (or SYN) from a clamped source; `Some` if it did.
#[inline(always)]
fn clamp(ctx: &TcContext) -> Option<()> {
    // Every packet the backend sends passes here, its replies above all: the common case,
    // not a TCP SYN, is told from the buffer directly, without a helper call.
    if !maybe_tcp_syn(ctx) {
        return None;
    }
    let (mut ethertype, mut l3) = (u16::from_be(ctx.load::<u16>(ETH_HLEN - 2).ok()?), ETH_HLEN);
    if ethertype == ETH_P_8021Q {
        ethertype = u16::from_be(ctx.load::<u16>(ETH_HLEN + VLAN_HLEN - 2).ok()?);
        l3 += VLAN_HLEN;
    }
    let limits = MSS_CLAMP.get(0)?;
    let (key, l4, max) = match ethertype {
        ETH_P_IP => {
            let head = ctx.load::<[u8; 20]>(l3).ok()?;
            let ihl = usize::from(head[0] & 0x0f) * 4;
            // Fragments carry no TCP header of their own past the first; SYN-ACKs are small.
            let frag = u16::from_be_bytes([head[6], head[7]]) & 0x3fff;
            if head[0] >> 4 != 4 || ihl < 20 || head[9] != IPPROTO_TCP || frag != 0 {
                return None;
            }
            let src = u32::from_ne_bytes([head[12], head[13], head[14], head[15]]);
            let key = DecapAddr {
                addr: [src, 0, 0, 0],
                family: u32::from(FAMILY_V4),
            };
            (key, l3 + ihl, limits.ipv4)
        }
        ETH_P_IPV6 => {
            let head = ctx.load::<[u32; 6]>(l3).ok()?;
            let first = head[0].to_ne_bytes();
            let next_header = head[1].to_ne_bytes()[2];
            // A stack's SYN-ACK has no extension headers: anything else is left alone.
            if first[0] >> 4 != 6 || next_header != IPPROTO_TCP {
                return None;
            }
            let key = DecapAddr {
                addr: [head[2], head[3], head[4], head[5]],
                family: u32::from(FAMILY_V6),
            };
            (key, l3 + 40, limits.ipv6)
        }
        _ => return None,
    };
    if max == 0 {
        return None;
    }
    // Data offset, flags: all of the TCP header the clamp needs before its options.
    let [data_offset, flags] = ctx.load::<[u8; 2]>(l4 + 12).ok()?;
    if flags & TCP_SYN == 0 {
        return None;
    }
    // SAFETY: the map's values are plain integers; only the presence matters.
    if unsafe { CLAMP_SOURCES.get(&key) }.is_none() {
        return None;
    }
    let end = l4 + usize::from(data_offset >> 4) * 4;
    let at = mss_option(ctx, l4 + 20, end)?;
    let old = ctx.load::<u16>(at).ok()?;
    if u16::from_be(old) <= max {
        return None;
    }
    let new = max.to_be();
    ctx.store(at, &new, 0).ok()?;
    // Offset 16 of the TCP header: its checksum.
    ctx.l4_csum_replace(l4 + 16, u64::from(old), u64::from(new), CSUM_FIELD_2)
        .ok()?;
    Some(())
}

/// The two bytes at `off` of the buffer's linear part, if they lie there. Two, not one:
/// LLVM turns a one-byte check into a comparison the verifier does not take as proof for a
/// read at a variable offset (see `lb_ebpf::ptr`).
#[inline(always)]
fn pair(ctx: &TcContext, off: usize) -> Option<[u8; 2]> {
    let at = ctx.data() + off;
    if at + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: inside the packet's linear data (checked above; the verifier checks again).
    Some(unsafe { (at as *const [u8; 2]).read_unaligned() })
}

/// Whether the packet may be a TCP SYN: `false` only for what certainly is not (another
/// protocol, a segment without SYN). What the linear part does not show is left to the
/// careful path, which reads through `bpf_skb_load_bytes`.
#[inline(always)]
fn maybe_tcp_syn(ctx: &TcContext) -> bool {
    let Some(ethertype) = pair(ctx, ETH_HLEN - 2) else {
        return true;
    };
    let l3 = match u16::from_be_bytes(ethertype) {
        ETH_P_IP | ETH_P_IPV6 => ETH_HLEN,
        ETH_P_8021Q => return true,
        _ => return false,
    };
    let Some([first, _]) = pair(ctx, l3) else {
        return true;
    };
    let (proto, l4) = if first >> 4 == 4 {
        // TTL, protocol.
        (
            pair(ctx, l3 + 8).map(|p| p[1]),
            l3 + usize::from(first & 0x0f) * 4,
        )
    } else {
        // Next header, hop limit.
        (pair(ctx, l3 + 6).map(|p| p[0]), l3 + 40)
    };
    match proto {
        // Data offset, flags.
        Some(IPPROTO_TCP) => pair(ctx, l4 + 12).is_none_or(|p| p[1] & TCP_SYN != 0),
        Some(_) => false,
        None => true,
    }
}

/// Where the MSS option's value is among the options between `start` and `end`, if it is
/// there and well formed. Bounded: one step per option, at most [`MAX_OPTIONS`].
#[inline(always)]
fn mss_option(ctx: &TcContext, start: usize, end: usize) -> Option<usize> {
    let mut at = start;
    for _ in 0..MAX_OPTIONS {
        if at >= end {
            return None;
        }
        let kind = ctx.load::<u8>(at).ok()?;
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => at += 1,
            _ => {
                let len = ctx.load::<u8>(at + 1).ok()?;
                if len < 2 || at + usize::from(len) > end {
                    return None;
                }
                if kind == TCPOPT_MSS {
                    return (len == TCPOLEN_MSS).then_some(at + 2);
                }
                at += usize::from(len);
            }
        }
    }
    None
}
