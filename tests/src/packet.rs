//! Test frame builder and frame describer.
//!
//! [`Pkt`] builds Ethernet frames with correct lengths and checksums (unless a test asks for a
//! bad one), [`ipv4_outer`] / [`ipv6_outer`] / [`eth_frame`] build the expected output of an
//! IP-in-IP encapsulating balancer around an inner packet taken verbatim, and [`describe`] /
//! [`diff_frames`] turn a mismatch between expected and actual frames into a field-by-field
//! report.
//!
//! etherparse writes and parses the plain headers; the things it cannot express (IPv6 extension
//! headers with arbitrary content, ICMP errors quoting arbitrary bytes, IP-in-IP) are built
//! here by hand.

mod describe;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use describe::{describe, diff_frames};

use etherparse::{
    checksum::Sum16BitWords, EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn,
    Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, SingleVlanHeader, TcpHeader, UdpHeader,
    VlanId, VlanPcp,
};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag; [`ip_packet`] and [`describe`] accept it as a single tag too.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

pub const PROTO_HOPOPTS: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_AH: u8 = 51;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_NONXT: u8 = 59;
pub const PROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// IPv4 fragment offset field: 13 bits, in 8-byte units.
const IPV4_FRAG_OFFSET_MAX: u16 = 0x1fff;
/// A checksum that a correct one is never replaced by: readable in a hex dump, and not 0x0000
/// or 0xffff (the two encodings of one's-complement zero, which UDP treats specially).
const BAD_CHECKSUM: u16 = 0xdead;
const BAD_CHECKSUM_ALT: u16 = 0xbeef;

/// An IPv6 extension header for [`Pkt::ipv6_ext`]. The builder fills in "next header" and
/// "header extension length"; the content is used as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Option bytes (everything after the first two header bytes), padded with Pad1/PadN to a
    /// multiple of 8 bytes.
    HopByHop(Vec<u8>),
    /// Option bytes, padded like [`ExtHeader::HopByHop`].
    DestOpts(Vec<u8>),
    /// Everything after the first two header bytes (routing type, segments left, type-specific
    /// data), zero-padded to a multiple of 8 bytes.
    Routing(Vec<u8>),
    /// Fragment header. `offset` is in 8-byte units (13 bits).
    Fragment { offset: u16, more: bool, id: u32 },
    /// Any other protocol number using the 8-octet length rule of RFC 8200 (not AH, whose
    /// length counts 4-octet units); `body` is zero-padded.
    Other { protocol: u8, body: Vec<u8> },
}

/// One PadN option (RFC 8200 section 4.2) `len` bytes long in all (at least 2): as the
/// options of [`ExtHeader::HopByHop`] or [`ExtHeader::DestOpts`], a header of `len + 2`
/// bytes, with no padding added when that is a multiple of 8.
pub fn pad_n(len: usize) -> Vec<u8> {
    let data = u8::try_from(len - 2).expect("a PadN option holds at most 255 data bytes");
    let mut option = vec![1, data];
    option.resize(len, 0);
    option
}

impl ExtHeader {
    fn protocol(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => PROTO_HOPOPTS,
            ExtHeader::DestOpts(_) => PROTO_DSTOPTS,
            ExtHeader::Routing(_) => PROTO_ROUTING,
            ExtHeader::Fragment { .. } => PROTO_FRAGMENT,
            ExtHeader::Other { protocol, .. } => *protocol,
        }
    }

    fn write(&self, next_header: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(next_header);
        out.push(0);
        match self {
            ExtHeader::Fragment { offset, more, id } => {
                assert!(
                    *offset <= IPV4_FRAG_OFFSET_MAX,
                    "fragment offset {offset} > 13 bits"
                );
                // The length byte written above doubles as the reserved byte here.
                out.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                return;
            }
            ExtHeader::HopByHop(body) | ExtHeader::DestOpts(body) => {
                out.extend_from_slice(body);
                push_tlv_padding(out, pad_to_8(out.len() - start));
            }
            ExtHeader::Routing(body) | ExtHeader::Other { body, .. } => {
                out.extend_from_slice(body);
                let pad = pad_to_8(out.len() - start);
                out.resize(out.len() + pad, 0);
            }
        }
        let units = (out.len() - start) / 8 - 1;
        out[start + 1] = u8::try_from(units).expect("extension header longer than 2048 bytes");
    }
}

