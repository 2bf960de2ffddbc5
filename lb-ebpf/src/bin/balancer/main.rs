//! `xlb_balancer`: the XDP load balancer.
//!
//! parse → VIP lookup (miss: `XDP_PASS`) → connection table → Maglev table → IP-in-IP
//! encapsulation → `XDP_TX` / `XDP_REDIRECT`. Malformed frames are dropped and counted by
//! reason, never forwarded.
//!
//! Layout: `maps` (every map but the cache's), `lookup` (VIPs, config), `select` (backend
//! choice and flow recording), `cache` (per-CPU cache of IPv4 flows), `encap` (tunnel
//! headers, next hop), `icmp` (errors to backends, too-big replies), `account` (per-backend
//! traffic), `drops` (samples of dropped packets), `quic` (QUIC server-ID routing),
//! `gue_checksum` (GUE tunnels' UDP checksum).
//! Parsers live in `lb_ebpf::parse`.
//!
//! A known flow's packet runs in this one function (everything above is inlined); new
//! flows, ICMP, too-big replies and FIB lookups call BPF subprograms. Per-packet state
//! lives in per-CPU scratch memory (`maps::SCRATCH`), not on the 512-byte stack.
#![no_std]
#![no_main]
// One atomic add for the least-connection counters (see select.rs): BPF inline asm is
// unstable in Rust; the BPF build uses RUSTC_BOOTSTRAP like every aya program built on stable.
#![feature(asm_experimental_arch)]

mod account;
mod cache;
mod drops;
mod encap;
mod gue_checksum;
mod icmp;
mod lookup;
mod maps;
mod quic;
mod select;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    addr::FAMILY_V4,
    counters::{Counters, Drop, Event, Pass},
    flow::FlowKey,
    maps::{
        Backend, VipKey, VIP_F_CLIENT_LIMIT, VIP_F_COUNT_ACTIVE, VIP_F_FLOW_LIMIT, VIP_F_SRC_RANGES,
    },
};
use lb_ebpf::{
    parse::{
        self, ETH_P_IP, ETH_P_IPV6, FRAG_NONE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, L3,
    },
    stats::{bump, bump_in, counters},
    subprog::{from_global, pack, unpack},
};
use maps::STATS;

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => {
            bump(&STATS, reason.slot());
            drops::sample(&ctx, reason);
            xdp_action::XDP_DROP
        }
    }
}

/// Counts a pass reason and returns `XDP_PASS`.
#[inline(always)]
fn pass(reason: Pass) -> u32 {
    bump(&STATS, reason.slot());
    xdp_action::XDP_PASS
}

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Drop> {
    let l2 = parse::eth(ctx)?;
    let l3 = match l2.ethertype {
        ETH_P_IP => parse::ipv4(ctx, l2.l3_off)?,
        ETH_P_IPV6 => parse::ipv6(ctx, l2.l3_off)?,
        _ => return Ok(pass(Pass::NotIp)),
    };
    if l3.frag != FRAG_NONE {
        // Fragments to a VIP cannot be placed (no ports in later fragments): documented
        // choice, drop and count. Other fragments are the host's business.
        if lookup::is_vip_address(&l3) {
            return Err(Drop::Fragment);
        }
        return Ok(pass(Pass::NotVip));
    }
    let s = maps::scratch()?;
    // SAFETY: `s` is this CPU's scratch slot (map memory, valid for the whole run). The
    // target is written by `flow_target` (via `pinned` or `xlb_schedule`) or `route` before
    // anyone reads it; the next hop by `encap::forward` when it needs the FIB.
    let (target, hop) = unsafe {
        (
            core::ptr::addr_of_mut!((*s).target),
            core::ptr::addr_of_mut!((*s).hop),
        )
    };
    let stats = counters(&STATS);
    let backend = match l3.proto {
        IPPROTO_TCP | IPPROTO_UDP => match flow_target(ctx, &l3, s, stats)? {
            Routed::Pinned(b) => b,
            // SAFETY: `xlb_schedule` wrote the target.
            Routed::Scheduled => {
                select::usable(unsafe { (*target).idx }).ok_or(Drop::BadBackend)?
            }
            Routed::NotVip => return Ok(pass(Pass::NotVip)),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            match unpack(icmp::route(ctx, &l3, s))? {
                icmp::ROUTED => {}
                // The reply, written in the frame (and counted).
                icmp::ECHOED => return Ok(xdp_action::XDP_TX),
                _ => return Ok(pass(Pass::NotVip)),
            }
            // SAFETY: `route` wrote the target.
            select::usable(unsafe { (*target).idx }).ok_or(Drop::BadBackend)?
        }
        _ => return Ok(pass(Pass::NotVip)),
    };
    // SAFETY: written by `flow_target` or `route` on every path that gets here.
    let target = unsafe { &*target };
    let cfg = lookup::config()?;
    let icmp_error = l3.proto == IPPROTO_ICMP || l3.proto == IPPROTO_ICMPV6;
    let outer = encap::overhead(backend);
    // The path to a backend behind another interface, or over a route with its own MTU,
    // may carry less than our link: the smaller one (0: not known, ours alone).
    let mtu = if backend.mtu != 0 && backend.mtu < cfg.mtu {
        backend.mtu
    } else {
        cfg.mtu
    };
    // ICMP errors are never answered with ICMP errors (RFC 1122, RFC 4443); they are small.
    if !icmp_error && mtu != 0 && (l3.l3_len() + outer) as u32 > mtu {
        return unpack(icmp::answer_too_big(
            ctx,
            &l3,
            cfg,
            mtu.saturating_sub(outer as u32),
        ));
    }
    // ICMP errors are counted by reason only; everything else as its backend's traffic.
    let verdict = encap::forward(ctx, &l3, target, cfg, backend, hop, stats, !icmp_error)?;
    if icmp_error {
        bump_in(stats, Event::IcmpForwarded.slot());
    }
    Ok(verdict)
}

