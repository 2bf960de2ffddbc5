//! `tcp_tunnel`: a TCP SYN to the VIP's address and port, carried to the backend in the
//! IP-in-IP tunnel the balancer forwards clients in; healthy when the service answers
//! SYN-ACK. Where `tcp` asks the backend's own address, this asks what a client's
//! connection needs: the backend's decap, the VIP on its `lo`, the service listening on the
//! VIP. A backend that lost any of them fails this check while `tcp` still passes (Katran
//! checks through the tunnel for the same reason).
//!
//! A half-open handshake on raw sockets: the host's own TCP would send its SYN along the
//! route to the VIP, which is not the backend's tunnel (and the balancer's XDP program
//! never sees its host's packets). So the SYN is built here and sent on a raw socket of
//! protocol IPIP (4, an IPv4 VIP) or IPv6 (41) connected to the backend, of the backend's
//! family: the kernel adds the outer header, as the balancer does (IPv6 in IPv4 and IPv4
//! in IPv6 included). The backend answers from the VIP straight to this host (direct
//! server return), and the answer is read on a raw TCP socket of the VIP's family bound to
//! the probe's source, an address of this host of the VIP's family: the configured one,
//! else the kernel's choice towards the backend (the same family) or towards the VIP. A SYN-ACK is answered with a RST through
//! the tunnel, so the backend forgets the connection at once. The source port is held by
//! a bound TCP socket during the check, so no other socket of the host can be using it.
//! The answer reaches this host from the VIP's address: reverse-path filtering on the
//! balancer must accept it (`rp_filter` 0, or 2 with any route to the VIPs).
//!
//! Needs root or CAP_NET_RAW (the daemon has them to load XDP programs).

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpSocket;

use super::{
    probe::{local_addr, timed, Probe, ProbeError, ProbeFuture},
    raw::{internet_checksum, strip_ipv4_header, Socket},
};

const IPPROTO_IPIP: i32 = 4;
const IPPROTO_IPV6: i32 = 41;
const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_HEADER_LEN: usize = 20;
/// The SYN's receive window: a plain value; the connection never carries data.
const WINDOW: u16 = 64_240;

/// Healthy when the service answers a SYN to the VIP, sent through the backend's tunnel.
#[derive(Debug, Clone)]
pub struct TcpTunnelProbe {
    /// The VIP's address: the SYN's destination inside the tunnel.
    pub vip: IpAddr,
    /// Upper bound for the round trip.
    pub timeout: Duration,
    /// Source address of the SYN, of the VIP's family (an address of this host the
    /// backend's answer reaches); `None`: the one the kernel would use towards the backend,
    /// or towards the VIP for a backend of the other family.
    pub bind: Option<IpAddr>,
}

impl TcpTunnelProbe {
    pub fn new(vip: IpAddr, timeout: Duration, bind: Option<IpAddr>) -> Self {
        Self { vip, timeout, bind }
    }

