//! VIP and configuration lookups.

use lb_common::{
    counters::Drop,
    maps::{LbConfig, VipInfo, VipKey, PROTO_ANY},
};
use lb_ebpf::parse::L3;

use crate::maps::{CONFIG, VIPS};

/// The service at `key`, if it is one (address-only markers are not services).
#[inline(always)]
pub fn vip(key: &VipKey) -> Option<VipInfo> {
    // SAFETY: the value stays valid while the program runs (RCU); copied out at once.
    let info = unsafe { *VIPS.get_ptr(key)? };
    Some(info)
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
