//! Why a packet was dropped, passed or forwarded.
//!
//! Every reason is a `#[repr(u32)]` enum variant whose discriminant is its slot in the
//! per-CPU `STATS` array ([`COUNTER_SLOTS`] long). Drops use slots 1..32, passes 32..48,
//! events 48..128, so user space can print every slot by name and a reason added here can
//! never be missing from the metrics.

/// Number of slots in the per-CPU `STATS` array.
pub const COUNTER_SLOTS: u32 = 128;

/// The value of a program's `STATS` map: one per CPU, every slot in one value, so that a
/// packet that bumps several counters looks the map up once.
pub type Counters = [u64; COUNTER_SLOTS as usize];

macro_rules! reasons {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:expr, $label:literal;)* }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $value,)*
        }

        impl $name {
            /// Every variant, in slot order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Stable snake_case name used in metrics and `xlb stats`.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }

            /// The variant whose slot is `slot`, if any.
            #[inline(always)]
            pub const fn from_slot(slot: u32) -> Option<Self> {
                match slot {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// Slot in the `STATS` array.
            #[inline(always)]
            pub const fn slot(self) -> u32 {
                self as u32
            }
        }
    };
}

reasons! {
    /// Why a packet was dropped (`XDP_DROP`). Parse errors come first, then policy.
    Drop {
        /// Frame shorter than an Ethernet header.
        EthTruncated = 1, "eth_truncated";
        /// 802.1Q tag announced but cut off.
        VlanTruncated = 2, "vlan_truncated";
        /// IPv4 header cut off.
        Ipv4Truncated = 3, "ipv4_truncated";
        /// IPv4 IHL below 5 or past the end of the frame.
        Ipv4BadIhl = 4, "ipv4_bad_ihl";
        /// IPv4 total length shorter than the header or longer than the frame.
        Ipv4BadLength = 5, "ipv4_bad_length";
        /// IPv6 fixed header cut off, or payload length longer than the frame.
        Ipv6Truncated = 6, "ipv6_truncated";
        /// An IPv6 extension header cut off.
        Ipv6ExtTruncated = 7, "ipv6_ext_truncated";
        /// More IPv6 extension headers than the parser walks (see `MAX_IPV6_EXT_HEADERS`).
        Ipv6ExtChainTooLong = 8, "ipv6_ext_chain_too_long";
        /// TCP or UDP header cut off, or TCP data offset below 5.
        L4Truncated = 9, "l4_truncated";
        /// ICMP header, or the packet it quotes, cut off.
        IcmpTruncated = 10, "icmp_truncated";
        /// IP fragment addressed to a VIP: we cannot see its ports, so we cannot pick the
        /// flow's backend (documented choice: drop and count, like Katran).
        Fragment = 11, "fragment";
        /// The VIP has no backend that can take a new flow.
        NoBackend = 12, "no_backend";
        /// No route to the backend (`bpf_fib_lookup` failed, or forwarding disabled).
        NoRoute = 13, "no_route";
        /// Route found but the neighbour is unresolved; the daemon resolves backends.
        NoNeighbour = 14, "no_neighbour";
        /// `bpf_xdp_adjust_head`/`_tail` refused to grow or shrink the frame.
        AdjustFailed = 15, "adjust_failed";
        /// Encapsulated packet would exceed the MTU and its sender cannot be told (IPv4 without DF).
        TooBig = 16, "too_big";
        /// ICMP error addressed to a VIP quoting a packet that is not from that VIP.
        IcmpNotForVip = 17, "icmp_not_for_vip";
        /// The backend index in the lookup table points to no backend (table out of date).
        BadBackend = 18, "bad_backend";
        /// No outer source address configured for the backend's family.
        NoSource = 19, "no_source";
        /// A program stage returned a value no stage produces (a bug; never expected).
        Internal = 20, "internal";
        /// Decap: the outer header is marked congestion experienced (CE) but the inner
        /// packet is not ECN-capable (Not-ECT): RFC 6040 section 4.2 says drop, since its
        /// sender would never learn of the congestion (`lb_common::ecn`).
        TunnelCeNotEct = 21, "tunnel_ce_not_ect";
        /// Decap: the inner packet's own length (IPv4 total length, IPv6 40 + payload length)
        /// runs past the outer packet's payload. Not stripped, which would hand the stack
        /// bytes from behind the outer packet, and dropped, as the kernel drops the inner
        /// packet of such a tunnel as truncated.
        TunnelInnerTooLong = 22, "tunnel_inner_too_long";
        /// Decap: a tunnel to one of our addresses whose outer IPv4 header checksum is
        /// wrong. Not stripped (its addresses and lengths cannot be trusted) and dropped,
        /// as the kernel's `ip_rcv_core` drops it.
        TunnelBadChecksum = 23, "tunnel_bad_checksum";
        /// Encapsulated packet would exceed the MTU, and its source is no unicast address
        /// an ICMP error may go to (unspecified, loopback, multicast, broadcast, reserved:
        /// RFC 1812 section 4.3.2.7, RFC 4443 section 2.4 (e)), so it is not told.
        TooBigNotUnicast = 24, "too_big_not_unicast";
        /// Encapsulated packet would exceed the MTU, and this CPU has sent
        /// `icmp_rate_limit` ICMP errors this second already (RFC 4443 section 2.4 (f):
        /// a node must limit the rate of its ICMP errors; lb_common::rate_window).
        TooBigRateLimited = 25, "too_big_rate_limited";
        /// A new flow to a VIP that admits only some client prefixes
        /// (`allowed_sources`), from a client outside them.
        SourceDenied = 26, "source_denied";
        /// A new flow of a least-connection VIP (`lc`, `wlc`) when every backend its picks
        /// reached is at its `max_conns`: dropped, as IPVS drops a connection when every
        /// server is over its upper threshold (the client retries).
        BackendsFull = 27, "backends_full";
        /// A new flow of a VIP with `new_flow_rate_limit` beyond this CPU's share of it in
        /// the current second: dropped (a client retries its SYN), as a frontend's session
        /// rate limit does, so that a connection storm does not reach the backends whole.
        VipFlowLimit = 28, "vip_flow_limit";
        /// A new flow of a VIP with `client_flow_rate_limit` from a client (an IPv4
        /// address, an IPv6 /64) that this CPU has admitted that many new flows of the VIP
        /// this second: dropped, the client retries (`lb_common::rate_window`).
        ClientFlowLimit = 29, "client_flow_limit";
    }
}

