//! QUIC server-ID routing (`lb_common::quic`): the backend a new flow's connection ID
//! names, for VIPs with `VIP_F_QUIC`.
//!
//! Only flows the connection table does not know get here (the scheduler's path): a QUIC
//! connection's first path is placed by its VIP's scheduler and recorded like any flow, and
//! its server then hands the client connection IDs that name it. When the client's address
//! or port changes, its packets arrive as a new flow, and the ID in them, not the new
//! 5-tuple's hash, says where the connection lives.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    counters::Event,
    maps::VipInfo,
    quic::{self, QuicServerKey, VipQuic, QUIC_HEAD},
};
use lb_ebpf::{ptr::read, stats::bump};

use crate::{
    maps::{QUIC_SERVERS, STATS},
    select::usable,
};

/// UDP header length: the QUIC packet follows it.
const UDP_HLEN: usize = 8;

/// The index of the usable backend of `vip` that the QUIC packet at `l4_off` (a UDP
/// header; the IP packet ends at `l3_end`) names, or 0: not a short-header packet of the
/// VIP's configuration, or a server ID no usable backend of the VIP has (counted, and the
/// scheduler then places the flow). A drained backend still gets its connections' new
/// paths: they are no new connections.
#[inline(always)]
pub fn named_backend(ctx: &XdpContext, vip: &VipInfo, l4_off: usize, l3_end: usize) -> u32 {
    let Some(cfg) = VipQuic::from_flags(vip.flags) else {
        return 0;
    };
    let at = l4_off + UDP_HLEN;
    // Inside the IP packet: bytes behind it are Ethernet padding, whatever they hold.
    if at + QUIC_HEAD > l3_end {
        return 0;
    }
    let Some(head) = read::<[u8; QUIC_HEAD]>(ctx, at) else {
        return 0;
    };
    let Some(server_id) = quic::server_id(&head, cfg) else {
        return 0;
    };
    let key = QuicServerKey {
        vip_id: vip.vip_id,
        server_id,
    };
    // SAFETY: a map lookup; the value is copied out at once.
    let named = unsafe { QUIC_SERVERS.get(&key) }.copied();
    match named {
        Some(n) if usable(n.backend).is_some_and(|b| b.generation == n.generation) => {
            bump(&STATS, Event::QuicRouted.slot());
            n.backend
        }
        _ => {
            bump(&STATS, Event::QuicUnknownServer.slot());
            0
        }
    }
}
