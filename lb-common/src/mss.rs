//! The TCP MSS a backend may advertise to clients that reach it through the balancer's
//! tunnel (`xlb decap --clamp-mss`).
//!
//! Why: a client sends segments as large as the backend's SYN-ACK allows. The balancer adds
//! a tunnel header to each, so a full-size segment no longer fits the path and the balancer
//! answers it with "fragmentation needed" / "packet too big". A client behind a firewall
//! that drops ICMP never hears that and its upload stalls (a path MTU black hole). A
//! backend whose SYN-ACKs advertise an MSS that leaves room for the tunnel header is never
//! sent a segment too big in the first place.

/// The largest MSS each family's SYN-ACKs may carry (network order is the program's
/// business; these are plain numbers). `0`: that family is not clamped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MssClamp {
    /// SYN-ACKs over IPv4.
    pub ipv4: u16,
    /// SYN-ACKs over IPv6.
    pub ipv6: u16,
}
const _: () = assert!(core::mem::size_of::<MssClamp>() == 4);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no padding, any bit pattern valid.
unsafe impl aya::Pod for MssClamp {}

/// Outer header of an IPv4 tunnel (IPIP, 6in4).
pub const TUNNEL_V4: u32 = 20;
/// Outer header of an IPv6 tunnel (IP6IP6, 4in6).
pub const TUNNEL_V6: u32 = 40;
/// TCP header without options: the MSS counts payload only.
const TCP_HEADER: u32 = 20;
/// Below these a TCP stack would not go anyway (RFC 9293's default send MSS for IPv4;
/// IPv6's minimum MTU of 1280 less its headers): an MTU this small is a mistake to report.
pub const MIN_MSS_V4: u32 = 536;
/// See [`MIN_MSS_V4`].
pub const MIN_MSS_V6: u32 = 1220;

/// The clamp for a link of `mtu` bytes whose tunnels carry an outer header of
/// `tunnel_header` bytes ([`TUNNEL_V4`] or [`TUNNEL_V6`]): the largest segments that still
/// fit once tunnelled. `None` when either family's would fall below its minimum.
pub const fn clamp_for(mtu: u32, tunnel_header: u32) -> Option<MssClamp> {
    let room = mtu.saturating_sub(tunnel_header + TCP_HEADER);
    let ipv4 = room.saturating_sub(20);
    let ipv6 = room.saturating_sub(40);
    if ipv4 < MIN_MSS_V4 || ipv6 < MIN_MSS_V6 || ipv4 > u16::MAX as u32 {
        return None;
    }
    Some(MssClamp {
        ipv4: ipv4 as u16,
        ipv6: ipv6 as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_fit_the_link_once_tunnelled() {
        // IPv4 tunnels on a 1500-byte link: 1440 + 20 TCP + 20 IP + 20 tunnel = 1500.
        assert_eq!(
            clamp_for(1500, TUNNEL_V4),
            Some(MssClamp {
                ipv4: 1440,
                ipv6: 1420
            })
        );
        // IPv6 tunnels: 20 bytes less each.
        assert_eq!(
            clamp_for(1500, TUNNEL_V6),
            Some(MssClamp {
                ipv4: 1420,
                ipv6: 1400
            })
        );
        assert_eq!(
            clamp_for(9000, TUNNEL_V6),
            Some(MssClamp {
                ipv4: 8920,
                ipv6: 8900
            })
        );
    }

    #[test]
    fn links_too_small_for_a_sane_mss_are_refused() {
        // 1280 − 40 − 20 − 40 = 1180 < 1220 for IPv6.
        assert_eq!(clamp_for(1280, TUNNEL_V6), None);
        assert_eq!(clamp_for(0, TUNNEL_V4), None);
        assert_eq!(clamp_for(1320, TUNNEL_V6).map(|c| c.ipv6), Some(1220));
        assert_eq!(clamp_for(u32::MAX, TUNNEL_V4), None);
    }
}
