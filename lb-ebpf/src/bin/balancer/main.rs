//! `xlb_balancer`: the XDP load balancer.
//!
//! parse → VIP lookup (miss: `XDP_PASS`) → connection table → Maglev table → IP-in-IP
//! encapsulation → `XDP_TX` / `XDP_REDIRECT`. Malformed frames are dropped and counted by
//! reason, never forwarded.
//!
//! Layout: `maps` (every map), `lookup` (VIPs, config), `select` (backend choice and flow
//! recording), `encap` (tunnel headers, next hop), `icmp` (errors to backends, too-big
//! replies), `account` (per-VIP / per-backend traffic). Parsers live in `lb_ebpf::parse`.
#![no_std]
#![no_main]
// One atomic add for the least-connection counters (see select.rs): BPF inline asm is
// unstable in Rust; the BPF build uses RUSTC_BOOTSTRAP like every aya program built on stable.
#![feature(asm_experimental_arch)]

mod account;
mod encap;
mod icmp;
mod lookup;
mod maps;
mod select;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    counters::{Drop, Event, Pass},
    flow::FlowKey,
    maps::{VipKey, CFG_F_ICMP_TOO_BIG},
};
use lb_ebpf::{
    parse::{
        self, ETH_P_IP, ETH_P_IPV6, FRAG_NONE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, L3,
    },
    stats::bump,
    subprog::{pack, unpack},
};
use maps::STATS;

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    match balance(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => {
            bump(&STATS, reason.slot());
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
    match l3.proto {
        IPPROTO_TCP | IPPROTO_UDP => unpack(forward_flow(ctx, &l3)),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => unpack(forward_icmp(ctx, &l3)),
        _ => Ok(pass(Pass::NotVip)),
    }
}

/// A TCP/UDP packet: to its VIP's backend, or to the kernel if it is not for a VIP.
/// A separate BPF function (not inlined): the verifier limits the combined stack of a
/// call chain to 512 bytes, and keeping the parse state and the forwarding state in
/// separate frames keeps each chain short.
#[inline(never)]
fn forward_flow(ctx: &XdpContext, l3: &L3) -> u64 {
    pack(forward_flow_stage(ctx, l3))
}

#[inline(always)]
fn forward_flow_stage(ctx: &XdpContext, l3: &L3) -> Result<u32, Drop> {
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
    // A known flow needs no VIP lookup (see select.rs); only new ones meet the scheduler.
    let mut target = core::mem::MaybeUninit::<select::Target>::uninit();
    if unpack(select::pinned(&flow, l4.tcp_flags, target.as_mut_ptr()))? == select::NOT_PINNED
        && unpack(schedule(&flow, l4.tcp_flags, target.as_mut_ptr()))? == NOT_A_VIP
    {
        return Ok(pass(Pass::NotVip));
    }
    // SAFETY: `pinned` (PINNED) or `schedule` (SCHEDULED) wrote it; other outcomes returned.
    let target = unsafe { target.assume_init() };
    let cfg = lookup::config()?;
    let outer = encap::overhead(select::usable(target.idx).ok_or(Drop::BadBackend)?);
    if cfg.mtu != 0 && (l3.l3_len() + outer) as u32 > cfg.mtu {
        if cfg.flags & CFG_F_ICMP_TOO_BIG == 0 {
            return Err(Drop::TooBig);
        }
        return unpack(icmp::too_big(ctx, l3, cfg.mtu - outer as u32));
    }
    let bytes = l3.l3_len() as u64;
    let verdict = unpack(encap::forward(ctx, l3, &target))?;
    account::traffic(target.vip_id, target.idx, bytes, target.new_flow != 0);
    Ok(verdict)
}

/// `schedule`: the flow's destination is no VIP.
const NOT_A_VIP: u32 = 0;
/// `schedule`: a backend was picked and the flow recorded.
const SCHEDULED: u32 = 1;

/// A flow the connection table does not pin: its VIP's scheduler picks a backend into
/// `out` and records the flow. Its own BPF function, keeping the VIP lookup's state off
/// the forwarding call chain (verifier stack limit).
#[inline(never)]
fn schedule(flow: &FlowKey, tcp_flags: u8, out: *mut select::Target) -> u64 {
    let vip_key = VipKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        proto: flow.proto,
        family: flow.family,
    };
    let Some(vip) = lookup::vip(&vip_key) else {
        return pack(Ok(NOT_A_VIP));
    };
    match unpack(select::pick(flow, &vip, true, tcp_flags, out)) {
        Ok(_) => pack(Ok(SCHEDULED)),
        Err(d) => pack(Err(d)),
    }
}

/// An ICMP packet: errors about VIP flows go down the flow's tunnel; the rest is the host's.
/// Its own BPF function, keeping its state off the entry's frame (verifier stack limit).
#[inline(never)]
fn forward_icmp(ctx: &XdpContext, l3: &L3) -> u64 {
    pack(forward_icmp_stage(ctx, l3))
}

#[inline(always)]
fn forward_icmp_stage(ctx: &XdpContext, l3: &L3) -> Result<u32, Drop> {
    let mut target = core::mem::MaybeUninit::<select::Target>::uninit();
    if unpack(icmp::route(ctx, l3, target.as_mut_ptr()))? == icmp::NOT_OURS {
        return Ok(pass(Pass::NotVip));
    }
    // SAFETY: `route` wrote it when it returned ROUTED.
    let target = unsafe { target.assume_init() };
    let verdict = unpack(encap::forward(ctx, l3, &target))?;
    bump(&STATS, Event::IcmpForwarded.slot());
    Ok(verdict)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
