//! The one trait every probe kind implements, the errors a probe reports, and the helpers the
//! probes share (source-address binding, the timeout wrapper).

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    config::{CheckKind, HealthCheckConfig},
    http::HttpProbe,
    icmp::IcmpProbe,
    tcp::TcpProbe,
    tunnel::TcpTunnelProbe,
    udp::UdpProbe,
};

/// What [`Probe::check`] returns: the boxed future an object-safe async method needs.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<Duration, ProbeError>> + Send + 'a>>;

/// One way of asking a backend whether it is alive.
///
/// A probe is stateless between checks (each check opens its own socket), so one instance can
/// serve many targets concurrently; it enforces its own timeout, so callers never need to.
pub trait Probe: Send + Sync {
    /// Checks `target` once; on success returns the measured latency.
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a>;

    /// The probe kind's config name (`"tcp"`, `"http"`, ...), for logs and metrics.
    fn kind(&self) -> &'static str;
}

/// Why a single check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {after:?}")]
    Timeout { after: Duration },
    #[error("connection refused: nothing listens on the port (or ICMP port unreachable)")]
    Refused,
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("i/o error during the check: {0}")]
    Io(#[source] io::Error),
    #[error("could not open the probe socket: {0} (raw sockets need root or CAP_NET_RAW; ICMP can also use net.ipv4.ping_group_range)")]
    Socket(#[source] io::Error),
    #[error("source address {bind} and target {target} are of different IP families; set a source address of the target's family")]
    FamilyMismatch { bind: IpAddr, target: SocketAddr },
    #[error("HTTP status {got}, want {want}")]
    BadStatus { got: u16, want: u16 },
    #[error("response body does not contain {want:?}")]
    BodyMismatch { want: String },
    #[error("reply does not contain {want:?}")]
    ReplyMismatch { want: String },
    #[error("the backend does not strip the tunnel (its stack answered that it does not know the protocol): is `xlb decap` running there?")]
    TunnelRefused,
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    #[error("TLS files unusable: {0}")]
    TlsFiles(String),
    #[error("malformed response: {reason}")]
    Malformed { reason: &'static str },
}

impl ProbeError {
    /// Sorts an I/O error from a connect or receive: "refused" is the common, expected failure
    /// (backend process down) and gets its own variant so logs and tests need not inspect
    /// `io::ErrorKind`s.
    pub(crate) fn from_io(err: io::Error, connecting: bool) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ProbeError::Refused,
            _ if connecting => ProbeError::Connect(err),
            _ => ProbeError::Io(err),
        }
    }
}

/// Builds the probe a config asks for, for a backend of the VIP at `vip`; `bind` is the
/// source address for probe packets (`None` lets the kernel choose by route).
pub fn build_probe(cfg: &HealthCheckConfig, bind: Option<IpAddr>, vip: IpAddr) -> Arc<dyn Probe> {
    match cfg.kind {
        CheckKind::TcpTunnel => Arc::new(TcpTunnelProbe::new(vip, cfg.timeout(), bind)),
        CheckKind::Tcp => Arc::new(TcpProbe::from_config(cfg, bind)),
        CheckKind::Http | CheckKind::Https => Arc::new(HttpProbe::from_config(cfg, bind)),
        CheckKind::Udp => Arc::new(UdpProbe::from_config(cfg, bind)),
        CheckKind::Icmp => Arc::new(IcmpProbe::new(cfg.timeout(), bind)),
        CheckKind::None => Arc::new(NoneProbe),
    }
}

/// `kind: none`: no traffic, always healthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneProbe;

impl Probe for NoneProbe {
    fn check<'a>(&'a self, _target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(async { Ok(Duration::ZERO) })
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}

/// Runs one check body under `timeout` and measures it; the latency covers the whole exchange
/// (connect, request, answer), which is what a client of the backend would experience.
pub(crate) async fn timed<F>(timeout: Duration, check: F) -> Result<Duration, ProbeError>
where
    F: Future<Output = Result<(), ProbeError>>,
{
    let start = Instant::now();
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Err(ProbeError::Timeout { after: timeout }),
    }
}

/// The local address a probe socket binds to: the configured source (port 0), or `None` to
/// let the kernel pick. A source of the wrong family is an error rather than a silent
/// fallback, so a misconfigured source address shows up in the logs.
pub(crate) fn local_addr(
    bind: Option<IpAddr>,
    target: SocketAddr,
) -> Result<Option<SocketAddr>, ProbeError> {
    match bind {
        None => Ok(None),
        Some(ip) if ip.is_ipv4() == target.is_ipv4() => Ok(Some(SocketAddr::new(ip, 0))),
        Some(ip) => Err(ProbeError::FamilyMismatch { bind: ip, target }),
    }
}

/// Byte-substring search; the needles are short health strings, so the naive scan is fine.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_search() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(contains(b"ok", b"ok"));
        assert!(!contains(b"o", b"ok"));
        assert!(!contains(b"OK", b"ok"));
        assert!(contains(b"", b""));
    }

    #[test]
    fn source_address_must_match_the_target_family() {
        let v4: SocketAddr = "127.0.0.1:80".parse().expect("literal");
        let v6: SocketAddr = "[::1]:80".parse().expect("literal");
        let src4: IpAddr = "127.0.0.1".parse().expect("literal");
        assert!(matches!(local_addr(None, v4), Ok(None)));
        assert!(
            matches!(local_addr(Some(src4), v4), Ok(Some(a)) if a.ip() == src4 && a.port() == 0)
        );
        assert!(matches!(
            local_addr(Some(src4), v6),
            Err(ProbeError::FamilyMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn none_is_always_healthy() {
        let target: SocketAddr = "127.0.0.1:9".parse().expect("literal");
        let probe = build_probe(
            &HealthCheckConfig {
                kind: CheckKind::None,
                ..Default::default()
            },
            None,
            target.ip(),
        );
        assert_eq!(probe.kind(), "none");
        assert_eq!(probe.check(target).await.ok(), Some(Duration::ZERO));
    }

    #[test]
    fn build_probe_picks_the_kind() {
        for kind in [
            CheckKind::Tcp,
            CheckKind::Http,
            CheckKind::Https,
            CheckKind::Udp,
            CheckKind::Icmp,
            CheckKind::None,
            CheckKind::TcpTunnel,
        ] {
            let cfg = HealthCheckConfig {
                kind,
                ..Default::default()
            };
            let vip = IpAddr::from([198, 18, 1, 1]);
            assert_eq!(build_probe(&cfg, None, vip).kind(), kind.as_str());
        }
    }
}