fn pad_to_8(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Pad1 for a single byte, otherwise one PadN option (RFC 8200 section 4.2).
fn push_tlv_padding(out: &mut Vec<u8>, pad: usize) {
    match pad {
        0 => {}
        1 => out.push(0),
        n => {
            out.push(1);
            out.push((n - 2) as u8);
            out.resize(out.len() + n - 2, 0);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ip {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum L4 {
    /// No transport header: the IP payload is `Pkt::payload` as given.
    None,
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack_seq: u32,
        flags: u8,
        window: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMPv4 (`v6 == false`) or ICMPv6: type, code, bytes 4..8 of the header.
    Icmp {
        v6: bool,
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// Fluent Ethernet frame builder; see the module docs. Setters that only make sense after a
/// particular layer (`.syn()` after `.tcp()`) panic when misused, so a broken fixture fails at
/// the line that builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    dst_mac: Mac,
    src_mac: Mac,
    vlan: Option<u16>,
    ethertype: Option<u16>,
    ip: Option<Ip>,
    ttl: u8,
    tos: u8,
    id: u16,
    df: bool,
    ipv4_options: Vec<u8>,
    fragment: Option<(u16, bool)>,
    exts: Vec<ExtHeader>,
    flow_label: u32,
    protocol: Option<u8>,
    l4: L4,
    payload: Vec<u8>,
    l4_checksum: Option<u16>,
    bad_l4_checksum: bool,
    bad_ip_checksum: bool,
}

impl Pkt {
    /// Starts a frame from `src` to `dst` (argument order as written on the wire is dst, src;
    /// here it reads "from client to LB": `Pkt::eth(CLIENT_MAC, LB_MAC)`).
    pub fn eth(src: Mac, dst: Mac) -> Pkt {
        Pkt {
            dst_mac: dst,
            src_mac: src,
            vlan: None,
            ethertype: None,
            ip: None,
            ttl: 64,
            tos: 0,
            id: 0,
            df: true,
            ipv4_options: Vec::new(),
            fragment: None,
            exts: Vec::new(),
            flow_label: 0,
            protocol: None,
            l4: L4::None,
            payload: Vec::new(),
            l4_checksum: None,
            bad_l4_checksum: false,
            bad_ip_checksum: false,
        }
    }

    /// One 802.1Q tag (TPID 0x8100, PCP 0) with this VLAN id.
    pub fn vlan(mut self, id: u16) -> Pkt {
        assert!(id < 4096, "VLAN id {id} does not fit in 12 bits");
        self.vlan = Some(id);
        self
    }

    /// Overrides the (innermost) ethertype, e.g. to label an IPv4 packet as IPv6, or to send a
    /// non-IP frame made of `.payload()` alone.
    pub fn ethertype(mut self, ethertype: u16) -> Pkt {
        self.ethertype = Some(ethertype);
        self
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Pkt {
        self.ip = Some(Ip::V4 { src, dst });
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Pkt {
        self.ip = Some(Ip::V6 { src, dst });
        self
    }

    /// IPv4 TTL or IPv6 hop limit (default 64).
    pub fn ttl(mut self, ttl: u8) -> Pkt {
        self.ttl = ttl;
        self
    }

    /// IPv4 TOS byte (DSCP and ECN); the same field as [`Pkt::traffic_class`].
    pub fn tos(mut self, tos: u8) -> Pkt {
        self.tos = tos;
        self
    }

    /// IPv6 traffic class; the same field as [`Pkt::tos`].
    pub fn traffic_class(mut self, tc: u8) -> Pkt {
        self.tos = tc;
        self
    }

    /// IPv6 flow label (20 bits).
    pub fn flow_label(mut self, label: u32) -> Pkt {
        assert!(
            label < 1 << 20,
            "flow label {label:#x} does not fit in 20 bits"
        );
        self.flow_label = label;
        self
    }

    /// IPv4 identification; also the id of the Fragment header that [`Pkt::fragment`] adds to
    /// an IPv6 packet.
    pub fn id(mut self, id: u16) -> Pkt {
        self.id = id;
        self
    }

    /// IPv4 don't-fragment flag (default set, as Linux sends TCP).
    pub fn df(mut self, df: bool) -> Pkt {
        self.df = df;
        self
    }

    /// Raw IPv4 option bytes; zero-padded (End of Options List) to a multiple of 4, at most
    /// 40 bytes. IHL follows.
    pub fn ipv4_options(mut self, options: &[u8]) -> Pkt {
        self.ipv4_options = options.to_vec();
        let pad = (4 - options.len() % 4) % 4;
        self.ipv4_options.resize(options.len() + pad, 0);
        assert!(
            self.ipv4_options.len() <= 40,
            "IPv4 options longer than 40 bytes"
        );
        self
    }

    /// Fragment fields: offset in 8-byte units and the more-fragments flag. IPv4 sets them in
    /// the header; IPv6 gets a Fragment header after the headers of [`Pkt::ipv6_ext`] (put an
    /// [`ExtHeader::Fragment`] there yourself for any other position). The transport header,
    /// if any, is still built: for a non-first fragment, use [`Pkt::protocol`] and
    /// [`Pkt::payload`] instead.
    pub fn fragment(mut self, offset: u16, more_fragments: bool) -> Pkt {
        assert!(
            offset <= IPV4_FRAG_OFFSET_MAX,
            "fragment offset {offset} > 13 bits"
        );
        self.fragment = Some((offset, more_fragments));
        self
    }

    /// Appends an IPv6 extension header; call in wire order.
    pub fn ipv6_ext(mut self, ext: ExtHeader) -> Pkt {
        self.exts.push(ext);
        self
    }

    /// IP protocol / final next header for a packet without a transport header built here
    /// (the IP payload is then `.payload()` as given), e.g. `.protocol(PROTO_IPIP)` with an
    /// inner packet, or a non-first TCP fragment. Without it such packets carry 59 (no next
    /// header).
    pub fn protocol(mut self, protocol: u8) -> Pkt {
        self.protocol = Some(protocol);
        self
    }

    /// TCP header with seq 0, ack 0, no flags, window 64240, no options.
    pub fn tcp(mut self, sport: u16, dport: u16) -> Pkt {
        self.l4 = L4::Tcp {
            sport,
            dport,
            seq: 0,
            ack_seq: 0,
            flags: 0,
            window: 64240,
        };
        self
    }

    #[track_caller]
    fn tcp_fields(&mut self) -> (&mut u32, &mut u32, &mut u8, &mut u16) {
        match &mut self.l4 {
            L4::Tcp {
                seq,
                ack_seq,
                flags,
                window,
                ..
            } => (seq, ack_seq, flags, window),
            _ => panic!("TCP setter used before .tcp(sport, dport)"),
        }
    }

    #[track_caller]
    fn add_flags(mut self, bits: u8) -> Pkt {
        *self.tcp_fields().2 |= bits;
        self
    }

    #[track_caller]
    pub fn syn(self) -> Pkt {
        self.add_flags(TCP_SYN)
    }

    #[track_caller]
    pub fn ack(self) -> Pkt {
        self.add_flags(TCP_ACK)
    }

    #[track_caller]
    pub fn fin(self) -> Pkt {
        self.add_flags(TCP_FIN)
    }

    #[track_caller]
    pub fn rst(self) -> Pkt {
        self.add_flags(TCP_RST)
    }

    #[track_caller]
    pub fn psh(self) -> Pkt {
        self.add_flags(TCP_PSH)
    }

    /// Replaces all TCP flags with this byte (`TCP_*` bits; CWR is the top bit).
    #[track_caller]
    pub fn flags(mut self, flags: u8) -> Pkt {
        *self.tcp_fields().2 = flags;
        self
    }

    #[track_caller]
    pub fn seq(mut self, seq: u32) -> Pkt {
        *self.tcp_fields().0 = seq;
        self
    }

    /// TCP acknowledgment number (the ACK flag is set by [`Pkt::ack`]).
    #[track_caller]
    pub fn ack_seq(mut self, ack_seq: u32) -> Pkt {
        *self.tcp_fields().1 = ack_seq;
        self
    }

    #[track_caller]
    pub fn window(mut self, window: u16) -> Pkt {
        *self.tcp_fields().3 = window;
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Pkt {
        self.l4 = L4::Udp { sport, dport };
        self
    }

    /// Any ICMPv4 message: type, code and header bytes 4..8; the body is `.payload()`.
    pub fn icmp(mut self, icmp_type: u8, code: u8, rest: [u8; 4]) -> Pkt {
        self.l4 = L4::Icmp {
            v6: false,
            icmp_type,
            code,
            rest,
        };
        self
    }

    /// Any ICMPv6 message: type, code and header bytes 4..8; the body is `.payload()`.
    pub fn icmpv6(mut self, icmp_type: u8, code: u8, rest: [u8; 4]) -> Pkt {
        self.l4 = L4::Icmp {
            v6: true,
            icmp_type,
            code,
            rest,
        };
        self
    }

    /// ICMPv4 echo request.
    pub fn icmp_echo(self, id: u16, seq: u16) -> Pkt {
        self.icmp(8, 0, id_seq(id, seq))
    }

    /// ICMPv6 echo request.
    pub fn icmpv6_echo(self, id: u16, seq: u16) -> Pkt {
        self.icmpv6(128, 0, id_seq(id, seq))
    }

    /// ICMPv4 destination unreachable / fragmentation needed (type 3 code 4) quoting `quoted`
    /// (an IP packet, usually cut short) verbatim.
    pub fn icmp_frag_needed(self, mtu: u16, quoted: &[u8]) -> Pkt {
        let [hi, lo] = mtu.to_be_bytes();
        self.icmp(3, 4, [0, 0, hi, lo]).payload(quoted)
    }

    /// ICMPv6 packet too big (type 2) quoting `quoted` verbatim.
    pub fn icmpv6_packet_too_big(self, mtu: u32, quoted: &[u8]) -> Pkt {
        self.icmpv6(2, 0, mtu.to_be_bytes()).payload(quoted)
    }

    /// Bytes after the transport header (or the whole IP payload without one).
    pub fn payload(mut self, payload: &[u8]) -> Pkt {
        self.payload = payload.to_vec();
        self
    }

    /// Writes a wrong TCP/UDP/ICMP checksum.
    pub fn bad_l4_checksum(mut self) -> Pkt {
        self.bad_l4_checksum = true;
        self
    }

    /// Writes exactly this TCP/UDP/ICMP checksum (e.g. 0 for an unchecksummed UDP/IPv4
    /// datagram).
    pub fn l4_checksum(mut self, checksum: u16) -> Pkt {
        self.l4_checksum = Some(checksum);
        self
    }

    /// Writes a wrong IPv4 header checksum.
    pub fn bad_ip_checksum(mut self) -> Pkt {
        self.bad_ip_checksum = true;
        self
    }

    /// The frame, from the destination MAC to the last payload byte (no FCS).
    pub fn build(&self) -> Vec<u8> {
        let Some(ip) = self.ip else {
            assert!(
                self.l4 == L4::None,
                "a transport header needs .ipv4() or .ipv6()"
            );
            let ethertype = self.ethertype.unwrap_or(0x88b5);
            return eth_frame(
                self.dst_mac,
                self.src_mac,
                self.vlan,
                ethertype,
                &self.payload,
            );
        };
        let (l3, ethertype) = match ip {
            Ip::V4 { src, dst } => (self.build_ipv4(src, dst), ETHERTYPE_IPV4),
            Ip::V6 { src, dst } => (self.build_ipv6(src, dst), ETHERTYPE_IPV6),
        };
        let ethertype = self.ethertype.unwrap_or(ethertype);
        eth_frame(self.dst_mac, self.src_mac, self.vlan, ethertype, &l3)
    }

    /// The IP packet only (what [`ip_packet`] returns for `build()`).
    pub fn build_ip(&self) -> Vec<u8> {
        ip_packet(&self.build()).to_vec()
    }

    fn l4_protocol(&self) -> u8 {
        match self.l4 {
            L4::None => self.protocol.unwrap_or(PROTO_NONXT),
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { v6: false, .. } => PROTO_ICMP,
            L4::Icmp { v6: true, .. } => PROTO_ICMPV6,
        }
    }

    fn build_ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let l4 = self.build_l4(Pseudo::V4 { src, dst });
        let (offset, more) = self.fragment.unwrap_or((0, false));
        let mut header = Ipv4Header {
            dscp: Ipv4Dscp::try_new(self.tos >> 2).expect("6 bits"),
            ecn: Ipv4Ecn::try_new(self.tos & 3).expect("2 bits"),
            total_len: 0,
            identification: self.id,
            dont_fragment: self.df,
            more_fragments: more,
            fragment_offset: IpFragOffset::try_new(offset).expect("checked in .fragment()"),
            time_to_live: self.ttl,
            protocol: IpNumber(self.l4_protocol()),
            header_checksum: 0,
            source: src.octets(),
            destination: dst.octets(),
            options: Ipv4Options::try_from(&self.ipv4_options[..])
                .expect("options checked in .ipv4_options()"),
        };
        header
            .set_payload_len(l4.len())
            .expect("IPv4 payload longer than 65515 bytes");
        header.header_checksum = if self.bad_ip_checksum {
            bad_checksum(header.calc_header_checksum())
        } else {
            header.calc_header_checksum()
        };
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(&l4);
        out
    }

    fn build_ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let l4 = self.build_l4(Pseudo::V6 { src, dst });
        let mut exts = self.exts.clone();
        if let Some((offset, more)) = self.fragment {
            exts.push(ExtHeader::Fragment {
                offset,
                more,
                id: u32::from(self.id),
            });
        }
        let mut ext_bytes = Vec::new();
        for (i, ext) in exts.iter().enumerate() {
            let next = exts
                .get(i + 1)
                .map_or(self.l4_protocol(), ExtHeader::protocol);
            ext.write(next, &mut ext_bytes);
        }
        let first = exts.first().map_or(self.l4_protocol(), ExtHeader::protocol);
        let mut out = ipv6_header(
            src,
            dst,
            first,
            self.tos,
            self.flow_label,
            self.ttl,
            ext_bytes.len() + l4.len(),
        );
        out.extend_from_slice(&ext_bytes);
        out.extend_from_slice(&l4);
        out
    }

    /// The transport header and payload. The pseudo header uses the addresses of the IP header
    /// as written: the balancer does not interpret routing headers, so neither do we.
    fn build_l4(&self, pseudo: Pseudo) -> Vec<u8> {
        let (mut bytes, checksum_at) = match self.l4 {
            L4::None => return self.payload.clone(),
            L4::Tcp {
                sport,
                dport,
                seq,
                ack_seq,
                flags,
                window,
            } => {
                let mut h = TcpHeader::new(sport, dport, seq, window);
                h.acknowledgment_number = ack_seq;
                set_tcp_flags(&mut h, flags);
                (h.to_bytes().to_vec(), 16)
            }
            L4::Udp { sport, dport } => {
                let length = u16::try_from(UdpHeader::LEN + self.payload.len())
                    .expect("UDP datagram longer than 65535 bytes");
                let h = UdpHeader {
                    source_port: sport,
                    destination_port: dport,
                    length,
                    checksum: 0,
                };
                (h.to_bytes().to_vec(), 6)
            }
            L4::Icmp {
                icmp_type,
                code,
                rest,
                ..
            } => (
                vec![icmp_type, code, 0, 0, rest[0], rest[1], rest[2], rest[3]],
                2,
            ),
        };
        bytes.extend_from_slice(&self.payload);
        let proto = self.l4_protocol();
        // ICMPv4 is the one transport here without a pseudo header.
        let correct = if proto == PROTO_ICMP {
            Sum16BitWords::new()
                .add_slice(&bytes)
                .ones_complement()
                .to_be()
        } else {
            let sum = pseudo.sum(proto, bytes.len()).add_slice(&bytes);
            // UDP sends a computed zero as 0xffff: zero means "no checksum".
            if proto == PROTO_UDP {
                sum.to_ones_complement_with_no_zero().to_be()
            } else {
                sum.ones_complement().to_be()
            }
        };
        let checksum = match (self.l4_checksum, self.bad_l4_checksum) {
            (Some(explicit), _) => explicit,
            (None, true) => bad_checksum(correct),
            (None, false) => correct,
        };
        bytes[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        bytes
    }
}

impl From<Pkt> for Vec<u8> {
    fn from(pkt: Pkt) -> Vec<u8> {
        pkt.build()
    }
}

fn id_seq(id: u16, seq: u16) -> [u8; 4] {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    [a, b, c, d]
}

fn bad_checksum(correct: u16) -> u16 {
    if correct == BAD_CHECKSUM {
        BAD_CHECKSUM_ALT
    } else {
        BAD_CHECKSUM
    }
}

fn set_tcp_flags(h: &mut TcpHeader, flags: u8) {
    h.fin = flags & TCP_FIN != 0;
    h.syn = flags & TCP_SYN != 0;
    h.rst = flags & TCP_RST != 0;
    h.psh = flags & TCP_PSH != 0;
    h.ack = flags & TCP_ACK != 0;
    h.urg = flags & TCP_URG != 0;
    h.ece = flags & TCP_ECE != 0;
    h.cwr = flags & TCP_CWR != 0;
}

// Sum16BitWords adds words in native byte order, so its folded result is the checksum in
// native order too: `.to_be()` turns it into the field value written with `to_be_bytes`.

/// Addresses for a transport pseudo header.
#[derive(Clone, Copy, Debug)]
enum Pseudo {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Pseudo {
    fn sum(self, proto: u8, upper_len: usize) -> Sum16BitWords {
        match self {
            Pseudo::V4 { src, dst } => Sum16BitWords::new()
                .add_4bytes(src.octets())
                .add_4bytes(dst.octets())
                .add_2bytes([0, proto])
                // Lengths over 16 bits cannot occur in a valid IPv4 packet; truncate rather
                // than panic so describe() survives nonsense.
                .add_2bytes((upper_len as u16).to_be_bytes()),
            Pseudo::V6 { src, dst } => Sum16BitWords::new()
                .add_16bytes(src.octets())
                .add_16bytes(dst.octets())
                .add_4bytes((upper_len as u32).to_be_bytes())
                .add_4bytes([0, 0, 0, proto]),
        }
    }
}

fn ipv6_header(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    payload_len: usize,
) -> Vec<u8> {
    let header = Ipv6Header {
        traffic_class,
        flow_label: Ipv6FlowLabel::try_new(flow_label).expect("flow label over 20 bits"),
        payload_length: u16::try_from(payload_len).expect("IPv6 payload longer than 65535"),
        next_header: IpNumber(next_header),
        hop_limit,
        source: src.octets(),
        destination: dst.octets(),
    };
    header.to_bytes().to_vec()
}

/// The L3 part of a frame: everything after the Ethernet header and at most one VLAN tag.
/// Empty when the frame is too short to hold those.
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    let start = match be16(frame, 12) {
        Some(ETHERTYPE_VLAN | ETHERTYPE_QINQ) => 18,
        Some(_) => 14,
        None => return &[],
    };
    frame.get(start..).unwrap_or(&[])
}

/// The first `len` bytes of `frame` (all of it if shorter).
pub fn truncated(frame: &[u8], len: usize) -> Vec<u8> {
    frame[..len.min(frame.len())].to_vec()
}

/// An outer IPv4 header (no options, correct checksum, fragment offset 0) followed by `inner`
/// verbatim; `proto` is 4 for IPv4-in-IPv4 or 41 for IPv6-in-IPv4.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per outer header field, so a fixture states each one"
)]
pub fn ipv4_outer(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    tos: u8,
    ttl: u8,
    id: u16,
    df: bool,
    inner: &[u8],
) -> Vec<u8> {
    let mut header = Ipv4Header::new(0, ttl, IpNumber(proto), src.octets(), dst.octets())
        .expect("empty payload fits");
    header.dscp = Ipv4Dscp::try_new(tos >> 2).expect("6 bits");
    header.ecn = Ipv4Ecn::try_new(tos & 3).expect("2 bits");
    header.identification = id;
    header.dont_fragment = df;
    header
        .set_payload_len(inner.len())
        .expect("inner packet longer than 65515 bytes");
    header.header_checksum = header.calc_header_checksum();
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(inner);
    out
}

/// An outer IPv6 header followed by `inner` verbatim; `next_header` is 41 for IPv6-in-IPv6
/// or 4 for IPv4-in-IPv6.
pub fn ipv6_outer(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    inner: &[u8],
) -> Vec<u8> {
    let mut out = ipv6_header(
        src,
        dst,
        next_header,
        traffic_class,
        flow_label,
        hop_limit,
        inner.len(),
    );
    out.extend_from_slice(inner);
    out
}

/// An Ethernet frame around `l3`, with an optional 802.1Q tag (PCP 0).
pub fn eth_frame(dst: Mac, src: Mac, vlan: Option<u16>, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + l3.len());
    let outer_type = if vlan.is_some() {
        ETHERTYPE_VLAN
    } else {
        ethertype
    };
    let eth = Ethernet2Header {
        destination: dst,
        source: src,
        ether_type: EtherType(outer_type),
    };
    out.extend_from_slice(&eth.to_bytes());
    if let Some(id) = vlan {
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(id).expect("VLAN id over 12 bits"),
            ether_type: EtherType(ethertype),
        };
        out.extend_from_slice(&tag.to_bytes());
    }
    out.extend_from_slice(l3);
    out
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
    const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1);

    /// RFC 1071 written out independently of etherparse and of the builder.
    fn ones_sum(chunks: &[&[u8]]) -> u16 {
        let mut bytes = Vec::new();
        for c in chunks {
            bytes.extend_from_slice(c);
        }
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// A region including its checksum field sums to 0xffff when the checksum is right.
    fn v4_l4_ok(ip: &[u8], l4: &[u8]) -> bool {
        let len = (l4.len() as u16).to_be_bytes();
        ones_sum(&[&ip[12..20], &[0, ip[9]], &len, l4]) == 0xffff
    }

    fn v6_l4_ok(ip: &[u8], proto: u8, l4: &[u8]) -> bool {
        let len = (l4.len() as u32).to_be_bytes();
        ones_sum(&[&ip[8..40], &len, &[0, 0, 0, proto], l4]) == 0xffff
    }

    fn ipv4_header_ok(ip: &[u8]) -> bool {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        ones_sum(&[&ip[..ihl]]) == 0xffff
    }

    #[test]
    fn tcp_v4_parses_back_with_valid_checksums() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .ttl(33)
            .tos(0xb8)
            .id(0x1234)
            .tcp(31337, 80)
            .syn()
            .ack()
            .seq(1000)
            .ack_seq(2000)
            .payload(b"hello")
            .build();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let eth = p.link.unwrap().to_header().unwrap().ethernet2().unwrap();
        assert_eq!(eth.source, CLIENT_MAC);
        assert_eq!(eth.destination, LB_MAC);
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.ttl(), 33);
        assert_eq!(h.dcp().value(), 0xb8 >> 2);
        assert_eq!(h.identification(), 0x1234);
        assert!(h.dont_fragment());
        assert_eq!(h.source_addr(), CLIENT);
        assert_eq!(h.destination_addr(), VIP);
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (31337, 80));
        assert!(tcp.syn() && tcp.ack() && !tcp.fin());
        assert_eq!(
            (tcp.sequence_number(), tcp.acknowledgment_number()),
            (1000, 2000)
        );
        assert_eq!(tcp.payload(), b"hello");

        let ipb = ip_packet(&f);
        assert!(ipv4_header_ok(ipb));
        assert!(v4_l4_ok(ipb, &ipb[20..]));
        // And etherparse agrees.
        let th = tcp.to_header();
        let want = th
            .calc_checksum_ipv4_raw(CLIENT.octets(), VIP.octets(), tcp.payload())
            .unwrap();
        assert_eq!(th.checksum, want);
    }

    #[test]
    fn bad_l4_checksum_is_bad() {
        let good = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .udp(1, 2)
            .payload(b"x");
        let bad = good.clone().bad_l4_checksum().build();
        let ipb = ip_packet(&bad);
        assert!(ipv4_header_ok(ipb));
        assert!(!v4_l4_ok(ipb, &ipb[20..]));
        assert!(v4_l4_ok(
            ip_packet(&good.build()),
            &ip_packet(&good.build())[20..]
        ));
        assert!(describe(&bad)
            .iter()
            .any(|l| l.starts_with("udp.checksum") && l.contains("bad")));
    }

    #[test]
    fn udp_v6_and_icmp_checksums() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .traffic_class(0x28)
            .flow_label(0xabcde)
            .ttl(7)
            .udp(5353, 53)
            .payload(b"query")
            .build();
        let ipb = ip_packet(&f);
        let (h, _) = Ipv6Header::from_slice(ipb).unwrap();
        assert_eq!(
            (h.traffic_class, h.flow_label.value(), h.hop_limit),
            (0x28, 0xabcde, 7)
        );
        assert_eq!(usize::from(h.payload_length), 8 + 5);
        assert!(v6_l4_ok(ipb, PROTO_UDP, &ipb[40..]));

        let e = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .icmp_echo(7, 9)
            .payload(b"ping")
            .build();
        let ipb = ip_packet(&e);
        assert_eq!(ipb[9], PROTO_ICMP);
        assert_eq!(&ipb[20..28], &[8, 0, ipb[22], ipb[23], 0, 7, 0, 9]);
        assert_eq!(ones_sum(&[&ipb[20..]]), 0xffff);

        let e6 = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .icmpv6_echo(7, 9)
            .build();
        let ipb = ip_packet(&e6);
        assert_eq!(ipb[40], 128);
        assert!(v6_l4_ok(ipb, PROTO_ICMPV6, &ipb[40..]));
    }

    #[test]
    fn vlan_tag() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .vlan(100)
            .ipv4(CLIENT, VIP)
            .tcp(1, 80)
            .build();
        assert_eq!(be16(&f, 12), Some(ETHERTYPE_VLAN));
        assert_eq!(be16(&f, 14), Some(100));
        assert_eq!(be16(&f, 16), Some(ETHERTYPE_IPV4));
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::VlanSlice::SingleVlan(tag)) = p.vlan else {
            panic!("no single VLAN tag")
        };
        assert_eq!(tag.vlan_identifier().value(), 100);
        assert_eq!(ip_packet(&f)[0] >> 4, 4);
        assert!(describe(&f).contains(&"vlan.id = 100".to_string()));
    }

    #[test]
    fn ipv4_options_set_ihl() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .ipv4_options(&[1, 1, 1, 1, 1, 1]) // padded to 8
            .tcp(1, 80)
            .build();
        let ipb = ip_packet(&f);
        assert_eq!(ipb[0], 0x47);
        assert_eq!(&ipb[20..28], &[1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(be16(ipb, 2), Some(28 + 20));
        assert!(ipv4_header_ok(ipb));
        assert!(v4_l4_ok(ipb, &ipb[28..]));
        let (h, _) = Ipv4Header::from_slice(ipb).unwrap();
        assert_eq!(h.options.len(), 8);
    }

    #[test]
    fn ipv6_ext_chain() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(ExtHeader::HopByHop(vec![]))
            .ipv6_ext(ExtHeader::Routing(vec![4, 0, 0, 0, 0, 0, 1, 2, 3]))
            .ipv6_ext(ExtHeader::DestOpts(vec![0x1e, 1, 0xaa]))
            .tcp(1234, 443)
            .syn()
            .build();
        let ipb = ip_packet(&f);
        assert_eq!(ipb[6], PROTO_HOPOPTS);
        // Hop-by-hop: 2 bytes + PadN of 6 = 8 bytes.
        assert_eq!(&ipb[40..48], &[PROTO_ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        // Routing: 2 + 9 bytes, zero-padded to 16.
        assert_eq!(&ipb[48..50], &[PROTO_DSTOPTS, 1]);
        assert_eq!(&ipb[50..59], &[4, 0, 0, 0, 0, 0, 1, 2, 3]);
        // Dest opts: 2 + 3 + PadN(3) = 8.
        assert_eq!(&ipb[64..72], &[PROTO_TCP, 0, 0x1e, 1, 0xaa, 1, 1, 0]);
        let tcp = &ipb[72..];
        assert_eq!(be16(tcp, 2), Some(443));
        assert_eq!(be16(ipb, 4), Some((32 + 20) as u16));
        assert!(v6_l4_ok(ipb, PROTO_TCP, tcp));

        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv6(ip6)) = p.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip6.extensions().first_header(),
            Some(IpNumber(PROTO_HOPOPTS))
        );
        assert!(matches!(p.transport, Some(TransportSlice::Tcp(_))));
        let d = describe(&f);
        assert!(d
            .iter()
            .any(|l| l.starts_with("ipv6.ext[2] = dest-opts next=6")));
        assert!(d.iter().any(|l| l == "tcp.dport = 443"));
        assert!(d
            .iter()
            .any(|l| l.starts_with("tcp.checksum") && l.ends_with("(ok)")));
    }

    #[test]
    fn fragments() {
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .df(false)
            .id(77)
            .fragment(185, true)
            .protocol(PROTO_UDP)
            .payload(&[0xab; 16])
            .build();
        let ipb = ip_packet(&f);
        assert_eq!(be16(ipb, 6), Some(0x2000 | 185));
        assert_eq!(ipb[9], PROTO_UDP);
        assert_eq!(&ipb[20..], &[0xab; 16]);
        assert!(ipv4_header_ok(ipb));

        let f6 = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .ipv6_ext(ExtHeader::HopByHop(vec![]))
            .id(0x4242)
            .fragment(0, true)
            .udp(1, 2)
            .payload(b"abc")
            .build();
        let ipb = ip_packet(&f6);
        assert_eq!(ipb[6], PROTO_HOPOPTS);
        assert_eq!(ipb[40], PROTO_FRAGMENT);
        assert_eq!(&ipb[48..56], &[PROTO_UDP, 0, 0, 1, 0, 0, 0x42, 0x42]);
        assert!(v6_l4_ok(ipb, PROTO_UDP, &ipb[56..]));
        let d = describe(&f6);
        assert!(d
            .iter()
            .any(|l| l.contains("fragment next=17 offset=0 more=true")));
        assert!(d
            .iter()
            .any(|l| l.starts_with("udp.checksum") && l.contains("partial")));
    }

    #[test]
    fn icmp_errors_quote_verbatim() {
        let original = Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(VIP, CLIENT)
            .tcp(80, 31337)
            .ack()
            .payload(&[7; 100])
            .build_ip();
        let quoted = truncated(&original, 28);
        let f = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(Ipv4Addr::new(198, 18, 0, 254), VIP)
            .icmp_frag_needed(1400, &quoted)
            .build();
        let ipb = ip_packet(&f);
        let icmp = &ipb[20..];
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(be16(icmp, 6), Some(1400));
        assert_eq!(&icmp[8..], &quoted[..]);
        assert_eq!(ones_sum(&[icmp]), 0xffff);
        let d = describe(&f);
        assert!(d.contains(&"icmp.mtu = 1400".to_string()));
        assert!(d.contains(&"icmp.quoted.ipv4.src = 198.18.1.1".to_string()));
        assert!(d.contains(&"icmp.quoted.tcp.sport = 80".to_string()));
        assert!(d
            .iter()
            .any(|l| l.starts_with("icmp.checksum") && l.ends_with("(ok)")));

        let original6 = Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv6(VIP6, CLIENT6)
            .udp(53, 5353)
            .build_ip();
        let f6 = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .icmpv6_packet_too_big(1280, &original6)
            .build();
        let ipb = ip_packet(&f6);
        assert_eq!(&ipb[40..48], &[2, 0, ipb[42], ipb[43], 0, 0, 5, 0]);
        assert_eq!(&ipb[48..], &original6[..]);
        assert!(v6_l4_ok(ipb, PROTO_ICMPV6, &ipb[40..]));
        assert!(describe(&f6).contains(&"icmpv6.quoted.udp.dport = 5353".to_string()));
    }

    #[test]
    fn ip_in_ip_outer_builders() {
        let inner = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .tcp(31337, 80)
            .syn()
            .build_ip();
        let lb = Ipv4Addr::new(198, 18, 2, 1);
        let backend = Ipv4Addr::new(198, 18, 3, 1);
        let outer = ipv4_outer(lb, backend, PROTO_IPIP, 0x10, 64, 9, true, &inner);
        assert!(ipv4_header_ok(&outer));
        assert_eq!(be16(&outer, 2), Some((20 + inner.len()) as u16));
        assert_eq!((outer[9], outer[1], outer[8]), (PROTO_IPIP, 0x10, 64));
        assert_eq!(be16(&outer, 6), Some(0x4000));
        assert_eq!(&outer[20..], &inner[..]);
        let frame = eth_frame(LB_MAC, CLIENT_MAC, Some(5), ETHERTYPE_IPV4, &outer);
        assert_eq!(ip_packet(&frame), &outer[..]);
        let d = describe(&frame);
        assert!(d.contains(&"inner.ipv4.src = 198.18.0.1".to_string()));
        assert!(d.contains(&"inner.tcp.flags = SYN".to_string()));
        assert!(d
            .iter()
            .any(|l| l.starts_with("inner.tcp.checksum") && l.ends_with("(ok)")));

        let inner6 = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, VIP6)
            .udp(1, 2)
            .build_ip();
        let outer6 = ipv6_outer(CLIENT6, VIP6, PROTO_IPV6, 3, 0x12345, 63, &inner6);
        let (h, rest) = Ipv6Header::from_slice(&outer6).unwrap();
        assert_eq!(h.next_header.0, PROTO_IPV6);
        assert_eq!(
            (h.traffic_class, h.flow_label.value(), h.hop_limit),
            (3, 0x12345, 63)
        );
        assert_eq!(usize::from(h.payload_length), inner6.len());
        assert_eq!(rest, &inner6[..]);
        let frame6 = eth_frame(LB_MAC, CLIENT_MAC, None, ETHERTYPE_IPV6, &outer6);
        assert!(describe(&frame6).contains(&"inner.udp.dport = 2".to_string()));
    }
}
