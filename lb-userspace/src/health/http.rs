//! HTTP/1.1 probe written by hand over a plain TCP stream, or a TLS one for `https` checks:
//! `GET path` with `Connection: close`, then the status line and (when a body substring is
//! expected) up to 64 KiB of body.
//!
//! Why no HTTP crate: the probe needs one request shape and a status code; a hand-written
//! client keeps the daemon's dependency tree small and every failure mode an explicit
//! [`ProbeError`] variant.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    config::{CheckKind, HealthCheckConfig, HttpMethod, MAX_HTTP_BODY},
    probe::{contains, timed, Probe, ProbeError, ProbeFuture},
    tcp::connect,
    tls::{is_unclean_close, TlsClient},
};

/// A response head longer than this is not a health endpoint's answer.
const MAX_HEAD: usize = 16 * 1024;

/// Healthy when `GET path` answers `expect_status` (and a body containing `expect_body`).
#[derive(Debug, Clone)]
pub struct HttpProbe {
    /// Request path, starting with `/`.
    pub path: String,
    /// `Host` header; `None` sends the target's `ip:port` (IPv6 in brackets).
    pub host: Option<String>,
    /// Status a healthy backend answers with.
    pub expect_status: u16,
    /// Substring the first 64 KiB of the (de-chunked) body must contain.
    pub expect_body: Option<String>,
    /// Upper bound for connect, request and response together.
    pub timeout: Duration,
    /// Source address for the probe; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// `https`: the request goes over TLS.
    pub tls: Option<TlsClient>,
    /// The request method.
    pub method: HttpMethod,
    /// Extra request headers, as validated (`HealthCheckConfig::headers`).
    pub headers: Vec<(String, String)>,
}