    async fn exchange(&self, backend: SocketAddr) -> Result<(), ProbeError> {
        let vip = SocketAddr::new(self.vip, backend.port());
        let same_family = vip.is_ipv4() == backend.is_ipv4();
        let source = match local_addr(self.bind, vip)? {
            Some(bound) => bound.ip(),
            None if same_family => route_source(backend).map_err(ProbeError::Socket)?,
            None => route_source(vip).map_err(ProbeError::Socket)?,
        };
        // Holds the source port (bound, neither listening nor connected): no connection of
        // the host's can be on it meanwhile, and the host's TCP answers the SYN-ACK's
        // arrival there with a RST of its own, along its route to the VIP if it has one.
        let holder = match source {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .and_then(|h| h.bind(SocketAddr::new(source, 0)).map(|()| h))
        .map_err(ProbeError::Socket)?;
        let local = holder.local_addr().map_err(ProbeError::Socket)?;
        let (domain, carried) = if vip.is_ipv4() {
            (libc::AF_INET, IPPROTO_IPIP)
        } else {
            (libc::AF_INET6, IPPROTO_IPV6)
        };
        let tunnel_domain = if backend.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // Bound to the probe's source; not connected to the VIP, which would need a route
        // to it (the balancer's host needs none): answers are matched on their source.
        let answers = Socket::open(
            domain,
            libc::SOCK_RAW,
            libc::IPPROTO_TCP,
            Some(ip_only(local)),
            None,
        )
        .map_err(ProbeError::Socket)?;
        let tunnel = Socket::open(
            tunnel_domain,
            libc::SOCK_RAW,
            carried,
            None,
            Some(ip_only(backend)),
        )
        .map_err(ProbeError::Socket)?;
        // A backend whose stack gets the tunnel itself (no decap) says so with an ICMP
        // error about it: a failure at once, with its cause, rather than a timeout.
        let icmp = if backend.is_ipv4() {
            libc::IPPROTO_ICMP
        } else {
            libc::IPPROTO_ICMPV6
        };
        let errors = Socket::open(
            tunnel_domain,
            libc::SOCK_RAW,
            icmp,
            None,
            Some(ip_only(backend)),
        )
        .map_err(ProbeError::Socket)?;
        let isn = initial_sequence();
        tunnel
            .send(&segment(local, vip, isn, 0, TCP_SYN))
            .await
            .map_err(|e| ProbeError::from_io(e, true))?;
        let mut buf = [0u8; 2048];
        let mut error = [0u8; 2048];
        loop {
            let (n, from) = tokio::select! {
                got = answers.recv_from(&mut buf) => got.map_err(|e| ProbeError::from_io(e, false))?,
                got = errors.recv(&mut error) => {
                    let n = got.map_err(|e| ProbeError::from_io(e, false))?;
                    if tunnel_refused(&error[..n], backend.ip(), carried) {
                        return Err(ProbeError::TunnelRefused);
                    }
                    continue;
                }
            };
            if from != Some(vip.ip()) {
                continue;
            }
            // IPv4 raw sockets hand over the IP header, IPv6 ones only the payload.
            let tcp = if vip.is_ipv4() {
                strip_ipv4_header(&buf[..n])
            } else {
                Some(&buf[..n])
            };
            match tcp.and_then(|t| answer(t, vip.port(), local.port(), isn)) {
                Some(Answer::Open) => {
                    // Best effort: a lost RST leaves the backend a half-open connection
                    // that its SYN-ACK retries end.
                    let _ = tunnel
                        .send(&segment(local, vip, isn.wrapping_add(1), 0, TCP_RST))
                        .await;
                    return Ok(());
                }
                Some(Answer::Refused) => return Err(ProbeError::Refused),
                // Another connection's segment from the VIP: not ours, keep waiting.
                None => {}
            }
        }
    }
}

impl Probe for TcpTunnelProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, self.exchange(target)))
    }

    fn kind(&self) -> &'static str {
        "tcp_tunnel"
    }
}

/// `addr` with port 0: raw sockets take only the address.
fn ip_only(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), 0)
}

/// The source address the kernel would use towards `target` (a UDP `connect` sends nothing).
fn route_source(target: SocketAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if target.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

/// A sequence number no earlier check of this process used and an outsider cannot guess
/// from the last one (time and a counter, mixed).
fn initial_sequence() -> u32 {
    static CHECKS: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = CHECKS.fetch_add(1, Ordering::Relaxed);
    (nanos ^ n.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b)
}

/// Whether `packet`, read on a raw ICMP (IPv4: with its IP header) or ICMPv6 socket, is
/// the error a stack without a handler for the tunnel's protocol sends about our tunnel
/// to `backend`, which carries protocol `carried` (4: IPv4, 41: IPv6): protocol
/// unreachable (IPv4 type 3 code 2) or parameter problem, unrecognized next header (ICMPv6
/// type 4 code 1), quoting that protocol.
fn tunnel_refused(packet: &[u8], backend: IpAddr, carried: i32) -> bool {
    let carried = carried as u8;
    match backend {
        IpAddr::V4(b) => {
            let Some(icmp) = strip_ipv4_header(packet) else {
                return false;
            };
            let quoted = icmp.get(8..28);
            icmp.get(..2) == Some(&[3, 2])
                && quoted.is_some_and(|q| q[9] == carried && q[16..20] == b.octets())
        }
        IpAddr::V6(b) => {
            let quoted = packet.get(8..48);
            packet.get(..2) == Some(&[4, 1])
                && quoted.is_some_and(|q| q[6] == carried && q[24..40] == b.octets())
        }
    }
}

/// What the VIP answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// SYN-ACK: the service listens.
    Open,
    /// RST: nothing listens on the port.
    Refused,
}

