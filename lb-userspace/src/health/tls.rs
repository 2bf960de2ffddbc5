//! The TLS layer of `https` checks: a client that completes the handshake with whatever
//! certificate the backend presents, and the server name it sends.
//!
//! Why the certificate is not verified: the check asks whether the backend's TLS service
//! answers, not whether clients will trust it. Verifying would take every backend out at
//! once when a certificate expires or the CA bundle on the balancer lags, the one event
//! where an L4 balancer must keep forwarding (HAProxy's `verify none`, cloud load
//! balancers' HTTPS checks do the same). The handshake's signatures are still checked
//! against the presented certificate, so a server without its key fails.

use std::{io, net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tokio_rustls::{
    client::TlsStream,
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    },
    TlsConnector,
};

use super::probe::ProbeError;

/// What an `https` probe needs for its handshakes: built once per VIP's probe.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    /// The SNI name; `None` sends none (the target is then named by its address, which
    /// TLS does not put in the hello).
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client sending `sni` if set, else the name part of `host` if that is a DNS name.
    pub fn new(sni: Option<&str>, host: Option<&str>) -> Self {
        let provider = Arc::new(ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            // The ring provider supports both safe versions; a failure here is a build bug.
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
            .with_no_client_auth();
        let mut config = config;
        // A server that speaks HTTP/2 too must pick HTTP/1.1, the only one the probe speaks.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = sni.or_else(|| host.and_then(host_name)).and_then(dns_name);
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        }
    }

    /// The name sent as SNI, if any (what the tests check).
    #[cfg(test)]
    fn server_name(&self) -> Option<&str> {
        match &self.name {
            Some(ServerName::DnsName(name)) => Some(name.as_ref()),
            _ => None,
        }
    }

    /// Runs the handshake over `stream`, connected to `target`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        target: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, ProbeError> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
        self.connector
            .connect(name, stream)
            .await
            .map_err(ProbeError::Tls)
    }
}

/// `sni`'s check in the config: a DNS name (an address is never sent as SNI).
pub fn check_sni(name: &str) -> Result<(), &'static str> {
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => Err("an IP address is never sent as SNI; leave sni out"),
        Err(_) => Err("not a valid DNS name"),
    }
}

/// The name part of a `Host` header value (`name`, `name:port`; `[v6]:port` has none).
fn host_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

/// `name` as an SNI name, if it is a DNS name rather than an address.
fn dns_name(name: &str) -> Option<ServerName<'static>> {
    match ServerName::try_from(name.to_owned()) {
        Ok(n @ ServerName::DnsName(_)) => Some(n),
        _ => None,
    }
}

/// Accepts any certificate (see the module docs) but checks the handshake's signatures
/// with it. Public for the test peers that talk TLS to throwaway certificates.
#[derive(Debug)]
pub struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    /// A verifier checking signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS peer that closes without `close_notify` after a `Connection: close` response has
/// ended the exchange as surely as a TCP close ends a plain one: the probe reads it as the
/// end of the stream (a cut response still fails on its framing).
pub(crate) fn is_unclean_close(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::UnexpectedEof
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_follows_sni_then_host() {
        let name = |sni: Option<&str>, host: Option<&str>| {
            TlsClient::new(sni, host).server_name().map(str::to_owned)
        };
        assert_eq!(name(None, None), None);
        assert_eq!(name(None, Some("api.example")), Some("api.example".into()));
        assert_eq!(
            name(None, Some("api.example:8443")),
            Some("api.example".into())
        );
        assert_eq!(name(None, Some("198.18.0.11:443")), None);
        assert_eq!(name(None, Some("[fd00::11]:443")), None);
        assert_eq!(
            name(Some("sni.example"), Some("api.example")),
            Some("sni.example".into())
        );
    }

    #[test]
    fn sni_must_be_a_dns_name() {
        assert_eq!(check_sni("api.example"), Ok(()));
        assert!(check_sni("198.18.0.11").is_err());
        assert!(check_sni("fd00::11").is_err());
        assert!(check_sni("bad name").is_err());
        assert!(check_sni("").is_err());
    }
}