impl HttpProbe {
    /// An `http` or `https` probe, as `cfg.kind` says.
    pub fn from_config(cfg: &HealthCheckConfig, bind: Option<IpAddr>) -> Self {
        let tls = (cfg.kind == CheckKind::Https)
            .then(|| TlsClient::new(cfg.sni.as_deref(), cfg.host.as_deref(), cfg.tls_files()));
        Self {
            path: cfg.path.clone(),
            host: cfg.host.clone(),
            expect_status: cfg.expect_status,
            expect_body: cfg.expect_body.clone(),
            timeout: cfg.timeout(),
            bind,
            tls,
            method: cfg.method,
            headers: cfg
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }

    fn request(&self, target: SocketAddr) -> String {
        let host = match &self.host {
            Some(host) => host.clone(),
            // SocketAddr's Display is exactly Host syntax: `1.2.3.4:80`, `[::1]:80`.
            None => target.to_string(),
        };
        let extra: String = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: xlb-health\r\nAccept: */*\r\n{extra}\r\n",
            self.method.as_str(),
            self.path
        )
    }

    async fn exchange(&self, target: SocketAddr) -> Result<(), ProbeError> {
        let stream = connect(target, self.bind).await?;
        match &self.tls {
            None => self.exchange_over(stream, target).await,
            Some(tls) => {
                let stream = tls.handshake(stream, target).await?;
                self.exchange_over(stream, target).await
            }
        }
    }

    /// The request and its answer over a connected (and for `https`, handshaken) stream.
    async fn exchange_over<S>(&self, mut stream: S, target: SocketAddr) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        stream
            .write_all(self.request(target).as_bytes())
            .await
            .map_err(|e| ProbeError::from_io(e, false))?;
        // TLS buffers what it encrypts.
        stream
            .flush()
            .await
            .map_err(|e| ProbeError::from_io(e, false))?;

        let mut reader = Reader {
            stream: &mut stream,
            buf: Vec::new(),
            eof: false,
        };
        let head_len = reader.read_head().await?;
        let head = parse_head(&reader.buf[..head_len])?;
        if head.status != self.expect_status {
            return Err(ProbeError::BadStatus {
                got: head.status,
                want: self.expect_status,
            });
        }
        let Some(want) = &self.expect_body else {
            return Ok(());
        };
        reader.buf.drain(..head_len);
        reader.find_in_body(head.framing, want.as_bytes()).await
    }
}

impl Probe for HttpProbe {
    fn check<'a>(&'a self, target: SocketAddr) -> ProbeFuture<'a> {
        Box::pin(timed(self.timeout, self.exchange(target)))
    }

    fn kind(&self) -> &'static str {
        if self.tls.is_some() {
            CheckKind::Https.as_str()
        } else {
            CheckKind::Http.as_str()
        }
    }
}

/// How the end of the body is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Neither header: the body runs until the server closes (we asked for that).
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    framing: Framing,
}

/// Buffers reads from the response stream.
struct Reader<'s, S> {
    stream: &'s mut S,
    buf: Vec<u8>,
    eof: bool,
}

impl<S: AsyncRead + Unpin> Reader<'_, S> {
    /// Reads one more chunk into `buf`; sets `eof` when the server closed.
    async fn fill(&mut self) -> Result<(), ProbeError> {
        let mut chunk = [0u8; 8192];
        let n = match self.stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if is_unclean_close(&e) => 0,
            Err(e) => return Err(ProbeError::from_io(e, false)),
        };
        self.eof = n == 0;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads until the blank line ending the head; returns the head's length including it.
    async fn read_head(&mut self) -> Result<usize, ProbeError> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                return Ok(pos + 4);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ProbeError::Malformed {
                    reason: "response head longer than 16 KiB",
                });
            }
            if self.eof {
                return Err(ProbeError::Malformed {
                    reason: if self.buf.is_empty() {
                        "connection closed without a response"
                    } else {
                        "connection closed inside the response head"
                    },
                });
            }
            self.fill().await?;
        }
    }

    /// Reads body bytes (already in `buf` after the head, then from the stream) until `want`
    /// shows up, the body ends, or 64 KiB have been seen. Stops as early as it can so a large
    /// or slow body does not cost a timeout.
    async fn find_in_body(&mut self, framing: Framing, want: &[u8]) -> Result<(), ProbeError> {
        loop {
            let (body, complete) = match framing {
                Framing::Length(len) => {
                    let end = len.min(self.buf.len());
                    (self.buf[..end].to_vec(), self.buf.len() >= len)
                }
                Framing::Chunked => dechunk(&self.buf)?,
                Framing::UntilClose => (self.buf.clone(), false),
            };
            let capped = &body[..body.len().min(MAX_HTTP_BODY)];
            if contains(capped, want) {
                return Ok(());
            }
            if complete || self.eof || body.len() >= MAX_HTTP_BODY {
                return Err(ProbeError::BodyMismatch {
                    want: String::from_utf8_lossy(want).into_owned(),
                });
            }
            // Chunk framing adds a few bytes per chunk; this bound keeps a hostile server
            // from growing the buffer without the decoded body growing.
            if self.buf.len() > 2 * MAX_HTTP_BODY {
                return Err(ProbeError::Malformed {
                    reason: "chunked body framing overhead too large",
                });
            }
            self.fill().await?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the status line and the framing headers of a response head (CRLF line ends).
fn parse_head(head: &[u8]) -> Result<ResponseHead, ProbeError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or_default())?;

    let mut framing = Framing::UntilClose;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3), so a Content-Length
        // never overrides a chunked framing seen earlier.
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let len = value.parse().map_err(|_| ProbeError::Malformed {
                reason: "Content-Length is not a number",
            })?;
            framing = Framing::Length(len);
        }
    }
    Ok(ResponseHead { status, framing })
}

/// `HTTP/1.x SP 3DIGIT [SP reason]` → the status code.
fn parse_status_line(line: &str) -> Result<u16, ProbeError> {
    let rest = line.strip_prefix("HTTP/1.").ok_or(ProbeError::Malformed {
        reason: "status line does not start with HTTP/1.",
    })?;
    let mut parts = rest.splitn(3, ' ');
    let _minor_version = parts.next();
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProbeError::Malformed {
            reason: "status code is not three digits",
        });
    }
    code.parse().map_err(|_| ProbeError::Malformed {
        reason: "status code is not three digits",
    })
}

/// Decodes as much of a chunked body as `raw` holds. Returns the data so far and whether the
/// last (zero-size) chunk was reached; trailers are not needed and not read.
fn dechunk(raw: &[u8]) -> Result<(Vec<u8>, bool), ProbeError> {
    const BAD_SIZE: ProbeError = ProbeError::Malformed {
        reason: "bad chunk size line",
    };
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok((out, false));
        };
        let size_line = std::str::from_utf8(&rest[..eol]).map_err(|_| BAD_SIZE)?;
        // Chunk extensions (`;name=value`) follow the size and are ignored.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| BAD_SIZE)?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok((out, true));
        }
        if rest.len() < size {
            out.extend_from_slice(rest);
            return Ok((out, false));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        match rest {
            [b'\r', b'\n', tail @ ..] => rest = tail,
            [] | [b'\r'] => return Ok((out, false)),
            _ => {
                return Err(ProbeError::Malformed {
                    reason: "chunk data not followed by CRLF",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::health::test_util::{
        closed_tcp_port, http_server, recording_http_server, silent_tcp_server, tls_server,
        tls_server_with, TestCa, TlsClose, Validity, SLACK,
    };
    use crate::health::tls::TlsFiles;

    fn probe(expect_body: Option<&str>) -> HttpProbe {
        HttpProbe {
            path: "/healthz".into(),
            host: None,
            expect_status: 200,
            expect_body: expect_body.map(str::to_owned),
            timeout: Duration::from_secs(2),
            bind: None,
            tls: None,
            method: HttpMethod::Get,
            headers: Vec::new(),
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK").ok(), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503").ok(), Some(503));
        assert_eq!(
            parse_status_line("HTTP/1.1 404 Not Found Here").ok(),
            Some(404)
        );
        for bad in [
            "",
            "HTTP/2 200 OK",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2x0 OK",
            "SSH-2.0",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(ProbeError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn head_framing() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n").ok();
        assert_eq!(
            head,
            Some(ResponseHead {
                status: 200,
                framing: Framing::Length(12)
            })
        );
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n",
        )
        .ok();
        assert_eq!(head.map(|h| h.framing), Some(Framing::Chunked));
        let head = parse_head(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n").ok();
        assert_eq!(head.map(|h| h.framing), Some(Framing::UntilClose));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"),
            Err(ProbeError::Malformed { .. })
        ));
    }

    #[test]
    fn chunked_decoding() {
        let (body, done) = dechunk(b"2\r\nok\r\n5;ext=1\r\n, fin\r\n0\r\n\r\n").expect("valid");
        assert_eq!((body.as_slice(), done), (&b"ok, fin"[..], true));
        let (body, done) = dechunk(b"a\r\nhello").expect("partial");
        assert_eq!((body.as_slice(), done), (&b"hello"[..], false));
        let (body, done) = dechunk(b"2\r\nok").expect("no CRLF yet");
        assert_eq!((body.as_slice(), done), (&b"ok"[..], false));
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nokXX").is_err());
        assert!(dechunk(b"ffffffffffffffffffff\r\n").is_err());
    }

    #[test]
    fn request_shape() {
        let target: SocketAddr = "[::1]:8080".parse().expect("literal");
        assert_eq!(
            probe(None).request(target),
            "GET /healthz HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\nUser-Agent: xlb-health\r\nAccept: */*\r\n\r\n"
        );
        let named = HttpProbe {
            host: Some("api.example".into()),
            ..probe(None)
        };
        assert!(named.request(target).contains("\r\nHost: api.example\r\n"));
    }

