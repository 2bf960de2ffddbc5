//! TCP probe: healthy when the three-way handshake completes, and, with `send` / `expect`
//! (HAProxy's `tcp-check send` / `expect`), when the service answers what it should: a
//! Redis `PING` its `+PONG`, an SMTP server its `220` banner. A service that accepts
//! connections but no longer answers (hung, out of workers) passes the handshake alone.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use super::{
    config::{HealthCheckConfig, MAX_TCP_REPLY},
    probe::{contains, local_addr, timed, Probe, ProbeError, ProbeFuture},
};

/// Healthy when a TCP connection to the target completes within `timeout` (and the
/// exchange `send` / `expect` ask for does).
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// Upper bound for the handshake and the exchange.
    pub timeout: Duration,
    /// Source address for the probe; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// Written once connected.
    pub send: Option<Vec<u8>>,
    /// A substring of what the service sends, read for up to 64 KiB.
    pub expect: Option<Vec<u8>>,
}

impl TcpProbe {
    /// The handshake alone.
    pub fn new(timeout: Duration, bind: Option<IpAddr>) -> Self {
        Self {
            timeout,
            bind,
            send: None,
            expect: None,
        }
    }

    pub fn from_config(cfg: &HealthCheckConfig, bind: Option<IpAddr>) -> Self {
        Self {
            send: cfg.send.as_ref().map(|s| s.as_bytes().to_vec()),
            expect: cfg.expect.as_ref().map(|s| s.as_bytes().to_vec()),
            ..Self::new(cfg.timeout(), bind)
        }
    }

    async fn exchange(&self, target: SocketAddr) -> Result<(), ProbeError> {
        // Dropping the stream closes it; without send / expect the handshake is the check.
        let mut stream = connect(target, self.bind).await?;
        if let Some(send) = &self.send {
            stream
                .write_all(send)
                .await
                .map_err(|e| ProbeError::from_io(e, false))?;
        }
        let Some(want) = &self.expect else {
            return Ok(());
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if contains(&got, want) {
                return Ok(());
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ProbeError::from_io(e, false))?;
            // Closed, or as much as a service's answer to a check can sensibly be.
            if n == 0 || got.len() >= MAX_TCP_REPLY {
                return Err(ProbeError::ReplyMismatch {
                    want: String::from_utf8_lossy(want).into_owned(),
                });
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Probe for TcpProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, self.exchange(target)))
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

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

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

    /// A loopback server that, per connection, sends `banner`, then answers a read of
    /// anything with `answer` (nothing: never answers), then keeps the connection open or
    /// closes it.
    async fn talker(
        banner: &'static [u8],
        answer: Option<&'static [u8]>,
        close: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let target = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(banner).await;
                if let Some(answer) = answer {
                    let mut buf = [0u8; 256];
                    if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                        let _ = s.write_all(answer).await;
                    }
                }
                if !close {
                    held.push(s);
                }
            }
        });
        (target, task)
    }

    fn exchange(send: Option<&str>, expect: &str) -> TcpProbe {
        TcpProbe {
            send: send.map(|s| s.as_bytes().to_vec()),
            expect: Some(expect.as_bytes().to_vec()),
            ..TcpProbe::new(Duration::from_millis(500), None)
        }
    }

    #[tokio::test]
    async fn send_and_expect_check_the_answer() {
        let (target, server) = talker(b"", Some(b"+PONG\r\n"), false).await;
        exchange(Some("PING\r\n"), "+PONG")
            .check(target)
            .await
            .expect("answers PONG");
        let err = exchange(Some("PING\r\n"), "+OK")
            .check(target)
            .await
            .expect_err("not what is expected");
        // Still open and silent after its answer: the wait ends at the timeout.
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        server.abort();
        // An answer that is not it, then the close: fails at once, naming what was wanted.
        let (target, server) = talker(b"", Some(b"-ERR unknown\r\n"), true).await;
        let err = exchange(Some("PING\r\n"), "+PONG")
            .check(target)
            .await
            .expect_err("wrong answer");
        assert!(matches!(err, ProbeError::ReplyMismatch { .. }), "{err:?}");
        assert_eq!(err.to_string(), r#"reply does not contain "+PONG""#);
        server.abort();
    }

    #[tokio::test]
    async fn a_banner_is_expected_without_sending() {
        let (target, server) = talker(b"220 mail.example ESMTP\r\n", None, false).await;
        exchange(None, "220 ").check(target).await.expect("banner");
        server.abort();
    }

    #[tokio::test]
    async fn a_service_that_accepts_but_never_answers_fails() {
        let (target, server) = talker(b"", None, false).await;
        // The handshake alone passes...
        TcpProbe::new(Duration::from_millis(500), None)
            .check(target)
            .await
            .expect("accepts");
        // ...the exchange does not.
        let start = Instant::now();
        let err = exchange(Some("PING\r\n"), "+PONG")
            .check(target)
            .await
            .expect_err("hung");
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(500) + SLACK);
        server.abort();
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
