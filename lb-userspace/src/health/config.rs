//! The per-VIP health-check configuration as it appears in the JSON config, and its validation.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

/// Which probe checks a VIP's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP handshake to the port; the default because it needs nothing from the backend
    /// beyond the service the VIP already forwards to.
    #[default]
    Tcp,
    /// An HTTP/1.1 `GET` whose status (and optionally body) is checked.
    Http,
    /// The same `GET` over TLS (the certificate is verified only against a `ca_file`: see
    /// `health::tls`).
    Https,
    /// A UDP datagram that must draw any reply (optionally containing `expect`).
    Udp,
    /// An ICMP / ICMPv6 echo request; the port is ignored.
    Icmp,
    /// No probing: the backend is always healthy.
    None,
    /// A TCP SYN to the VIP's address and port, through the backend's IP-in-IP tunnel as
    /// clients' packets go: also checks the backend's decap and the VIP on its `lo`.
    #[serde(rename = "tcp_tunnel")]
    TcpTunnel,
}

impl CheckKind {
    /// The lowercase name used in the JSON config and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Udp => "udp",
            CheckKind::Icmp => "icmp",
            CheckKind::None => "none",
            CheckKind::TcpTunnel => "tcp_tunnel",
        }
    }
}

/// The request method of `http` and `https` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HttpMethod {
    /// The default.
    #[default]
    #[serde(rename = "GET")]
    Get,
    /// The head alone: for endpoints whose body is large, or that count GETs.
    #[serde(rename = "HEAD")]
    Head,
}

impl HttpMethod {
    /// As on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
        }
    }
}

/// Headers the probe writes itself (`host` has its own field).
const OWN_HEADERS: [&str; 5] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "user-agent",
];
/// At most this many extra headers, each at most [`MAX_HEADER_LEN`] bytes (name and value).
const MAX_HEADERS: usize = 32;
const MAX_HEADER_LEN: usize = 1024;

/// Health-check settings for one VIP; every field has a default so `{}` is a valid config.
///
/// ```json
/// {"kind": "http", "port": 8080, "path": "/healthz", "expect_status": 200,
///  "expect_body": "ok", "interval_ms": 1000, "timeout_ms": 500, "rise": 2, "fall": 3,
///  "down_interval_ms": 5000}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Which probe to run.
    pub kind: CheckKind,
    /// Port to probe on each backend; `None` means the VIP's own port, which the caller
    /// supplies (see [`HealthCheckConfig::probe_port`]). Ignored by `icmp` and `none`.
    #[serde(
        deserialize_with = "deserialize_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    /// `http`, `https`: `GET` (default) or `HEAD`.
    #[serde(skip_serializing_if = "is_get")]
    pub method: HttpMethod,
    /// `http`, `https`: request path, starting with `/`.
    pub path: String,
    /// `http`, `https`: extra request headers (an endpoint that wants a token, say).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `http`, `https`: `Host` header; `None` means the backend's `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `https`: the TLS server name (SNI); `None` means `host`'s name if it is a DNS name,
    /// else none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `https`: a PEM file of CA certificates; when set, a backend's certificate must chain
    /// to one of them, be valid now and name the server (`sni`, else the backend's
    /// address). `None`: any certificate (see `health::tls` for why that is the default).
    /// Read again whenever it changes, so a CA rotation needs no reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `https`: a PEM certificate chain the check presents to backends that require a
    /// client certificate (mTLS); with `key_file`, its key. Re-read when they change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `http`, `https`: the status code a healthy backend answers with.
    pub expect_status: u16,
    /// `http`, `https`: a substring the first 64 KiB of the body must contain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// `udp`: the datagram payload sent to the backend (`None`: [`DEFAULT_UDP_SEND`]).
    /// `tcp`: bytes written once connected (`None`: nothing, the handshake is the check).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// `udp`: a substring the reply must contain; `None` accepts any reply. `tcp`: a
    /// substring of what the backend sends (its first 64 KiB, after `send` if set), as
    /// HAProxy's `tcp-check expect`; `None`: nothing read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Milliseconds between checks while the backend is healthy.
    pub interval_ms: u64,
    /// Milliseconds a single check may take; must be below both intervals so checks of one
    /// backend never overlap.
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend back up.
    pub rise: u32,
    /// Consecutive failures that take a healthy backend down.
    pub fall: u32,
    /// Milliseconds between checks while the backend is down: slower, so a dead backend costs
    /// the LB (and the network) less.
    pub down_interval_ms: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            port: None,
            method: HttpMethod::Get,
            path: "/".to_owned(),
            headers: BTreeMap::new(),
            host: None,
            sni: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            expect_status: 200,
            expect_body: None,
            send: None,
            expect: None,
            interval_ms: 1_000,
            timeout_ms: 500,
            rise: 2,
            fall: 3,
            down_interval_ms: 5_000,
        }
    }
}