    #[tokio::test]
    async fn head_and_extra_headers_reach_the_server() {
        let (target, head) = recording_http_server("127.0.0.1").await;
        let with_headers = HttpProbe {
            method: HttpMethod::Head,
            headers: vec![("X-Health-Token".into(), "s3cret value".into())],
            ..probe(None)
        };
        with_headers.check(target).await.expect("200");
        let head = head.await.expect("server saw a request");
        assert!(head.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nX-Health-Token: s3cret value\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        // A HEAD answer announces a body it does not send: the probe does not wait for it.
        let (target, server) = http_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
        )
        .await;
        let start = Instant::now();
        HttpProbe {
            method: HttpMethod::Head,
            ..probe(None)
        }
        .check(target)
        .await
        .expect("the head is the answer");
        assert!(start.elapsed() < Duration::from_secs(2));
        server.abort();
    }

    #[tokio::test]
    async fn sends_the_documented_request() {
        let (target, head) = recording_http_server("127.0.0.1").await;
        probe(None).check(target).await.expect("200");
        let head = head.await.expect("server saw a request");
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nHost: {target}\r\n")), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
        assert!(head.contains("\r\nUser-Agent: xlb-health\r\n"), "{head}");
    }

    #[tokio::test]
    async fn ok_with_body_v4_and_v6() {
        for ip in ["127.0.0.1", "::1"] {
            let (target, server) =
                http_server(ip, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            let latency = probe(Some("ok")).check(target).await.expect("healthy");
            assert!(latency < Duration::from_secs(2) + SLACK);
            server.abort();
        }
    }

    #[tokio::test]
    async fn body_until_close_and_chunked() {
        let (target, server) =
            http_server("127.0.0.1", b"HTTP/1.0 200 OK\r\n\r\nstatus: ok\n").await;
        probe(Some("ok")).check(target).await.expect("read to EOF");
        server.abort();
        let (target, server) = http_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n",
        )
        .await;
        probe(Some("ok")).check(target).await.expect("dechunked");
        server.abort();
    }

