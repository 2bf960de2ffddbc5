//! Samples of dropped packets for `xlb drops`: a counter says how many packets were
//! dropped for a reason, a sample shows which ones (the flow, the bytes that did not
//! parse). Each CPU samples as many as its budget (`DROP_BUDGET`), which the daemon
//! refills to `drop_samples` every second; beyond it a flood of bad packets costs one
//! per-CPU lookup and a compare each. The forwarding paths never come here.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    counters::Drop,
    maps::{DropSample, DROP_CAPTURE},
};
use lb_ebpf::ptr::frame_len;

use crate::maps::{DROP_BUDGET, DROP_SAMPLES};

/// Samples the frame of `ctx`, dropped for `reason`, if this CPU's budget allows.
#[inline(always)]
pub fn sample(ctx: &XdpContext, reason: Drop) {
    let Some(budget) = DROP_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
    unsafe {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
    }
    xlb_sample_drop(ctx.ctx, reason.slot());
}

/// Writes the frame of `raw`, dropped for the reason in counter slot `reason`, to the ring
/// if it has room (else the drop stays counted only). A global BPF function: verified
/// once, not once for every drop site the entry function reaches it from.
#[no_mangle]
pub extern "C" fn xlb_sample_drop(raw: *mut xdp_md, reason: u32) -> u64 {
    let Some(mut entry) = DROP_SAMPLES.reserve::<DropSample>(0) else {
        return 0;
    };
    let ctx = XdpContext::new(raw);
    let len = frame_len(&ctx);
    // Bounded for the verifier (the copy's length must be a known 1..=DROP_CAPTURE).
    let captured = if len < DROP_CAPTURE {
        len
    } else {
        DROP_CAPTURE
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` is the reserved record (ring memory of its size, ours until
    // submitted); the copy writes `captured` ≤ DROP_CAPTURE bytes into its `frame`.
    unsafe {
        (*sample).time_ns = bpf_ktime_get_ns();
        (*sample).reason = reason;
        (*sample).ifindex = ctx.ingress_ifindex() as u32;
        (*sample).frame_len = len as u32;
        let copied = captured > 0
            && bpf_xdp_load_bytes(
                raw,
                0,
                core::ptr::addr_of_mut!((*sample).frame).cast(),
                captured as u32,
            ) == 0;
        (*sample).captured = if copied { captured as u32 } else { 0 };
    }
    entry.submit(0);
    0
}
