//! The TLS layer of `https` checks: the client, the server name it sends, and what it
//! checks of the backend's certificate.
//!
//! By default the certificate is not verified: the check asks whether the backend's TLS
//! service answers, not whether clients will trust it. Verifying would take every backend
//! out at once when a certificate expires or the CA bundle on the balancer lags, the one
//! event where an L4 balancer must keep forwarding (HAProxy's `verify none`, cloud load
//! balancers' HTTPS checks do the same). The handshake's signatures are still checked
//! against the presented certificate, so a server without its key fails.
//!
//! With `ca_file` the operator asks for the other trade: a backend whose certificate does
//! not chain to those CAs, has expired or names another server fails its checks, as
//! HAProxy's `verify required ca-file` does — a backend left with an old certificate after
//! a rotation stops getting clients that would refuse it. Backends that require a client
//! certificate (mTLS on the service's port) get the one `cert_file` and `key_file` name.
//! The files are read again when one changes (its size, modification time or inode), so a
//! rotation needs no reload; a change that cannot be used keeps the last good version and
//! says why in the log.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use log::warn;
use tokio::net::TcpStream;
use tokio_rustls::{
    client::TlsStream,
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
        DigitallySignedStruct, RootCertStore, SignatureScheme,
    },
    TlsConnector,
};

use super::probe::ProbeError;

/// The files an `https` check's TLS reads: `ca_file` to verify the backend, and a client
/// certificate (`cert_file`, `key_file`) for backends that require one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    /// The certificate chain and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Each file set, with the config field that names it.
    fn each(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        let ca = self.ca_file.as_deref().map(|p| ("ca_file", p));
        let id = self
            .identity
            .iter()
            .flat_map(|(cert, key)| [("cert_file", cert.as_path()), ("key_file", key.as_path())]);
        ca.into_iter().chain(id)
    }

    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.identity.is_none()
    }

    /// A client config from the files as they are now; the error names the file at fault.
    fn load(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(ring::default_provider());
        let builder = with_versions(provider.clone());
        let builder = match &self.ca_file {
            Some(path) => builder.with_root_certificates(
                load_roots(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?,
            ),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider))),
        };
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain =
                    load_certs(cert).map_err(|e| format!("cert_file {}: {e}", cert.display()))?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("key_file {}: {}", key.display(), pem_error(&e)))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("cert_file and key_file: {e}"))
            }
        }
    }

    /// The files' stamps, or the first one that cannot be read.
    fn stamps(&self) -> Result<Vec<FileStamp>, String> {
        self.each()
            .map(|(field, path)| {
                FileStamp::of(path).map_err(|e| format!("{field} {}: {e}", path.display()))
            })
            .collect()
    }
}

/// What an `https` probe needs for its handshakes: built once per VIP's probe.
#[derive(Clone)]
pub struct TlsClient {
    /// Where its connector comes from.
    connector: Connector,
    /// The SNI name; `None` sends none (the target is then named by its address, which
    /// TLS does not put in the hello).
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .field(
                "files",
                &match &self.connector {
                    Connector::Fixed(_) => None,
                    Connector::Files(f) => Some(&f.files),
                },
            )
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client sending `sni` if set, else the name part of `host` if that is a DNS name;
    /// verifying certificates against `files.ca_file` and presenting `files.identity` when
    /// set.
    pub fn new(sni: Option<&str>, host: Option<&str>, files: TlsFiles) -> Self {
        let connector = if files.is_empty() {
            let provider = Arc::new(ring::default_provider());
            let config = with_versions(provider.clone())
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
                .with_no_client_auth();
            Connector::Fixed(connector(config))
        } else {
            Connector::Files(Arc::new(FileBacked::new(files)))
        };
        let name = sni.or_else(|| host.and_then(host_name)).and_then(dns_name);
        Self { connector, name }
    }