reasons! {
    /// Why a packet was handed to the kernel untouched (`XDP_PASS`).
    Pass {
        /// Not IPv4 or IPv6 (ARP, LLDP, …).
        NotIp = 32, "not_ip";
        /// IP, but not addressed to a configured VIP.
        NotVip = 33, "not_vip";
        /// Decap: not an IP-in-IP packet.
        NotTunnel = 34, "not_tunnel";
        /// Decap: a tunnel packet whose outer destination is not one of our addresses.
        TunnelNotLocal = 35, "tunnel_not_local";
        /// Decap / parser probe: the frame did not parse; the kernel's own checks decide.
        Malformed = 36, "malformed";
    }
}

reasons! {
    /// Things that happened to packets, counted alongside their verdict.
    Event {
        /// Encapsulated and sent back out of the ingress interface (`XDP_TX`).
        TxEncap = 48, "tx_encap";
        /// Encapsulated and redirected to another interface (`XDP_REDIRECT`).
        RedirectEncap = 49, "redirect_encap";
        /// A new flow got a backend from the lookup table and was recorded (or the kernel
        /// refused the insert; see `flow_not_recorded` for flows left out on purpose).
        NewFlow = 50, "new_flow";
        /// The connection table (or this CPU's cache of it) knew the flow and its backend
        /// was still usable.
        ConnHit = 51, "conn_hit";
        /// A known flow's packet served from this CPU's flow cache (also counted as
        /// `conn_hit`), not from the connection table itself. Next to the other slots a
        /// known flow's packet bumps (48, 51): one cache line of counters, not two.
        FlowCacheHit = 52, "flow_cache_hit";
        /// An ICMP error about a VIP flow was sent to that flow's backend.
        IcmpForwarded = 53, "icmp_forwarded";
        /// The balancer answered an oversized packet with frag-needed / packet-too-big.
        IcmpTooBigSent = 54, "icmp_too_big_sent";
        /// Decap: tunnel removed, inner packet passed to the stack.
        Decapsulated = 55, "decapsulated";
        /// Next hop came from `bpf_fib_lookup` (no cached next hop for the backend).
        FibLookup = 56, "fib_lookup";
        /// Parser probe: a frame parsed completely and was passed.
        Parsed = 57, "parsed";
        /// The connection table knew the flow but its backend is gone: picked again.
        ConnRepick = 58, "conn_repick";
        /// A new flow's packet went to the backend its VIP's hash picks, without a
        /// connection-table entry: this CPU saw more new flows this second than
        /// `record_rate_limit` (lb_common::rate_window).
        FlowNotRecorded = 59, "flow_not_recorded";
        /// A TCP RST of a flow the connection table does not know: forwarded to its VIP's
        /// pick but not recorded, as it ends a connection (an entry would outlive it; a
        /// scan's or a backscatter's RSTs would fill the table).
        UnknownRst = 60, "unknown_rst";
        /// Decap host (`xlb_mss_clamp`, TC egress): a SYN-ACK from a VIP whose MSS option
        /// was lowered to leave room for the tunnel header (`lb_common::mss`).
        MssClamped = 61, "mss_clamped";
        /// A packet of a `stateless` VIP: sent to the backend its hash picks, with no
        /// connection-table entry made for it.
        StatelessPick = 62, "stateless_pick";
        /// A QUIC packet of a flow the connection table did not know, sent to the backend
        /// its connection ID names (`lb_common::quic`): a connection's new path (a client
        /// that moved or was rebound by a NAT, or one another balancer placed).
        QuicRouted = 63, "quic_routed";
        /// A short-header QUIC packet of a flow the table did not know whose connection ID
        /// names a server ID no backend of its VIP has, or one that is down: placed by its
        /// VIP's scheduler like any new flow (a misconfigured ID, or a removed backend).
        QuicUnknownServer = 64, "quic_unknown_server";
        /// An ICMP / ICMPv6 echo request to a VIP's address answered by the balancer
        /// (`icmp_echo`): the VIP answers ping whatever its backends do.
        IcmpEchoReplied = 65, "icmp_echo_replied";
    }
}

/// Name of any slot, for printing a whole `STATS` array.
pub fn slot_name(slot: u32) -> Option<&'static str> {
    Drop::ALL
        .iter()
        .map(|d| (d.slot(), d.name()))
        .chain(Pass::ALL.iter().map(|p| (p.slot(), p.name())))
        .chain(Event::ALL.iter().map(|e| (e.slot(), e.name())))
        .find(|(s, _)| *s == slot)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_their_ranges_and_unique() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        let all = Drop::ALL
            .iter()
            .map(|d| (d.slot(), 1..32))
            .chain(Pass::ALL.iter().map(|p| (p.slot(), 32..48)))
            .chain(Event::ALL.iter().map(|e| (e.slot(), 48..128)));
        for (slot, range) in all {
            assert!(range.contains(&slot), "slot {slot} outside {range:?}");
            assert!(!seen[slot as usize], "slot {slot} used twice");
            seen[slot as usize] = true;
            assert!(slot_name(slot).is_some());
        }
        assert_eq!(slot_name(0), None);
        for d in Drop::ALL {
            assert_eq!(Drop::from_slot(d.slot()), Some(*d));
        }
        assert_eq!(Drop::from_slot(0), None);
    }
}
