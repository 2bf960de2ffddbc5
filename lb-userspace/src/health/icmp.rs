//! ICMP / ICMPv6 echo probe on a libc socket driven by tokio's [`AsyncFd`].
//!
//! Socket choice: first an unprivileged "ping socket" (`SOCK_DGRAM` + `IPPROTO_ICMP[V6]`),
//! where the kernel owns the echo id and only hands this socket its own replies; it works
//! only when `net.ipv4.ping_group_range` includes our group. Otherwise a `SOCK_RAW` socket
//! (root / CAP_NET_RAW, which the daemon has anyway to load XDP programs), which sees every
//! ICMP message the host receives, so replies are matched on id, sequence and a per-check token
//! in the payload.
//!
//! Either way the socket is `connect`ed to the target, so the kernel drops replies from other
//! hosts before they reach us.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{
    probe::{local_addr, timed, Probe, ProbeError, ProbeFuture},
    raw::{internet_checksum, strip_ipv4_header, Socket},
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// type, code, checksum, identifier, sequence.
const ICMP_HEADER_LEN: usize = 8;
/// Marks our echo payloads, after the 8-byte per-check token, so a capture shows who sent them.
const PAYLOAD_TAG: &[u8; 8] = b"xlb-hlth";

/// Counts checks process-wide: the low 16 bits are the echo sequence number, the whole value
/// feeds the per-check token.
static CHECKS: AtomicU64 = AtomicU64::new(0);

/// Healthy when the target answers an echo request within `timeout`; the port is ignored.
#[derive(Debug, Clone)]
pub struct IcmpProbe {
    /// Upper bound for the round trip.
    pub timeout: Duration,
    /// Source address for the probe; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
}

impl IcmpProbe {
    pub fn new(timeout: Duration, bind: Option<IpAddr>) -> Self {
        Self { timeout, bind }
    }

    async fn exchange(&self, target: SocketAddr) -> Result<(), ProbeError> {
        let v6 = target.is_ipv6();
        let local = local_addr(self.bind, target)?;
        let socket = IcmpSocket::open(v6, local, target).map_err(ProbeError::Socket)?;

        let echo = Echo::next();
        socket
            .send(&echo.request(v6))
            .await
            .map_err(|e| ProbeError::from_io(e, false))?;
        let mut buf = [0u8; 2048];
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| ProbeError::from_io(e, false))?;
            if echo.is_reply(&buf[..n], v6, socket.raw) {
                return Ok(());
            }
            // Anything else (our own request looped back on a raw socket, another process's
            // ping, an old reply) is not ours: keep waiting until the timeout.
        }
    }
}

impl Probe for IcmpProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, self.exchange(target)))
    }

    fn kind(&self) -> &'static str {
        "icmp"
    }
}

/// One echo exchange's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Echo {
    id: u16,
    seq: u16,
    /// Unique per check, so a late reply to an earlier check (or another process's ping with
    /// an equal id/seq) is never taken for this one.
    token: u64,
}

impl Echo {
    fn next() -> Self {
        let n = CHECKS.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let pid = std::process::id();
        Self {
            // Truncation intended: the id only has to differ between processes pinging at once.
            id: pid as u16,
            seq: n as u16,
            token: (u64::from(pid) << 32 | u64::from(nanos)) ^ n.rotate_left(17),
        }
    }

