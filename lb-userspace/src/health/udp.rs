//! UDP probe: send one datagram, wait for any reply (optionally containing a substring).
//!
//! The socket is `connect`ed, which does two things: the kernel only delivers datagrams from
//! the target, and an ICMP port-unreachable from the target surfaces as `ECONNREFUSED` on the
//! next receive, so a closed port fails fast instead of waiting for the timeout.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::net::UdpSocket;

use super::{
    config::{HealthCheckConfig, DEFAULT_UDP_SEND, MAX_UDP_PAYLOAD},
    probe::{contains, local_addr, timed, Probe, ProbeError, ProbeFuture},
};

/// Healthy when the target answers `send` within `timeout` (with a reply containing `expect`,
/// if set).
#[derive(Debug, Clone)]
pub struct UdpProbe {
    /// Datagram payload.
    pub send: Vec<u8>,
    /// Substring the reply must contain; `None` accepts any reply.
    pub expect: Option<Vec<u8>>,
    /// Upper bound for the round trip.
    pub timeout: Duration,
    /// Source address for the probe; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
}

impl UdpProbe {
    pub fn from_config(cfg: &HealthCheckConfig, bind: Option<IpAddr>) -> Self {
        Self {
            send: cfg
                .send
                .as_deref()
                .unwrap_or(DEFAULT_UDP_SEND)
                .as_bytes()
                .to_vec(),
            expect: cfg.expect.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout: cfg.timeout(),
            bind,
        }
    }

    async fn exchange(&self, target: SocketAddr) -> Result<(), ProbeError> {
        let local = local_addr(self.bind, target)?.unwrap_or(if target.is_ipv4() {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)
        } else {
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)
        });
        let socket = UdpSocket::bind(local).await.map_err(ProbeError::Socket)?;
        socket
            .connect(target)
            .await
            .map_err(|e| ProbeError::from_io(e, true))?;
        socket
            .send(&self.send)
            .await
            .map_err(|e| ProbeError::from_io(e, false))?;

        // One maximal datagram, so a reply is never truncated before the substring check.
        let mut buf = vec![0u8; MAX_UDP_PAYLOAD + 1];
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| ProbeError::from_io(e, false))?;
        // A fresh socket per check means no stale reply from an earlier check can arrive, so
        // the first datagram decides.
        match &self.expect {
            Some(want) if !contains(&buf[..n], want) => Err(ProbeError::ReplyMismatch {
                want: String::from_utf8_lossy(want).into_owned(),
            }),
            _ => Ok(()),
        }
    }
}

impl Probe for UdpProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, self.exchange(target)))
    }

    fn kind(&self) -> &'static str {
        "udp"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::health::test_util::{closed_udp_port, udp_echo, udp_silent, SLACK};

    fn probe(expect: Option<&str>, timeout: Duration) -> UdpProbe {
        UdpProbe {
            send: b"ping".to_vec(),
            expect: expect.map(|s| s.as_bytes().to_vec()),
            timeout,
            bind: None,
        }
    }

    #[tokio::test]
    async fn echo_reply_is_healthy_v4_and_v6() {
        for ip in ["127.0.0.1", "::1"] {
            let (target, server) = udp_echo(ip, b"p").await;
            let timeout = Duration::from_secs(2);
            probe(None, timeout).check(target).await.expect("any reply");
            let latency = probe(Some("pping"), timeout)
                .check(target)
                .await
                .expect("reply contains pping");
            assert!(latency < timeout + SLACK);
            server.abort();
        }
    }

    #[tokio::test]
    async fn unexpected_reply_is_mismatch() {
        let (target, server) = udp_echo("127.0.0.1", b"").await;
        let err = probe(Some("pong"), Duration::from_secs(2))
            .check(target)
            .await
            .expect_err("echo is not pong");
        assert!(matches!(err, ProbeError::ReplyMismatch { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn closed_port_is_refused_v4_and_v6() {
        for ip in ["127.0.0.1", "::1"] {
            let target = closed_udp_port(ip).await;
            let err = probe(None, Duration::from_secs(2))
                .check(target)
                .await
                .expect_err("port unreachable");
            assert!(matches!(err, ProbeError::Refused), "{ip}: {err:?}");
        }
    }

    #[tokio::test]
    async fn silent_socket_times_out() {
        let (target, _socket) = udp_silent("127.0.0.1").await;
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let err = probe(None, timeout)
            .check(target)
            .await
            .expect_err("no reply");
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < timeout + SLACK);
    }
}