/// The answer in TCP segment `tcp` to our SYN from `local_port` to `vip_port` with
/// sequence number `isn`, or `None` if it answers something else.
fn answer(tcp: &[u8], vip_port: u16, local_port: u16, isn: u32) -> Option<Answer> {
    let header = tcp.get(..TCP_HEADER_LEN)?;
    let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if be16(0) != vip_port || be16(2) != local_port || ack != isn.wrapping_add(1) {
        return None;
    }
    let flags = header[13] & TCP_FIN_SYN_RST_ACK;
    if flags & TCP_RST != 0 {
        Some(Answer::Refused)
    } else if flags == TCP_SYN | TCP_ACK {
        Some(Answer::Open)
    } else {
        None
    }
}

/// An IP packet (IPv4 without options, or IPv6) holding a bare TCP segment from `src` to
/// `dst`, checksums filled in.
fn segment(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(TCP_HEADER_LEN);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push((TCP_HEADER_LEN as u8 / 4) << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&WINDOW.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let (mut packet, mut pseudo) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + TCP_HEADER_LEN) as u16).to_be_bytes());
            // Id 0 with DF: nothing to reassemble (RFC 6864).
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let sum = internet_checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut pseudo = [s.octets(), d.octets()].concat();
            pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
            pseudo.extend_from_slice(&(TCP_HEADER_LEN as u16).to_be_bytes());
            (ip, pseudo)
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(TCP_HEADER_LEN as u16).to_be_bytes());
            ip.extend_from_slice(&[libc::IPPROTO_TCP as u8, 64]);
            ip.extend_from_slice(&v6(s));
            ip.extend_from_slice(&v6(d));
            let mut pseudo = [v6(s), v6(d)].concat();
            pseudo.extend_from_slice(&(TCP_HEADER_LEN as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
            (ip, pseudo)
        }
    };
    pseudo.extend_from_slice(&tcp);
    let sum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&tcp);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The ones'-complement sum of a correct header, checksum included, is 0xffff (its
    /// complement 0).
    fn sums_to_zero(bytes: &[u8]) -> bool {
        internet_checksum(bytes) == 0
    }

    #[test]
    fn syn_segments_carry_valid_checksums() {
        let p = segment(
            sa("198.18.0.2:40000"),
            sa("198.18.1.1:80"),
            0x0102_0304,
            0,
            TCP_SYN,
        );
        assert_eq!(p.len(), 40);
        assert_eq!(&p[..4], &[0x45, 0, 0, 40]);
        assert_eq!(p[9], 6, "TCP");
        assert!(sums_to_zero(&p[..20]), "IPv4 header checksum");
        let mut pseudo = vec![198, 18, 0, 2, 198, 18, 1, 1, 0, 6, 0, 20];
        pseudo.extend_from_slice(&p[20..]);
        assert!(sums_to_zero(&pseudo), "TCP checksum");
        assert_eq!(&p[20..24], &[0x9c, 0x40, 0, 80], "ports");
        assert_eq!(&p[24..28], &[1, 2, 3, 4], "sequence");
        assert_eq!((p[32], p[33]), (0x50, TCP_SYN), "data offset 5, SYN");

        let p = segment(sa("[fd00::2]:40000"), sa("[fd00::1:1]:80"), 7, 0, TCP_SYN);
        assert_eq!(p.len(), 60);
        assert_eq!((p[0], p[6], p[7]), (0x60, 6, 64));
        assert_eq!(&p[4..6], &[0, 20], "payload length");
        let mut pseudo = p[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        pseudo.extend_from_slice(&p[40..]);
        assert!(
            sums_to_zero(&pseudo),
            "TCP checksum over the IPv6 pseudo-header"
        );
    }

    #[test]
    fn answers_are_matched_to_the_syn() {
        let isn = 1000;
        // What the VIP sends back: its port, ours, ack isn + 1, flags.
        let reply = |sport: u16, dport: u16, ack: u32, flags: u8| {
            segment(sa("198.18.1.1:0"), sa("198.18.0.2:0"), 555, ack, flags)[20..]
                .iter()
                .copied()
                .enumerate()
                .map(|(i, b)| match i {
                    0 => (sport >> 8) as u8,
                    1 => sport as u8,
                    2 => (dport >> 8) as u8,
                    3 => dport as u8,
                    _ => b,
                })
                .collect::<Vec<u8>>()
        };
        let cases = [
            (
                reply(80, 40000, 1001, TCP_SYN | TCP_ACK),
                Some(Answer::Open),
            ),
            (
                reply(80, 40000, 1001, TCP_RST | TCP_ACK),
                Some(Answer::Refused),
            ),
            (reply(80, 40000, 1002, TCP_SYN | TCP_ACK), None),
            (reply(81, 40000, 1001, TCP_SYN | TCP_ACK), None),
            (reply(80, 40001, 1001, TCP_SYN | TCP_ACK), None),
            (reply(80, 40000, 1001, TCP_ACK), None),
        ];
        for (i, (tcp, want)) in cases.iter().enumerate() {
            assert_eq!(answer(tcp, 80, 40000, isn), *want, "case {i}");
        }
        assert_eq!(answer(&cases[0].0[..19], 80, 40000, isn), None, "cut short");
    }

    #[test]
    fn a_stack_without_decap_is_recognised_by_its_icmp_error() {
        let b4: IpAddr = "198.18.0.12".parse().unwrap();
        // The outer packet as it left: IPv4, protocol 4, to the backend.
        let outer = {
            let mut p = segment(sa("198.18.0.2:1"), sa("198.18.0.12:1"), 0, 0, TCP_SYN);
            p[9] = IPPROTO_IPIP as u8;
            p
        };
        let icmp4 = |t: u8, c: u8, quote: &[u8]| {
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            p.extend_from_slice(&[198, 18, 0, 12, 198, 18, 0, 2]);
            p.extend_from_slice(&[t, c, 0, 0, 0, 0, 0, 0]);
            p.extend_from_slice(&quote[..28]);
            p
        };
        let ipip = IPPROTO_IPIP;
        assert!(tunnel_refused(&icmp4(3, 2, &outer), b4, ipip));
        assert!(
            !tunnel_refused(&icmp4(3, 3, &outer), b4, ipip),
            "port unreachable"
        );
        assert!(!tunnel_refused(
            &icmp4(3, 2, &outer),
            "198.18.0.13".parse().unwrap(),
            ipip
        ));
        let mut other = outer.clone();
        other[9] = 17;
        assert!(
            !tunnel_refused(&icmp4(3, 2, &other), b4, ipip),
            "not our tunnel"
        );
        assert!(
            !tunnel_refused(&icmp4(3, 2, &outer)[..30], b4, ipip),
            "quote cut short"
        );
        // An IPv6 VIP's tunnel to an IPv4 backend (IPv6 in IPv4, protocol 41).
        let mut six_in_four = outer.clone();
        six_in_four[9] = IPPROTO_IPV6 as u8;
        assert!(tunnel_refused(&icmp4(3, 2, &six_in_four), b4, IPPROTO_IPV6));
        assert!(
            !tunnel_refused(&icmp4(3, 2, &six_in_four), b4, ipip),
            "another protocol than the one we sent"
        );

        let b6: IpAddr = "fd00::12".parse().unwrap();
        let mut outer6 = segment(sa("[fd00::2]:1"), sa("[fd00::12]:1"), 0, 0, TCP_SYN);
        outer6[6] = IPPROTO_IPV6 as u8;
        let icmp6 = |t: u8, c: u8, quote: &[u8]| {
            let mut p = vec![t, c, 0, 0, 0, 0, 0, 6];
            p.extend_from_slice(&quote[..48]);
            p
        };
        assert!(tunnel_refused(&icmp6(4, 1, &outer6), b6, IPPROTO_IPV6));
        assert!(
            !tunnel_refused(&icmp6(1, 4, &outer6), b6, IPPROTO_IPV6),
            "port unreachable"
        );
        assert!(!tunnel_refused(&icmp6(4, 1, &outer6), b4, IPPROTO_IPV6));
        // An IPv4 VIP's tunnel to an IPv6 backend (IPv4 in IPv6, next header 4).
        let mut four_in_six = outer6.clone();
        four_in_six[6] = IPPROTO_IPIP as u8;
        assert!(tunnel_refused(&icmp6(4, 1, &four_in_six), b6, ipip));
        assert!(!tunnel_refused(
            &icmp6(4, 1, &four_in_six),
            b6,
            IPPROTO_IPV6
        ));
    }

    #[test]
    fn sequence_numbers_differ_between_checks() {
        let a = initial_sequence();
        let b = initial_sequence();
        assert_ne!(a, b);
    }
}