    #[tokio::test]
    async fn service_unavailable_is_bad_status() {
        let (target, server) = http_server(
            "127.0.0.1",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown",
        )
        .await;
        let err = probe(None).check(target).await.expect_err("503");
        assert!(
            matches!(
                err,
                ProbeError::BadStatus {
                    got: 503,
                    want: 200
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "HTTP status 503, want 200");
        server.abort();
    }

    #[tokio::test]
    async fn wrong_body_is_body_mismatch() {
        let (target, server) = http_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndegraded",
        )
        .await;
        let err = probe(Some("ok")).check(target).await.expect_err("no ok");
        assert!(matches!(err, ProbeError::BodyMismatch { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn non_http_answer_is_malformed() {
        let (target, server) = http_server("127.0.0.1", b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
        let err = probe(None).check(target).await.expect_err("not HTTP");
        assert!(matches!(err, ProbeError::Malformed { .. }), "{err:?}");
        server.abort();
        let (target, server) = http_server("127.0.0.1", b"").await;
        let err = probe(None).check(target).await.expect_err("empty");
        assert!(matches!(err, ProbeError::Malformed { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        let target = closed_tcp_port("::1").await;
        let err = probe(None).check(target).await.expect_err("closed");
        assert!(matches!(err, ProbeError::Refused), "{err:?}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (target, server) = silent_tcp_server("127.0.0.1").await;
        let timeout = Duration::from_millis(200);
        let probe = HttpProbe {
            timeout,
            ..probe(None)
        };
        let start = Instant::now();
        let err = probe.check(target).await.expect_err("never answers");
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < timeout + SLACK);
        server.abort();
    }

    fn https(expect_body: Option<&str>, sni: Option<&str>, host: Option<&str>) -> HttpProbe {
        HttpProbe {
            host: host.map(str::to_owned),
            tls: Some(TlsClient::new(sni, host, TlsFiles::default())),
            ..probe(expect_body)
        }
    }

    #[tokio::test]
    async fn https_over_v4_and_v6_with_any_certificate() {
        for ip in ["127.0.0.1", "::1"] {
            let (target, server, mut names) = tls_server(
                ip,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                TlsClose::Clean,
            )
            .await;
            let probe = https(Some("ok"), None, None);
            assert_eq!(probe.kind(), "https");
            probe.check(target).await.expect("healthy");
            // An address target sends no SNI.
            assert_eq!(names.recv().await, Some(None));
            server.abort();
        }
    }

    #[tokio::test]
    async fn https_sends_sni_from_sni_or_host() {
        let (target, server, mut names) = tls_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            TlsClose::Clean,
        )
        .await;
        https(None, None, Some("api.example:8443"))
            .check(target)
            .await
            .expect("healthy");
        assert_eq!(names.recv().await, Some(Some("api.example".into())));
        https(None, Some("sni.example"), Some("api.example"))
            .check(target)
            .await
            .expect("healthy");
        assert_eq!(names.recv().await, Some(Some("sni.example".into())));
        server.abort();
    }

    #[tokio::test]
    async fn https_status_and_body_are_checked_as_over_http() {
        let (target, server, _names) = tls_server(
            "127.0.0.1",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown",
            TlsClose::Clean,
        )
        .await;
        let err = https(None, None, None)
            .check(target)
            .await
            .expect_err("503");
        assert!(
            matches!(err, ProbeError::BadStatus { got: 503, .. }),
            "{err:?}"
        );
        server.abort();
        let (target, server, _names) = tls_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\ndegraded\r\n0\r\n\r\n",
            TlsClose::Clean,
        )
        .await;
        let err = https(Some("ok"), None, None)
            .check(target)
            .await
            .expect_err("no ok");
        assert!(matches!(err, ProbeError::BodyMismatch { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn https_body_until_a_close_without_close_notify() {
        let (target, server, _names) = tls_server(
            "127.0.0.1",
            b"HTTP/1.0 200 OK\r\n\r\nstatus: ok\n",
            TlsClose::Abrupt,
        )
        .await;
        https(Some("ok"), None, None)
            .check(target)
            .await
            .expect("the close ends the body");
        server.abort();
        // A cut response still fails on its framing.
        let (target, server, _names) = tls_server(
            "127.0.0.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nstat",
            TlsClose::Abrupt,
        )
        .await;
        let err = https(Some("ok"), None, None)
            .check(target)
            .await
            .expect_err("cut");
        assert!(matches!(err, ProbeError::BodyMismatch { .. }), "{err:?}");
        server.abort();
    }

    #[tokio::test]
    async fn plain_http_on_an_https_check_fails_the_handshake() {
        // A plain HTTP server answers the ClientHello's first bytes as a bad request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let target = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let err = https(None, None, None)
            .check(target)
            .await
            .expect_err("no TLS there");
        assert!(matches!(err, ProbeError::Tls(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("TLS handshake failed: "),
            "{err}"
        );
        server.abort();
        let target = closed_tcp_port("127.0.0.1").await;
        let err = https(None, None, None)
            .check(target)
            .await
            .expect_err("closed");
        assert!(matches!(err, ProbeError::Refused), "{err:?}");
    }

    /// An `https` probe verifying against `ca_file`.
    fn verifying(ca_file: &std::path::Path, sni: Option<&str>) -> HttpProbe {
        HttpProbe {
            tls: Some(TlsClient::new(
                sni,
                None,
                TlsFiles {
                    ca_file: Some(ca_file.to_owned()),
                    identity: None,
                },
            )),
            ..probe(Some("ok"))
        }
    }

    /// A directory of this test's own.
    fn temp_dir(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xlb-ca-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Replaces `path` by a file holding `content`, as operators (and their tools) replace
    /// certificates: a new file renamed over the old one.
    fn replace(path: &std::path::Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// The check's error against a server presenting `cert`, or `None` when it passes.
    async fn verify_against(
        ip: &str,
        cert: crate::health::test_util::CertAndKey,
        probe: &HttpProbe,
    ) -> Option<String> {
        let (target, server, _names) = tls_server_with(ip, OK, TlsClose::Clean, cert).await;
        let got = probe.check(target).await.err().map(|e| e.to_string());
        server.abort();
        got
    }

    #[tokio::test]
    async fn https_with_ca_file_verifies_issuer_expiry_and_name() {
        let dir = temp_dir("verify");
        let ca = TestCa::new("xlb test CA");
        let other = TestCa::new("another CA");
        let ca_file = dir.join("ca.pem");
        replace(&ca_file, &ca.pem());
        for ip in ["127.0.0.1", "::1"] {
            let good = || ca.issue(&[ip, "api.example"], Validity::Now);
            // Named by the address (no SNI), or by the SNI name.
            assert_eq!(
                verify_against(ip, good(), &verifying(&ca_file, None)).await,
                None
            );
            let by_name = verifying(&ca_file, Some("api.example"));
            assert_eq!(verify_against(ip, good(), &by_name).await, None);
            // Another name, another issuer, an expired certificate: each fails, saying why.
            let cases = [
                (good(), Some("web.example"), "not valid for name"),
                (other.issue(&[ip], Validity::Now), None, "UnknownIssuer"),
                (ca.issue(&[ip], Validity::Expired), None, "expired"),
            ];
            for (cert, sni, why) in cases {
                let err = verify_against(ip, cert, &verifying(&ca_file, sni))
                    .await
                    .unwrap_or_else(|| panic!("{ip} {sni:?}: passed, should fail: {why}"));
                assert!(err.starts_with("TLS handshake failed: "), "{err}");
                assert!(err.contains(why), "{ip} {sni:?}: {err}");
            }
            // Without ca_file the same certificates pass: verification is opt-in.
            let any = https(Some("ok"), None, None);
            assert_eq!(
                verify_against(ip, ca.issue(&[ip], Validity::Expired), &any).await,
                None
            );
            assert_eq!(
                verify_against(ip, other.issue(&[ip], Validity::Now), &any).await,
                None
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_changed_ca_file_applies_to_the_next_check_and_a_broken_one_keeps_the_last() {
        let dir = temp_dir("rotate");
        let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA, rotated in"));
        let ca_file = dir.join("ca.pem");
        replace(&ca_file, &old_ca.pem());
        let (target, server, _names) = tls_server_with(
            "127.0.0.1",
            OK,
            TlsClose::Clean,
            new_ca.issue(&["127.0.0.1"], Validity::Now),
        )
        .await;
        let probe = verifying(&ca_file, None);
        let err = probe.check(target).await.expect_err("old CA only");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        // The rotation: both CAs in the file; the same probe (no reload) passes.
        replace(&ca_file, &format!("{}{}", old_ca.pem(), new_ca.pem()));
        probe.check(target).await.expect("new CA trusted");
        // A broken file, then none: the last good version keeps verifying.
        replace(&ca_file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
        probe.check(target).await.expect("last good CA file kept");
        std::fs::remove_file(&ca_file).expect("remove");
        probe.check(target).await.expect("last good CA file kept");
        // A probe that never had a good file fails every check, naming the file's fault.
        let err = verifying(&ca_file, None)
            .check(target)
            .await
            .expect_err("no CA file");
        assert!(matches!(err, ProbeError::TlsFiles(_)), "{err:?}");
        assert!(err.to_string().contains("No such file"), "{err}");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A backend that requires a client certificate from its CA (mTLS): the check passes
    /// with `cert_file` and `key_file` only, and a certificate from another CA fails.
    #[tokio::test]
    async fn https_presents_a_client_certificate_to_a_backend_that_requires_one() {
        let dir = temp_dir("mtls");
        let (clients_ca, server_ca) = (TestCa::new("clients CA"), TestCa::new("server CA"));
        let (target, server) =
            mtls_server(&clients_ca, server_ca.issue(&["127.0.0.1"], Validity::Now)).await;
        let write_identity = |label: &str, ca: &TestCa| {
            let (cert, key) = ca.issue_pem(&["xlb-health"], Validity::Now);
            let paths = (
                dir.join(format!("{label}-cert.pem")),
                dir.join(format!("{label}-key.pem")),
            );
            replace(&paths.0, &cert);
            replace(&paths.1, &key);
            paths
        };
        let ca_file = dir.join("server-ca.pem");
        replace(&ca_file, &server_ca.pem());
        let presenting = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| HttpProbe {
            tls: Some(TlsClient::new(
                None,
                None,
                TlsFiles {
                    ca_file: Some(ca_file.clone()),
                    identity,
                },
            )),
            ..probe(Some("ok"))
        };
        let good = write_identity("good", &clients_ca);
        presenting(Some(good.clone()))
            .check(target)
            .await
            .expect("client certificate accepted");
        // A key that is not the certificate's is refused where the check comes in.
        let other = write_identity("other", &clients_ca);
        let err = crate::health::tls::check_files(&TlsFiles {
            ca_file: None,
            identity: Some((good.0.clone(), other.1.clone())),
        })
        .expect_err("mismatched key");
        assert!(err.starts_with("cert_file and key_file: "), "{err}");
        for identity in [None, Some(write_identity("stranger", &server_ca))] {
            let err = presenting(identity.clone())
                .check(target)
                .await
                .expect_err("the backend requires a certificate of its CA");
            // TLS 1.3 reports the server's refusal after the client's side of the handshake,
            // on the first read.
            assert!(
                matches!(err, ProbeError::Tls(_) | ProbeError::Io(_)),
                "{identity:?}: {err:?}"
            );
        }
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An HTTPS server on 127.0.0.1 presenting `cert` that requires a client certificate
    /// issued by `clients`, answering [`OK`].
    async fn mtls_server(
        clients: &TestCa,
        cert: crate::health::test_util::CertAndKey,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use std::sync::Arc;
        use tokio_rustls::{
            rustls::{self, server::WebPkiClientVerifier, RootCertStore},
            TlsAcceptor,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(clients.der()).expect("client CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.0, cert.1)
            .expect("certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(OK).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (addr, task)
    }
}
