//! VIP and configuration lookups.

use lb_common::{
    counters::Drop,
    maps::{
        LbConfig, SourceRange, VipInfo, VipKey, CFG_F_ALL_PORTS, PROTO_ANY, SOURCE_RANGE_VIP_BITS,
    },
};
use lb_ebpf::parse::L3;

use crate::maps::{Scratch, CONFIG, SOURCE_RANGES, VIPS};

/// The service at `key`, if it is one (address-only markers are not services).
#[inline(always)]
pub fn vip(key: &VipKey) -> Option<VipInfo> {
    // SAFETY: the value stays valid while the program runs (RCU); copied out at once.
    let info = unsafe { *VIPS.get_ptr(key)? };
    Some(info)
}

/// The service of a new flow to `key`: the VIP on its port, else the all-ports VIP of its
/// address, looked up only while one exists (`CFG_F_ALL_PORTS`), so that traffic for no
/// VIP pays one flag test, not a second hash lookup. A VIP on the port comes first. The
/// second lookup reuses `key` (its port zeroed) rather than a copy: the balancer's call
/// chain is near BPF's 512-byte stack limit.
#[inline(always)]
pub fn service(key: &mut VipKey) -> Option<VipInfo> {
    if let Some(info) = vip(key) {
        return Some(info);
    }
    let cfg = CONFIG.get(0)?;
    if cfg.flags & CFG_F_ALL_PORTS == 0 || key.port_be == 0 {
        return None;
    }
    key.port_be = 0;
    vip(key)
}

/// Whether `vip` admits the new flow in `s` (its client is in one of the VIP's prefixes,
/// `SOURCE_RANGES`), for VIPs that admit only some (`VIP_F_SRC_RANGES`).
#[inline(always)]
pub fn source_allowed(s: *mut Scratch, vip: &VipInfo) -> bool {
    // SAFETY: this CPU's scratch slot; its flow was written by the caller. The key is built
    // there (map memory is a valid key), off the verifier's 512-byte stack.
    unsafe {
        (*s).source.prefix_len = SOURCE_RANGE_VIP_BITS + 128;
        (*s).source.data = SourceRange {
            vip_id: vip.vip_id,
            addr: (*s).flow.src,
        };
        SOURCE_RANGES.get(&(*s).source).is_some()
    }
}

/// True when the packet's destination address carries at least one VIP (the daemon keeps
/// a marker entry per VIP address). Used for traffic without ports: fragments and ICMP.
#[inline(always)]
pub fn is_vip_address(l3: &L3) -> bool {
    let key = VipKey {
        addr: l3.dst,
        port_be: 0,
        proto: PROTO_ANY,
        family: l3.family,
    };
    VIPS.get_ptr(&key).is_some()
}

/// The balancer-wide settings.
#[inline(always)]
pub fn config() -> Result<&'static LbConfig, Drop> {
    CONFIG.get(0).ok_or(Drop::NoSource)
}