/// Bounds shared by validation and its error messages.
pub const INTERVAL_MS_RANGE: (u64, u64) = (10, 3_600_000);
/// `rise` and `fall`: more than 100 would make a transition take implausibly long.
pub const THRESHOLD_RANGE: (u32, u32) = (1, 100);
/// Largest UDP payload that fits one IPv4 datagram (65535 - 20 IP - 8 UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// What a `udp` check sends when `send` is not set.
pub const DEFAULT_UDP_SEND: &str = "xlb-health";
/// The most a `tcp` check with `expect` reads before giving up on finding it.
pub const MAX_TCP_REPLY: usize = 64 * 1024;
/// The HTTP probe reads at most this much body, so a longer `expect_body` could never match.
pub const MAX_HTTP_BODY: usize = 64 * 1024;
/// A DNS name is at most 253 characters; with `:port` a Host header stays well below this.
const MAX_HOST_LEN: usize = 261;

/// Why a [`HealthCheckConfig`] was rejected; every message names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthConfigError {
    #[error("{field} must be {min}..={max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("timeout_ms must be less than {field} ({interval_ms}), got {timeout_ms}")]
    TimeoutNotBelowInterval {
        field: &'static str,
        interval_ms: u64,
        timeout_ms: u64,
    },
    #[error("path must start with '/', got {path:?}")]
    PathNotAbsolute { path: String },
    #[error("{field} must not contain spaces or control characters, got {value:?}")]
    BadCharacters { field: &'static str, value: String },
    #[error("{field} must not be empty; leave it out to use the default")]
    Empty { field: &'static str },
    #[error("port must be set for a {kind} check: the VIP listens on all ports, so there is no VIP port to default to")]
    PortRequired { kind: &'static str },
    #[error("sni applies to https checks only, this one is {kind}")]
    SniWithoutTls { kind: &'static str },
    #[error("{field} applies to https checks only, this one is {kind}")]
    FileWithoutTls {
        field: &'static str,
        kind: &'static str,
    },
    #[error("{field} {path:?}: {reason}")]
    BadFile {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cert_file and key_file go together: {missing} is not set")]
    HalfIdentity { missing: &'static str },
    #[error("{0}")]
    UnusableFiles(String),
    #[error("sni {name:?}: {reason}")]
    BadSni { name: String, reason: &'static str },
    #[error("header {name:?}: {reason}")]
    BadHeader { name: String, reason: &'static str },
    #[error("expect_body needs a body, and a HEAD request's answer has none: use GET")]
    HeadWithBody,
    #[error("{field} must be at most {max} bytes, got {got}")]
    TooLong {
        field: &'static str,
        max: usize,
        got: usize,
    },
}

impl HealthCheckConfig {
    /// Checks every field against its documented range; the default config is valid.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        if self.port == Some(0) {
            return Err(HealthConfigError::OutOfRange {
                field: "port",
                min: 1,
                max: 65_535,
                got: 0,
            });
        }
        self.validate_http()?;
        self.validate_udp()?;
        self.validate_timing()
    }

    fn validate_http(&self) -> Result<(), HealthConfigError> {
        if !self.path.starts_with('/') {
            return Err(HealthConfigError::PathNotAbsolute {
                path: self.path.clone(),
            });
        }
        // The path and host are pasted into the request head: a space or CR/LF would split
        // the request line or inject headers.
        check_token("path", &self.path)?;
        if let Some(host) = &self.host {
            non_empty("host", host)?;
            check_token("host", host)?;
            max_len("host", host, MAX_HOST_LEN)?;
        }
        if let Some(name) = &self.sni {
            if self.kind != CheckKind::Https {
                return Err(HealthConfigError::SniWithoutTls {
                    kind: self.kind.as_str(),
                });
            }
            super::tls::check_sni(name).map_err(|reason| HealthConfigError::BadSni {
                name: name.clone(),
                reason,
            })?;
        }
        self.validate_tls_files()?;
        self.validate_headers()?;
        if self.method == HttpMethod::Head && self.expect_body.is_some() {
            return Err(HealthConfigError::HeadWithBody);
        }
        in_range("expect_status", self.expect_status.into(), 100, 599)?;
        if let Some(body) = &self.expect_body {
            non_empty("expect_body", body)?;
            max_len("expect_body", body, MAX_HTTP_BODY)?;
        }
        Ok(())
    }

    /// `ca_file`, `cert_file`, `key_file`: `https` only, absolute paths (the daemon's working
    /// directory is not the config file's: a relative path would name a different file
    /// under systemd than in a shell), the certificate with its key.
    fn validate_tls_files(&self) -> Result<(), HealthConfigError> {
        for (field, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            let Some(path) = path else { continue };
            if self.kind != CheckKind::Https {
                return Err(HealthConfigError::FileWithoutTls {
                    field,
                    kind: self.kind.as_str(),
                });
            }
            if !path.is_absolute() {
                return Err(HealthConfigError::BadFile {
                    field,
                    path: path.clone(),
                    reason: "must be an absolute path".to_owned(),
                });
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(HealthConfigError::HalfIdentity {
                missing: "key_file",
            }),
            (None, Some(_)) => Err(HealthConfigError::HalfIdentity {
                missing: "cert_file",
            }),
            _ => Ok(()),
        }
    }

    /// The files an `https` check's TLS reads.
    pub fn tls_files(&self) -> super::tls::TlsFiles {
        super::tls::TlsFiles {
            ca_file: self.ca_file.clone(),
            identity: self.cert_file.clone().zip(self.key_file.clone()),
        }
    }

    /// Extra headers are pasted into the request head: a name must be an HTTP token, a
    /// value hold no CR, LF or other control character, and the probe's own headers stay its.
    fn validate_headers(&self) -> Result<(), HealthConfigError> {
        if self.headers.len() > MAX_HEADERS {
            return Err(HealthConfigError::TooLong {
                field: "headers",
                max: MAX_HEADERS,
                got: self.headers.len(),
            });
        }
        for (name, value) in &self.headers {
            let bad = |reason| HealthConfigError::BadHeader {
                name: name.clone(),
                reason,
            };
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(tchar) {
                return Err(bad("a name is letters, digits and !#$%&'*+-.^_`|~"));
            }
            if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(bad("the probe sets it (Host: the host field)"));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(bad("a value holds no control characters (CR, LF, …)"));
            }
            if name.len() + value.len() > MAX_HEADER_LEN {
                return Err(bad("longer than 1024 bytes"));
            }
        }
        Ok(())
    }

    /// `send` and `expect`, for `udp` and `tcp` alike.
    fn validate_udp(&self) -> Result<(), HealthConfigError> {
        if let Some(send) = &self.send {
            non_empty("send", send)?;
            max_len("send", send, MAX_UDP_PAYLOAD)?;
        }
        if let Some(expect) = &self.expect {
            non_empty("expect", expect)?;
            // The reply buffer is one maximal datagram (a TCP check reads more, 64 KiB); a
            // longer needle could never match.
            max_len("expect", expect, MAX_UDP_PAYLOAD.min(MAX_TCP_REPLY))?;
        }
        Ok(())
    }

    fn validate_timing(&self) -> Result<(), HealthConfigError> {
        let (lo, hi) = INTERVAL_MS_RANGE;
        in_range("interval_ms", self.interval_ms, lo, hi)?;
        in_range("down_interval_ms", self.down_interval_ms, lo, hi)?;
        in_range("timeout_ms", self.timeout_ms, 1, hi)?;
        for (field, interval_ms) in [
            ("interval_ms", self.interval_ms),
            ("down_interval_ms", self.down_interval_ms),
        ] {
            if self.timeout_ms >= interval_ms {
                return Err(HealthConfigError::TimeoutNotBelowInterval {
                    field,
                    interval_ms,
                    timeout_ms: self.timeout_ms,
                });
            }
        }
        let (lo, hi) = THRESHOLD_RANGE;
        in_range("rise", self.rise.into(), lo.into(), hi.into())?;
        in_range("fall", self.fall.into(), lo.into(), hi.into())
    }

    /// Reads the files the config names (`ca_file`, `cert_file`, `key_file`): what the
    /// daemon checks when a config or control request brings a check in, so a file it
    /// cannot use is refused with its reason there rather than failing every backend's
    /// checks. Not part of [`Self::validate`]: `xlb` commands validate checks they send on
    /// a host (or as a user) that may not see the daemon's files.
    pub fn check_files(&self) -> Result<(), HealthConfigError> {
        super::tls::check_files(&self.tls_files()).map_err(HealthConfigError::UnusableFiles)
    }

    /// The port to probe: the configured one, else the VIP's port the caller passes in.
    pub fn probe_port(&self, vip_port: u16) -> u16 {
        self.port.unwrap_or(vip_port)
    }

    /// The address to probe for a backend: its IP with [`Self::probe_port`] applied to
    /// `backend`'s port (the VIP's port, supplied by the caller). A VIP on port 0 (all ports) has no port to default to, which only
    /// the portless kinds (`icmp`, `none`) can live with.
    pub fn probe_target(&self, backend: SocketAddr) -> Result<SocketAddr, HealthConfigError> {
        let port = self.probe_port(backend.port());
        let portless = matches!(self.kind, CheckKind::Icmp | CheckKind::None);
        if port == 0 && !portless {
            return Err(HealthConfigError::PortRequired {
                kind: self.kind.as_str(),
            });
        }
        Ok(SocketAddr::new(backend.ip(), port))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn down_interval(&self) -> Duration {
        Duration::from_millis(self.down_interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

fn in_range(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), HealthConfigError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(HealthConfigError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), HealthConfigError> {
    if value.is_empty() {
        Err(HealthConfigError::Empty { field })
    } else {
        Ok(())
    }
}

fn max_len(field: &'static str, value: &str, max: usize) -> Result<(), HealthConfigError> {
    if value.len() > max {
        Err(HealthConfigError::TooLong {
            field,
            max,
            got: value.len(),
        })
    } else {
        Ok(())
    }
}

fn is_get(m: &HttpMethod) -> bool {
    *m == HttpMethod::Get
}

fn check_token(field: &'static str, value: &str) -> Result<(), HealthConfigError> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(HealthConfigError::BadCharacters {
            field,
            value: value.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// Reads `port` as a wide integer so `70000` is reported as "port must be 1..=65535" naming
/// the field, rather than serde's generic "expected u16".
fn deserialize_port<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u16>, D::Error> {
    let Some(raw) = Option::<u64>::deserialize(de)? else {
        return Ok(None);
    };
    match u16::try_from(raw) {
        Ok(port) if port != 0 => Ok(Some(port)),
        _ => Err(serde::de::Error::custom(HealthConfigError::OutOfRange {
            field: "port",
            min: 1,
            max: 65_535,
            got: raw,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<HealthCheckConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[track_caller]
    fn rejects(cfg: HealthCheckConfig, want: &str) {
        match cfg.validate() {
            Ok(()) => panic!("config accepted, wanted error {want:?}: {cfg:?}"),
            Err(e) => assert_eq!(e.to_string(), want),
        }
    }

    #[test]
    fn empty_object_is_the_valid_default() {
        let cfg = parse("{}").expect("{} parses");
        assert_eq!(cfg, HealthCheckConfig::default());
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.kind, CheckKind::Tcp);
        assert_eq!(cfg.path, "/");
        assert_eq!(cfg.expect_status, 200);
        assert_eq!(cfg.send, None);
    }

    #[test]
    fn full_object_parses() {
        let cfg = parse(
            r#"{"kind": "http", "port": 8080, "path": "/healthz", "host": "api.example",
                "expect_status": 204, "expect_body": "ok", "send": "ping", "expect": "pong",
                "interval_ms": 2000, "timeout_ms": 300, "rise": 1, "fall": 5,
                "down_interval_ms": 10000}"#,
        )
        .expect("parses");
        assert_eq!(cfg.kind, CheckKind::Http);
        assert_eq!(cfg.port, Some(8080));
        assert_eq!(cfg.host.as_deref(), Some("api.example"));
        assert_eq!(cfg.expect_body.as_deref(), Some("ok"));
        assert_eq!(cfg.expect.as_deref(), Some("pong"));
        assert_eq!((cfg.rise, cfg.fall), (1, 5));
        assert_eq!(cfg.down_interval(), Duration::from_secs(10));
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn every_kind_parses_by_name() {
        for kind in ["tcp", "http", "https", "udp", "icmp", "none", "tcp_tunnel"] {
            let cfg = parse(&format!(r#"{{"kind": "{kind}"}}"#)).expect("kind parses");
            assert_eq!(cfg.kind.as_str(), kind);
        }
        assert!(parse(r#"{"kind": "grpc"}"#).is_err());
    }

    #[test]
    fn tcp_send_and_expect_parse_and_stay_out_of_dumps_when_unset() {
        let cfg =
            parse(r#"{"kind": "tcp", "send": "PING\r\n", "expect": "+PONG"}"#).expect("parses");
        assert_eq!(cfg.send.as_deref(), Some("PING\r\n"));
        assert_eq!(cfg.expect.as_deref(), Some("+PONG"));
        assert_eq!(cfg.validate(), Ok(()));
        let plain = serde_json::to_string(&HealthCheckConfig::default()).expect("serializes");
        assert!(
            !plain.contains(r#""send""#) && !plain.contains(r#""expect""#),
            "{plain}"
        );
    }

    #[test]
    fn method_and_headers_are_checked_before_they_reach_a_request() {
        let cfg = parse(r#"{"kind": "http", "method": "HEAD", "headers": {"X-Token": "abc def"}}"#)
            .expect("parses");
        assert_eq!(cfg.method, HttpMethod::Head);
        assert_eq!(cfg.validate(), Ok(()));
        assert!(parse(r#"{"method": "POST"}"#).is_err());
        let err = |json: &str| {
            parse(json)
                .expect("parses")
                .validate()
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            err(r#"{"method": "HEAD", "expect_body": "ok"}"#),
            "expect_body needs a body, and a HEAD request's answer has none: use GET"
        );
        for (json, name) in [
            (r#"{"headers": {"X Token": "a"}}"#, "X Token"),
            (r#"{"headers": {"": "a"}}"#, ""),
            (r#"{"headers": {"X-Token": "a\r\nX-Evil: 1"}}"#, "X-Token"),
            (r#"{"headers": {"Host": "example"}}"#, "Host"),
            (r#"{"headers": {"connection": "keep-alive"}}"#, "connection"),
        ] {
            let e = err(json);
            assert!(e.starts_with(&format!("header {name:?}: ")), "{json}: {e}");
        }
        // Both stay out of dumps when not set.
        let plain = serde_json::to_string(&HealthCheckConfig::default()).expect("serializes");
        assert!(
            !plain.contains(r#""method""#) && !plain.contains(r#""headers""#),
            "{plain}"
        );
    }

    #[test]
    fn sni_is_a_dns_name_for_https_only() {
        let cfg = parse(r#"{"kind": "https", "sni": "api.example", "path": "/healthz"}"#)
            .expect("parses");
        assert_eq!(cfg.kind, CheckKind::Https);
        assert_eq!(cfg.validate(), Ok(()));
        let err = parse(r#"{"kind": "http", "sni": "api.example"}"#)
            .expect("parses")
            .validate()
            .expect_err("sni on plain http");
        assert_eq!(
            err.to_string(),
            "sni applies to https checks only, this one is http"
        );
        for (name, reason) in [
            (
                "198.18.0.11",
                "an IP address is never sent as SNI; leave sni out",
            ),
            ("bad name", "not a valid DNS name"),
        ] {
            let err = parse(&format!(r#"{{"kind": "https", "sni": "{name}"}}"#))
                .expect("parses")
                .validate()
                .expect_err("not a DNS name");
            assert_eq!(err.to_string(), format!("sni {name:?}: {reason}"));
        }
    }

    #[test]
    fn ca_file_is_an_absolute_path_for_https_only_and_a_file_of_certificates() {
        let dir = std::env::temp_dir().join(format!("xlb-ca-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = crate::health::test_util::TestCa::new("config CA");
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).expect("write");
        let with = |kind: &str, path: &std::path::Path| {
            parse(&format!(
                r#"{{"kind": "{kind}", "ca_file": {}}}"#,
                serde_json::to_string(path).expect("path")
            ))
            .expect("parses")
        };
        let cfg = with("https", &good);
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.check_files(), Ok(()));
        // Written back as given (dump-config).
        let json = serde_json::to_value(&cfg).expect("serializes");
        assert_eq!(json["ca_file"], good.to_str().expect("utf-8 path"));
        assert_eq!(
            with("http", &good).validate().map_err(|e| e.to_string()),
            Err("ca_file applies to https checks only, this one is http".to_owned())
        );
        assert_eq!(
            with("https", std::path::Path::new("ca.pem"))
                .validate()
                .map_err(|e| e.to_string()),
            Err(r#"ca_file "ca.pem": must be an absolute path"#.to_owned())
        );
        // The files themselves: missing, empty of certificates, not a certificate.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "# nothing here\n").expect("write");
        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        for (path, why) in [
            (dir.join("missing.pem"), "No such file"),
            (empty, "holds no PEM certificate"),
            (key, "certificate 1 of the file: "),
        ] {
            let cfg = with("https", &path);
            assert_eq!(cfg.validate(), Ok(()), "{path:?}: not read by validate");
            let err = cfg.check_files().expect_err("unusable file").to_string();
            assert!(
                err.starts_with(&format!("ca_file {}: ", path.display())) && err.contains(why),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cert_file_and_key_file_go_together_for_https_only() {
        let cfg = |json: &str| {
            parse(json)
                .expect("parses")
                .validate()
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            cfg(
                r#"{"kind": "https", "cert_file": "/etc/xlb/c.pem", "key_file": "/etc/xlb/k.pem"}"#
            ),
            Ok(())
        );
        for (json, want) in [
            (
                r#"{"kind": "https", "cert_file": "/etc/xlb/c.pem"}"#,
                "cert_file and key_file go together: key_file is not set",
            ),
            (
                r#"{"kind": "https", "key_file": "/etc/xlb/k.pem"}"#,
                "cert_file and key_file go together: cert_file is not set",
            ),
            (
                r#"{"kind": "tcp", "cert_file": "/etc/xlb/c.pem", "key_file": "/etc/xlb/k.pem"}"#,
                "cert_file applies to https checks only, this one is tcp",
            ),
            (
                r#"{"kind": "https", "cert_file": "/etc/xlb/c.pem", "key_file": "k.pem"}"#,
                r#"key_file "k.pem": must be an absolute path"#,
            ),
        ] {
            assert_eq!(cfg(json), Err(want.to_owned()), "{json}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = parse(r#"{"intervall_ms": 100}"#).expect_err("typo must not pass");
        assert!(err.to_string().contains("intervall_ms"), "{err}");
    }

    #[test]
    fn port_defaults_to_the_vip_port() {
        let cfg = HealthCheckConfig::default();
        assert_eq!(cfg.probe_port(443), 443);
        let cfg = HealthCheckConfig {
            port: Some(8443),
            ..Default::default()
        };
        assert_eq!(cfg.probe_port(443), 8443);
    }

    #[test]
    fn all_ports_vip_needs_an_explicit_port() {
        let backend: SocketAddr = "198.18.0.1:0".parse().expect("literal");
        let err = HealthCheckConfig::default()
            .probe_target(backend)
            .expect_err("tcp on port 0");
        assert_eq!(err, HealthConfigError::PortRequired { kind: "tcp" });
        let with_port = HealthCheckConfig {
            port: Some(22),
            ..Default::default()
        };
        assert_eq!(
            with_port.probe_target(backend),
            Ok("198.18.0.1:22".parse().expect("literal"))
        );
        let icmp = HealthCheckConfig {
            kind: CheckKind::Icmp,
            ..Default::default()
        };
        assert_eq!(icmp.probe_target(backend), Ok(backend));
    }

    #[test]
    fn port_out_of_range_names_the_field() {
        for json in [r#"{"port": 0}"#, r#"{"port": 70000}"#] {
            let err = parse(json).expect_err("bad port");
            assert!(err.to_string().contains("port must be 1..=65535"), "{err}");
        }
        rejects(
            HealthCheckConfig {
                port: Some(0),
                ..Default::default()
            },
            "port must be 1..=65535, got 0",
        );
    }

    #[test]
    fn path_must_be_absolute_and_clean() {
        rejects(
            HealthCheckConfig {
                path: "healthz".into(),
                ..Default::default()
            },
            "path must start with '/', got \"healthz\"",
        );
        rejects(
            HealthCheckConfig {
                path: "/a b".into(),
                ..Default::default()
            },
            "path must not contain spaces or control characters, got \"/a b\"",
        );
        rejects(
            HealthCheckConfig {
                path: "/x\r\nEvil: 1".into(),
                ..Default::default()
            },
            "path must not contain spaces or control characters, got \"/x\\r\\nEvil: 1\"",
        );
    }

    #[test]
    fn host_is_checked() {
        rejects(
            HealthCheckConfig {
                host: Some(String::new()),
                ..Default::default()
            },
            "host must not be empty; leave it out to use the default",
        );
        rejects(
            HealthCheckConfig {
                host: Some("a\nb".into()),
                ..Default::default()
            },
            "host must not contain spaces or control characters, got \"a\\nb\"",
        );
        rejects(
            HealthCheckConfig {
                host: Some("h".repeat(300)),
                ..Default::default()
            },
            "host must be at most 261 bytes, got 300",
        );
    }

    #[test]
    fn expect_status_is_a_real_status() {
        for bad in [0, 99, 600] {
            rejects(
                HealthCheckConfig {
                    expect_status: bad,
                    ..Default::default()
                },
                &format!("expect_status must be 100..=599, got {bad}"),
            );
        }
    }

    #[test]
    fn expected_substrings_are_non_empty_and_bounded() {
        rejects(
            HealthCheckConfig {
                expect_body: Some(String::new()),
                ..Default::default()
            },
            "expect_body must not be empty; leave it out to use the default",
        );
        rejects(
            HealthCheckConfig {
                expect_body: Some("x".repeat(MAX_HTTP_BODY + 1)),
                ..Default::default()
            },
            "expect_body must be at most 65536 bytes, got 65537",
        );
        rejects(
            HealthCheckConfig {
                expect: Some(String::new()),
                ..Default::default()
            },
            "expect must not be empty; leave it out to use the default",
        );
        rejects(
            HealthCheckConfig {
                expect: Some("x".repeat(MAX_UDP_PAYLOAD + 1)),
                ..Default::default()
            },
            "expect must be at most 65507 bytes, got 65508",
        );
    }

    #[test]
    fn udp_payload_is_non_empty_and_fits_a_datagram() {
        rejects(
            HealthCheckConfig {
                send: Some(String::new()),
                ..Default::default()
            },
            "send must not be empty; leave it out to use the default",
        );
        rejects(
            HealthCheckConfig {
                send: Some("x".repeat(70_000)),
                ..Default::default()
            },
            "send must be at most 65507 bytes, got 70000",
        );
    }

    #[test]
    fn intervals_are_bounded() {
        for bad in [0, 9, 3_600_001] {
            rejects(
                HealthCheckConfig {
                    interval_ms: bad,
                    timeout_ms: 1,
                    ..Default::default()
                },
                &format!("interval_ms must be 10..=3600000, got {bad}"),
            );
            rejects(
                HealthCheckConfig {
                    down_interval_ms: bad,
                    timeout_ms: 1,
                    ..Default::default()
                },
                &format!("down_interval_ms must be 10..=3600000, got {bad}"),
            );
        }
    }

    #[test]
    fn timeout_must_fit_inside_both_intervals() {
        rejects(
            HealthCheckConfig {
                timeout_ms: 0,
                ..Default::default()
            },
            "timeout_ms must be 1..=3600000, got 0",
        );
        rejects(
            HealthCheckConfig {
                interval_ms: 500,
                timeout_ms: 500,
                ..Default::default()
            },
            "timeout_ms must be less than interval_ms (500), got 500",
        );
        rejects(
            HealthCheckConfig {
                interval_ms: 1_000,
                down_interval_ms: 100,
                timeout_ms: 200,
                ..Default::default()
            },
            "timeout_ms must be less than down_interval_ms (100), got 200",
        );
    }

    #[test]
    fn rise_and_fall_are_bounded() {
        for bad in [0, 101] {
            rejects(
                HealthCheckConfig {
                    rise: bad,
                    ..Default::default()
                },
                &format!("rise must be 1..=100, got {bad}"),
            );
            rejects(
                HealthCheckConfig {
                    fall: bad,
                    ..Default::default()
                },
                &format!("fall must be 1..=100, got {bad}"),
            );
        }
    }

    #[test]
    fn round_trips_through_json() {
        let cfg = HealthCheckConfig {
            kind: CheckKind::Udp,
            port: Some(53),
            expect: Some("pong".into()),
            ..Default::default()
        };
        let json = serde_json::to_string(&cfg).expect("serializes");
        assert_eq!(parse(&json).expect("parses back"), cfg);
    }
}