/// What [`flow_target`] found.
enum Routed {
    /// A recorded flow, on this (usable) backend.
    Pinned(&'static Backend),
    /// A new flow, scheduled and recorded.
    Scheduled,
    /// Not for a VIP.
    NotVip,
}

/// The backend for a TCP/UDP packet, into `s.target`. Inlined into the entry function like
/// the rest of what a known flow's packet needs: only new flows, ICMP, too-big replies and
/// FIB lookups call other BPF functions.
#[inline(always)]
fn flow_target(
    ctx: &XdpContext,
    l3: &L3,
    s: *mut maps::Scratch,
    stats: Option<*mut Counters>,
) -> Result<Routed, Drop> {
    let l4 = parse::ports(ctx, l3)?;
    let flow = FlowKey {
        src: l3.src,
        dst: l3.dst,
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: l3.proto,
        family: l3.family,
        _pad: [0; 2],
    };
    // SAFETY: this CPU's scratch slot (see `balance`).
    unsafe { (*s).set_conn_key(&flow) };
    // A known flow needs no VIP lookup (see select.rs); only new ones meet the scheduler.
    let v4 = l3.family == FAMILY_V4;
    if let Some(backend) = select::pinned(s, v4, l4.tcp_flags, stats) {
        return Ok(Routed::Pinned(backend));
    }
    // SAFETY: as above; the scheduler hashes the whole flow.
    unsafe { (*s).complete_flow(&flow) };
    let scheduled = unpack(from_global(xlb_schedule(
        ctx.ctx,
        u32::from(l4.tcp_flags),
        l3.l4_off() as u32,
        l3.l3_end() as u32,
    )))? == SCHEDULED;
    Ok(if scheduled {
        Routed::Scheduled
    } else {
        Routed::NotVip
    })
}

/// `xlb_schedule`: the flow's destination is no VIP.
const NOT_A_VIP: u32 = 0;
/// `xlb_schedule`: a backend was picked and the flow recorded.
const SCHEDULED: u32 = 1;

/// A flow the connection table does not pin (in this CPU's scratch slot): its VIP's
/// scheduler picks a backend into `target` and records the flow. Its own BPF function, and
/// a global one (`subprog::from_global`): new flows only, verified once on their own rather
/// than once for every way the entry function reaches them. The frame (`raw`, with its
/// transport header at `l4_off` and the IP packet's end at `l3_end`) for QUIC VIPs, whose
/// packets may name their backend.
#[no_mangle]
pub extern "C" fn xlb_schedule(
    raw: *mut aya_ebpf::bindings::xdp_md,
    tcp_flags: u32,
    l4_off: u32,
    l3_end: u32,
) -> u64 {
    let s = match maps::scratch() {
        Ok(s) => s,
        Err(d) => return pack(Err(d)),
    };
    // SAFETY: this CPU's scratch slot, its flow written by the caller.
    let flow = unsafe { &(*s).flow };
    let mut vip_key = VipKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        proto: flow.proto,
        family: flow.family,
    };
    let Some(vip) = lookup::service(&mut vip_key) else {
        return pack(Ok(NOT_A_VIP));
    };
    if vip.flags & VIP_F_SRC_RANGES != 0 && !lookup::source_allowed(s, &vip) {
        return pack(Err(Drop::SourceDenied));
    }
    let named = if flow.proto == IPPROTO_UDP {
        quic::named_backend(
            &XdpContext::new(raw),
            &vip,
            l4_off as usize,
            l3_end as usize,
        )
    } else {
        0
    };
    // A named flow is a new path of a connection its backend already has: counted on its
    // first path, and no new flow for the rate limits. The client's limit comes first, so
    // that what it refuses does not use up the VIP's.
    let mut vip = vip;
    if named != 0 {
        vip.flags &= !VIP_F_COUNT_ACTIVE;
    } else {
        if vip.flags & VIP_F_CLIENT_LIMIT != 0 && !maps::client_flow_admitted(s, vip.vip_id) {
            maps::count_limited(vip.vip_id, true);
            return pack(Err(Drop::ClientFlowLimit));
        }
        if vip.flags & VIP_F_FLOW_LIMIT != 0 && !maps::vip_flow_admitted(vip.vip_id) {
            maps::count_limited(vip.vip_id, false);
            return pack(Err(Drop::VipFlowLimit));
        }
    }
    match unpack(select::pick(s, &vip, true, tcp_flags as u8, named)) {
        Ok(_) => pack(Ok(SCHEDULED)),
        Err(d) => pack(Err(d)),
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