    /// The ICMP message (no IP header). The ICMPv6 checksum covers a pseudo-header only the
    /// kernel knows, and the kernel fills it in for ICMPv6 sockets, so it is left 0 here.
    fn request(&self, v6: bool) -> Vec<u8> {
        let mut msg = Vec::with_capacity(ICMP_HEADER_LEN + 16);
        msg.push(if v6 {
            ICMP6_ECHO_REQUEST
        } else {
            ICMP_ECHO_REQUEST
        });
        msg.push(0); // code
        msg.extend_from_slice(&[0, 0]); // checksum, below
        msg.extend_from_slice(&self.id.to_be_bytes());
        msg.extend_from_slice(&self.seq.to_be_bytes());
        msg.extend_from_slice(&self.token.to_be_bytes());
        msg.extend_from_slice(PAYLOAD_TAG);
        if !v6 {
            let sum = internet_checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        msg
    }

    /// Whether `packet` as read from the socket is the reply to this echo. A raw IPv4 socket
    /// delivers the IP header too (IPv6 and ping sockets do not). On a ping socket the kernel
    /// rewrote the id to the socket's own and already filtered on it, so only raw sockets
    /// compare it.
    fn is_reply(&self, packet: &[u8], v6: bool, raw: bool) -> bool {
        let icmp = if raw && !v6 {
            match strip_ipv4_header(packet) {
                Some(icmp) => icmp,
                None => return false,
            }
        } else {
            packet
        };
        let want_type = if v6 {
            ICMP6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        let [ty, code, _, _, id_hi, id_lo, seq_hi, seq_lo, payload @ ..] = icmp else {
            return false;
        };
        *ty == want_type
            && *code == 0
            && (!raw || u16::from_be_bytes([*id_hi, *id_lo]) == self.id)
            && u16::from_be_bytes([*seq_hi, *seq_lo]) == self.seq
            && payload.starts_with(&self.token.to_be_bytes())
    }
}

/// A connected ICMP socket: a ping socket or a raw one.
struct IcmpSocket {
    sock: Socket,
    /// `SOCK_RAW` (true) or a ping socket (false); decides how replies are parsed.
    raw: bool,
}

impl IcmpSocket {
    fn open(v6: bool, local: Option<SocketAddr>, target: SocketAddr) -> io::Result<Self> {
        let (domain, protocol) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        // Port 0: ICMP has no ports; the kernel reads only the address (and IPv6 scope).
        let mut peer = target;
        peer.set_port(0);
        // Any ping-socket failure (EACCES outside ping_group_range, EPROTONOSUPPORT on old
        // kernels) falls back to raw; the raw error is the one worth reporting.
        match Socket::open(domain, libc::SOCK_DGRAM, protocol, local, Some(peer)) {
            Ok(sock) => Ok(Self { sock, raw: false }),
            Err(_) => Ok(Self {
                sock: Socket::open(domain, libc::SOCK_RAW, protocol, local, Some(peer))?,
                raw: true,
            }),
        }
    }

    async fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.sock.send(msg).await
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::health::test_util::SLACK;

    fn echo() -> Echo {
        Echo {
            id: 0x1234,
            seq: 7,
            token: 0x0102_0304_0506_0708,
        }
    }

    /// Turns our request into the reply a peer would send.
    fn reply_to(req: &[u8], v6: bool) -> Vec<u8> {
        let mut reply = req.to_vec();
        reply[0] = if v6 {
            ICMP6_ECHO_REPLY
        } else {
            ICMP_ECHO_REPLY
        };
        reply
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 example words 0x0001 0xf203 0xf4f5 0xf6f7 sum to 0xddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // A message carrying its own checksum sums to zero.
        let req = echo().request(false);
        assert_eq!(internet_checksum(&req), 0);
    }

    #[test]
    fn request_layout() {
        let req = echo().request(true);
        assert_eq!(&req[..2], &[ICMP6_ECHO_REQUEST, 0]);
        assert_eq!(&req[2..4], &[0, 0], "kernel fills the ICMPv6 checksum");
        assert_eq!(&req[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(&req[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&req[16..], PAYLOAD_TAG);
    }

    #[test]
    fn reply_matching() {
        let e = echo();
        for v6 in [false, true] {
            let reply = reply_to(&e.request(v6), v6);
            assert!(e.is_reply(&reply, v6, false));
            assert!(e.is_reply(&reply, v6, v6), "raw v6 has no IP header");
            // Our own request (looped back to a raw socket) is not a reply.
            assert!(!e.is_reply(&e.request(v6), v6, false));
            let other_seq = Echo { seq: 8, ..e };
            assert!(!other_seq.is_reply(&reply, v6, false));
            let other_token = Echo { token: 9, ..e };
            assert!(!other_token.is_reply(&reply, v6, false));
            assert!(!e.is_reply(&reply[..7], v6, false));
        }
        // Ping sockets rewrite the id, so it only matters on raw sockets.
        let mut rewritten = reply_to(&e.request(false), false);
        rewritten[4..6].copy_from_slice(&[0xbe, 0xef]);
        assert!(e.is_reply(&rewritten, false, false));
        let mut with_ip = vec![0x45; 1];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&rewritten);
        assert!(!e.is_reply(&with_ip, false, true));
    }

    #[test]
    fn raw_ipv4_header_is_stripped_by_ihl() {
        let e = echo();
        let reply = reply_to(&e.request(false), false);
        // IHL 6: a 24-byte header with one option word.
        let mut packet = vec![0x46];
        packet.extend_from_slice(&[0; 23]);
        packet.extend_from_slice(&reply);
        assert!(e.is_reply(&packet, false, true));
        assert!(
            !e.is_reply(&reply, false, true),
            "no IP header on a raw v4 read"
        );
        assert_eq!(strip_ipv4_header(&[0x44, 0, 0]), None, "IHL below 5");
        assert_eq!(strip_ipv4_header(&[0x65; 40]), None, "not IPv4");
    }

    #[test]
    fn sequence_numbers_advance() {
        let (a, b) = (Echo::next(), Echo::next());
        assert_ne!(a.seq, b.seq);
        assert_ne!(a.token, b.token);
    }

    #[tokio::test]
    async fn loopback_answers_v4_and_v6() {
        for ip in ["127.0.0.1", "::1"] {
            let target = SocketAddr::new(ip.parse().expect("literal"), 0);
            let timeout = Duration::from_secs(2);
            let probe = IcmpProbe::new(timeout, None);
            let start = Instant::now();
            match probe.check(target).await {
                Ok(latency) => assert!(latency < timeout + SLACK),
                // Neither a ping socket nor a raw socket: not root and outside
                // ping_group_range. Nothing to test here, and nothing wrong with the probe.
                Err(ProbeError::Socket(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                    eprintln!("skipping ICMP test: {e}");
                    return;
                }
                Err(e) => panic!("echo to {ip} failed: {e}"),
            }
            assert!(start.elapsed() < timeout + SLACK);
        }
    }

    #[tokio::test]
    async fn bound_source_and_family_mismatch() {
        let target: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let probe = IcmpProbe::new(Duration::from_secs(2), "127.0.0.1".parse().ok());
        match probe.check(target).await {
            Ok(_) => {}
            Err(ProbeError::Socket(e)) if e.kind() == io::ErrorKind::PermissionDenied => return,
            Err(e) => panic!("bound echo failed: {e}"),
        }
        let probe = IcmpProbe::new(Duration::from_secs(2), "::1".parse().ok());
        let err = probe.check(target).await.expect_err("v6 source, v4 target");
        assert!(matches!(err, ProbeError::FamilyMismatch { .. }), "{err:?}");
    }
}
