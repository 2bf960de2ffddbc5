//! Baseline XDP programs: the floors `cargo xtask bench` measures xlb against, and the
//! `XDP_PASS` program test topologies attach to veth peers (veth delivers `XDP_TX` frames
//! only to a peer that runs an XDP program).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every frame to the stack.
#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: the receive ceiling.
#[xdp]
pub fn xlb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Sends every frame back out untouched: the one-arm forwarding ceiling.
#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
