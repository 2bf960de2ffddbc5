//! TCP connect probe: healthy when the three-way handshake completes.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};

use super::probe::{local_addr, timed, Probe, ProbeError, ProbeFuture};

/// Healthy when a TCP connection to the target completes within `timeout`.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// Upper bound for the handshake.
    pub timeout: Duration,
    /// Source address for the probe; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
}

impl TcpProbe {
    pub fn new(timeout: Duration, bind: Option<IpAddr>) -> Self {
        Self { timeout, bind }
    }
}

impl Probe for TcpProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, async move {
            // Dropping the stream closes it at once; the handshake alone is the check.
            connect(target, self.bind).await.map(drop)
        }))
    }

    fn kind(&self) -> &'static str {
        "tcp"
    }
}

/// Connects from `bind` (if set) to `target`; shared with the HTTP probe.
pub(crate) async fn connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
) -> Result<TcpStream, ProbeError> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(ProbeError::Socket)?;
    if let Some(local) = local_addr(bind, target)? {
        socket.bind(local).map_err(ProbeError::Socket)?;
    }
    socket
        .connect(target)
        .await
        .map_err(|e| ProbeError::from_io(e, true))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::*;
    use crate::health::test_util::{closed_tcp_port, SLACK};

    #[tokio::test]
    async fn open_port_is_healthy_v4_and_v6() {
        for ip in ["127.0.0.1", "::1"] {
            let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
            let target = listener.local_addr().expect("local addr");
            let probe = TcpProbe::new(Duration::from_secs(2), None);
            let latency = probe.check(target).await.expect("listener accepts");
            assert!(latency < Duration::from_secs(2) + SLACK);
        }
    }

    #[tokio::test]
    async fn bound_source_address_is_used() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("local addr");
        let src: IpAddr = "127.0.0.1".parse().expect("literal");
        let probe = TcpProbe::new(Duration::from_secs(2), Some(src));
        probe.check(target).await.expect("connects from 127.0.0.1");
        let (_stream, peer) = listener.accept().await.expect("accepted");
        assert_eq!(peer.ip(), src);
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let target = closed_tcp_port("127.0.0.1").await;
        let probe = TcpProbe::new(Duration::from_secs(2), None);
        let err = probe.check(target).await.expect_err("nothing listens");
        assert!(matches!(err, ProbeError::Refused), "{err:?}");
    }

    #[tokio::test]
    async fn wrong_source_family_is_reported() {
        let target: SocketAddr = "[::1]:9".parse().expect("literal");
        let probe = TcpProbe::new(Duration::from_secs(1), "127.0.0.1".parse().ok());
        let err = probe.check(target).await.expect_err("family mismatch");
        assert!(matches!(err, ProbeError::FamilyMismatch { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn full_backlog_times_out() {
        // A listener that never accepts still completes handshakes until its backlog is full;
        // fill it so the next SYN is dropped and the probe has to time out.
        let (target, _hold) = crate::health::test_util::saturated_listener().await;
        let timeout = Duration::from_millis(200);
        let probe = TcpProbe::new(timeout, None);
        let start = Instant::now();
        let err = probe.check(target).await.expect_err("backlog full");
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < timeout + SLACK);
    }
}
