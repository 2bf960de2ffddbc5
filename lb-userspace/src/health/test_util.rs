//! Loopback-only servers and helpers for the probe tests. Nothing here ever addresses anything
//! but 127.0.0.1 / ::1.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    task::JoinHandle,
};

/// Generous allowance on top of a probe's timeout: CI machines stall.
pub const SLACK: Duration = Duration::from_secs(2);

/// A loopback port with nothing listening: bind to get a free port, then close it.
pub async fn closed_tcp_port(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}

/// Same for UDP.
pub async fn closed_udp_port(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).await.expect("bind loopback");
    let addr = socket.local_addr().expect("local addr");
    drop(socket);
    addr
}

/// A listener whose accept queue is full, so the kernel drops further SYNs and a connect
/// hangs. Keep the returned value alive for as long as the port must stay saturated.
pub async fn saturated_listener() -> (SocketAddr, (TcpListener, Vec<TcpStream>)) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("literal"))
        .expect("bind loopback");
    let addr = socket.local_addr().expect("local addr");
    // Backlog 0: Linux keeps one finished handshake queued, then drops SYNs.
    let listener = socket.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    // The listener is returned unaccepted: tokio only accepts when asked to.
    (addr, (listener, fillers))
}

/// An HTTP server on loopback that answers every connection with `response` (raw bytes) after
/// reading the request head, then closes. Returns its address and the task to abort.
pub async fn http_server(ip: &str, response: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An HTTP server that records the request head it received and answers 200.
pub async fn recording_http_server(
    ip: &str,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
    });
    (addr, rx)
}

/// Accepts connections and holds them open without ever answering.
pub async fn silent_tcp_server(ip: &str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// A UDP server that answers each datagram with `prefix` followed by the datagram.
pub async fn udp_echo(ip: &str, prefix: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind((ip, 0)).await.expect("bind loopback");
    let addr = socket.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let mut reply = prefix.to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, task)
}

/// A UDP socket that is bound (so no port-unreachable comes back) but never replies.
pub async fn udp_silent(ip: &str) -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind((ip, 0)).await.expect("bind loopback");
    let addr = socket.local_addr().expect("local addr");
    (addr, socket)
}

/// How a [`tls_server`] ends its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsClose {
    /// `close_notify`, then the TCP close.
    Clean,
    /// The TCP close alone, as servers that never shut TLS down do.
    Abrupt,
}

/// A self-signed certificate and its key, made by the `openssl` command for this test run
/// (nothing verifies it: the `https` probe accepts any certificate).
fn self_signed() -> CertAndKey {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xlb-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=xlb-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = CertificateDer::pem_file_iter(&cert)
        .expect("read cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(&key).expect("parse key");
    let _ = std::fs::remove_dir_all(&dir);
    (certs, key)
}

/// A certificate chain and its key, as a server presents them.
pub type CertAndKey = (
    Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
);

/// A CA made for one test, issuing server certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// When a [`TestCa`] certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 2020 to 2100.
    Now,
    /// 2000 to 2001: expired.
    Expired,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    /// The CA certificate as PEM: a `ca_file`'s content.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate as DER: a trust anchor.
    pub fn der(&self) -> tokio_rustls::rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `names` (DNS names or IP addresses, as SANs) and its key.
    pub fn issue(&self, names: &[&str], validity: Validity) -> CertAndKey {
        use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let (cert, key) = self.sign(names, validity);
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// [`Self::issue`] as PEM texts: a `cert_file` and a `key_file`.
    pub fn issue_pem(&self, names: &[&str], validity: Validity) -> (String, String) {
        let (cert, key) = self.sign(names, validity);
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate for servers and clients alike.
    fn sign(&self, names: &[&str], validity: Validity) -> (rcgen::Certificate, rcgen::KeyPair) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (params.not_before, params.not_after) = match validity {
            Validity::Now => (
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2100, 1, 1),
            ),
            Validity::Expired => (
                rcgen::date_time_ymd(2000, 1, 1),
                rcgen::date_time_ymd(2001, 1, 1),
            ),
        };
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        (cert, key)
    }
}

/// An HTTPS server on loopback (TLS 1.2 or 1.3, a self-signed certificate) answering every
/// request with `response`, then closing as `close` says. Returns its address, the task to
/// abort, and the SNI name of each handshake as it comes (`None`: the client sent none).
pub async fn tls_server(
    ip: &str,
    response: &'static [u8],
    close: TlsClose,
) -> (
    SocketAddr,
    JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
) {
    tls_server_with(ip, response, close, self_signed()).await
}

/// [`tls_server`] presenting `cert`.
pub async fn tls_server_with(
    ip: &str,
    response: &'static [u8],
    close: TlsClose,
    cert: CertAndKey,
) -> (
    SocketAddr,
    JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
) {
    use std::sync::Arc;
    use tokio_rustls::{rustls, TlsAcceptor};
    let (certs, key) = cert;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (names, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, names) = (acceptor.clone(), names.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = names.send(tls.get_ref().1.server_name().map(str::to_owned));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(response).await;
                let _ = tls.flush().await;
                if close == TlsClose::Clean {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, task, rx)
}