    /// The name sent as SNI, if any (what the tests check).
    #[cfg(test)]
    fn server_name(&self) -> Option<&str> {
        match &self.name {
            Some(ServerName::DnsName(name)) => Some(name.as_ref()),
            _ => None,
        }
    }

    /// Runs the handshake over `stream`, connected to `target`. With `ca_file` the name the
    /// certificate must carry is the SNI name, else the target's address.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        target: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, ProbeError> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
        let connector = match &self.connector {
            Connector::Fixed(c) => c.clone(),
            Connector::Files(files) => files.connector()?,
        };
        connector
            .connect(name, stream)
            .await
            .map_err(ProbeError::Tls)
    }
}

/// Where a [`TlsClient`]'s connector comes from.
#[derive(Clone)]
enum Connector {
    /// No file set: any certificate accepted, none presented.
    Fixed(TlsConnector),
    /// Built from the files, again when they change.
    Files(Arc<FileBacked>),
}

/// A client config's builder at the safe protocol versions, for `provider`.
fn with_versions(
    provider: Arc<CryptoProvider>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider supports both safe versions; a failure here is a build bug.
        .expect("ring supports TLS 1.2 and 1.3")
}

fn connector(mut config: rustls::ClientConfig) -> TlsConnector {
    // A server that speaks HTTP/2 too must pick HTTP/1.1, the only one the probe speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// What tells one version of a file from the next without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}

/// The files' connector, rebuilt when any of them changes.
struct FileBacked {
    files: TlsFiles,
    state: Mutex<FileState>,
}

#[derive(Default)]
struct FileState {
    /// The last good version's stamps and connector.
    good: Option<(Vec<FileStamp>, TlsConnector)>,
    /// What could not be used last (the stamps, or the unreadable file's fault), so that
    /// each bad version is reported once.
    bad: Option<Result<Vec<FileStamp>, String>>,
}

impl FileBacked {
    fn new(files: TlsFiles) -> Self {
        Self {
            files,
            state: Mutex::new(FileState::default()),
        }
    }

    /// The connector for the files as they are now: the cached one while they are
    /// unchanged, a new one when one changed, the last good one when the change cannot be
    /// used; an error when there never was a good one.
    fn connector(&self) -> Result<TlsConnector, ProbeError> {
        // A poisoned lock means a panic in this small function: the state is still whole.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = self.files.stamps();
        if let (Ok(stamps), Some((seen, connector))) = (&stamps, &state.good) {
            if stamps == seen {
                return Ok(connector.clone());
            }
        }
        let loaded = stamps
            .clone()
            .and_then(|stamps| self.files.load().map(|config| (stamps, config)));
        match loaded {
            Ok((stamps, config)) => {
                let connector = connector(config);
                state.good = Some((stamps, connector.clone()));
                state.bad = None;
                Ok(connector)
            }
            Err(reason) => {
                let first = state.bad.as_ref() != Some(&stamps);
                state.bad = Some(stamps);
                match &state.good {
                    Some((_, connector)) => {
                        if first {
                            warn!(
                                "https check: {reason}; the checks go on with the files' last good version"
                            );
                        }
                        Ok(connector.clone())
                    }
                    None => Err(ProbeError::TlsFiles(reason)),
                }
            }
        }
    }
}

/// The config's check of an `https` check's files: each readable and usable (a CA file
/// holds at least one certificate, all usable as trust anchors; the client certificate
/// goes with its key). The error names the file at fault.
pub fn check_files(files: &TlsFiles) -> Result<(), String> {
    files.stamps()?;
    files.load().map(|_| ())
}

/// The certificates of a PEM file (at least one).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&e))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certs)
}

/// The CA certificates of a PEM file.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} of the file: {e}", i + 1))?;
    }
    Ok(roots)
}

/// A PEM error as the operator needs it: a missing file's I/O error says so itself.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM key".to_owned(),
        other => format!("not a PEM file: {other}"),
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
            TlsClient::new(sni, host, TlsFiles::default())
                .server_name()
                .map(str::to_owned)
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
