//! End-to-end: `https` health checks against backends that serve only TLS (Python's
//! `ssl` over `http.server`, a self-signed certificate). The checks pass with the name the
//! config gives sent as SNI and the header the health endpoint wants, clients reach the service through the VIP over TLS (DSR), a
//! backend that answers plain HTTP on the port (a `tcp` check would still pass) goes down
//! with the failed handshake as its reason, and comes back when TLS does. Both families.
//! With `ca_file`, a backend whose certificate has expired goes down saying so, while the
//! same backend passes a check without it, and comes back with a renewed certificate; a
//! backend that requires a client certificate (mTLS) passes the checks that present one
//! (`cert_file`, `key_file`) and fails those that do not.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, curl_with, spawn_logged, DemoNet, Proc, PYTHON, VIP4, VIP6},
};

const PORT: u16 = 443;
const TIMEOUT: Duration = Duration::from_secs(3);
/// The `Host` the checks send, and so (no `sni` set) their SNI.
const HOST: &str = "www.example";

/// A threaded HTTPS server (dual stack, port 443): `/healthz` says ok to a request with the
/// `X-Health-Token: xlb` header (403 without), everything else the backend's name; prints
/// the SNI of every handshake. The handshake runs in the request's
/// thread, so a stuck client cannot hold the others up. With a fifth argument (a CA file)
/// it requires a client certificate that CA issued (mTLS).
const TLS_SERVER: &str = r#"
import http.server, socketserver, socket, ssl, sys
name, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and self.headers.get("X-Health-Token") != "xlb":
            self.send_error(403)
            return
        body = b"ok\n" if self.path == "/healthz" else (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if len(sys.argv) > 5:
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(sys.argv[5])
def sni(sock, server_name, c):
    print("sni", server_name, flush=True)
ctx.sni_callback = sni
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
    def get_request(self):
        conn, addr = self.socket.accept()
        return ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr
S(("::", int(sys.argv[4])), H).serve_forever()
"#;

/// A self-signed certificate for [`HOST`] in `dir` (cert, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={HOST}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Runs backend `i`'s server (`args` after Python) on [`PORT`] and waits until it accepts.
fn serve(net: &DemoNet, i: usize, label: &str, args: &[&str]) -> Proc {
    let b = &net.backends[i];
    let log = net.dir.join(format!("{}-{label}.log", b.name));
    let mut argv = vec![PYTHON];
    argv.extend_from_slice(args);
    let p = spawn_logged(&b.ns, &argv, &log);
    let addr = SocketAddr::new(b.v4.into(), PORT);
    wait_for(
        &format!("{label} server on {}", b.name),
        Duration::from_secs(20),
        || connect_in(&net.lb, addr, Duration::from_millis(300)).is_ok(),
    );
    p
}

fn serve_tls(net: &DemoNet, i: usize, cert: &Path, key: &Path) -> Proc {
    serve_tls_for(net, i, cert, key, None)
}

/// [`serve_tls`], requiring a client certificate from `clients_ca` when set.
fn serve_tls_for(
    net: &DemoNet,
    i: usize,
    cert: &Path,
    key: &Path,
    clients_ca: Option<&Path>,
) -> Proc {
    let name = net.backends[i].name.clone();
    let port = PORT.to_string();
    let utf8 = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["-c".to_owned(), TLS_SERVER.to_owned(), name];
    args.extend([utf8(cert), utf8(key), port]);
    args.extend(clients_ca.map(utf8));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(net, i, "tls", &args)
}

/// Plain HTTP on the TLS port: what a `tcp` check cannot tell from the real service.
fn serve_plain(net: &DemoNet, i: usize) -> Proc {
    let root = net.dir.to_str().expect("utf-8 path").to_owned();
    let port = PORT.to_string();
    serve(
        net,
        i,
        "plain",
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            "::",
            "--directory",
            &root,
        ],
    )
}

/// The `last_error` of backend `addr` in every VIP that has it.
fn last_errors(net: &DemoNet, sock: &Path, addr: &str) -> Vec<String> {
    net.status_json(sock)["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["address"] == addr)
        .map(|b| b["health"]["last_error"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The bodies of `n` HTTPS requests to `vip` from the client (certificate not checked:
/// it is self-signed), each on a new connection.
fn fetch(net: &DemoNet, vip: &str, n: usize) -> Vec<String> {
    fetch_with(net, vip, n, &[])
}

/// [`fetch`] with more curl arguments (a client certificate).
fn fetch_with(net: &DemoNet, vip: &str, n: usize, args: &[&str]) -> Vec<String> {
    let url = if vip.contains(':') {
        format!("https://[{vip}]/")
    } else {
        format!("https://{vip}/")
    };
    (0..n)
        .map(|_| {
            let all: Vec<&str> = ["-k"].iter().chain(args).copied().collect();
            curl_with(&net.client, &url, 3, &all).unwrap_or_else(|| panic!("{url}"))
        })
        .collect()
}

#[test]
fn https_checks_pass_over_tls_and_fail_a_backend_without_it() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2etls", 2);
    for i in 0..2 {
        net.start_decap(i);
    }
    let (cert, key) = certificate(&net.dir);
    let mut servers: Vec<Proc> = (0..2).map(|i| serve_tls(&net, i, &cert, &key)).collect();
    let check = format!(
        r#"{{"kind": "https", "path": "/healthz", "host": "{HOST}", "expect_body": "ok", "headers": {{"X-Health-Token": "xlb"}}, "interval_ms": 300, "timeout_ms": 250, "rise": 2, "fall": 2, "down_interval_ms": 300}}"#
    );
    let config = format!(
        r#"{{"vips": [
            {{"address": "{VIP4}", "port": {PORT}, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
            {{"address": "{VIP6}", "port": {PORT}, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "fd00::11"}}, {{"address": "fd00::12"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&config, &[]);
    net.wait_ready(&sock);
    let states = |net: &DemoNet| net.backend_states(&sock);
    let all_up = |net: &DemoNet| {
        let s = states(net);
        s.len() == 4 && s.values().all(|v| v == "up")
    };

    // Passing, not merely started up: every backend's checks succeed, again and again,
    // and each handshake named the configured host.
    let before = net.checks_ok(&sock);
    net.until(&sock, "https checks passing", &|net| {
        net.checks_ok(&sock) >= before + 8 && all_up(net)
    });
    for s in &servers {
        let log = s.log_text();
        assert!(log.contains(&format!("sni {HOST}")), "{log}");
    }
    // The VIPs' clients get the service over TLS, answered straight from the backends.
    for vip in [VIP4, VIP6] {
        for body in fetch(&net, vip, 6) {
            assert!(body == "b1" || body == "b2", "{vip}: {body}");
        }
    }

    // b2 answers plain HTTP on the port: its port is open (a `tcp` check passes), but no
    // client could talk TLS to it.
    servers.pop();
    let plain = serve_plain(&net, 1);
    let own = SocketAddr::new("198.18.0.12".parse().expect("literal"), PORT);
    assert!(connect_in(&net.lb, own, TIMEOUT).is_ok());
    let b2_down = |net: &DemoNet| {
        let s = states(net);
        s.get(&format!("{VIP4}:{PORT}/tcp 198.18.0.12"))
            .map(String::as_str)
            == Some("down")
            && s.get(&format!("[{VIP6}]:{PORT}/tcp fd00::12"))
                .map(String::as_str)
                == Some("down")
    };
    net.until(&sock, "b2 down under https checks", &b2_down);
    let s = states(&net);
    assert_eq!(s[&format!("{VIP4}:{PORT}/tcp 198.18.0.11")], "up", "{s:?}");
    assert_eq!(s[&format!("[{VIP6}]:{PORT}/tcp fd00::11")], "up", "{s:?}");
    for e in last_errors(&net, &sock, "198.18.0.12")
        .into_iter()
        .chain(last_errors(&net, &sock, "fd00::12"))
    {
        assert!(e.starts_with("TLS handshake failed: "), "{e}");
    }
    for vip in [VIP4, VIP6] {
        for body in fetch(&net, vip, 6) {
            assert_eq!(body, "b1", "{vip}");
        }
    }

    // TLS back on b2: up again, and serving.
    drop(plain);
    servers.push(serve_tls(&net, 1, &cert, &key));
    net.until(&sock, "b2 up again", &all_up);
}

/// A CA of this test's own: its certificate in `dir/ca.pem`; it issues certificates for
/// [`HOST`] valid now, or expired.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "xlb e2e CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write ca.pem");
        Self {
            cert,
            key,
            dir: dir.to_owned(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for [`HOST`] (server or client) and its key, in files named after
    /// `label`.
    fn issue(&self, label: &str, expired: bool) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
        // Servers' and clients' alike (OpenSSL refuses a client certificate without
        // clientAuth).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        let paths = (
            self.dir.join(format!("{label}-cert.pem")),
            self.dir.join(format!("{label}-key.pem")),
        );
        std::fs::write(&paths.0, cert.pem()).expect("write cert");
        std::fs::write(&paths.1, key.serialize_pem()).expect("write key");
        paths
    }
}

#[test]
fn verified_https_checks_take_out_a_backend_whose_certificate_expired_and_pass_mtls() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eca", 2);
    for i in 0..2 {
        net.start_decap(i);
    }
    let ca = TestCa::new(&net.dir);
    let (good, expired) = (ca.issue("good", false), ca.issue("expired", true));
    // b1 takes only clients with a certificate from the test's CA: the checks' identity
    // and the test client's.
    let (check_id, client_id) = (ca.issue("check-id", false), ca.issue("client-id", false));
    let mut servers = vec![
        serve_tls_for(&net, 0, &good.0, &good.1, Some(&ca.ca_file())),
        serve_tls(&net, 1, &expired.0, &expired.1),
    ];
    let ca_file = serde_json::to_string(&ca.ca_file()).expect("path as JSON");
    let check = |ca: &str| {
        format!(
            r#"{{"kind": "https", "path": "/healthz", "host": "{HOST}", "expect_body": "ok", "headers": {{"X-Health-Token": "xlb"}}, {ca} "interval_ms": 300, "timeout_ms": 250, "rise": 2, "fall": 2, "down_interval_ms": 300}}"#
        )
    };
    // One VIP per family verifies and presents the checks' certificate; a third, IPv4 on
    // another port, does neither.
    let json_path = |p: &Path| serde_json::to_string(p).expect("path as JSON");
    let verified = check(&format!(
        r#""ca_file": {ca_file}, "cert_file": {}, "key_file": {},"#,
        json_path(&check_id.0),
        json_path(&check_id.1)
    ));
    let any = check("");
    let config = format!(
        r#"{{"vips": [
            {{"address": "{VIP4}", "port": {PORT}, "protocol": "tcp", "health_check": {verified},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
            {{"address": "{VIP6}", "port": {PORT}, "protocol": "tcp", "health_check": {verified},
              "backends": [{{"address": "fd00::11"}}, {{"address": "fd00::12"}}]}},
            {{"address": "{VIP4}", "port": 8443, "protocol": "tcp",
              "health_check": {any_with_port},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#,
        any_with_port = any.replacen('{', &format!(r#"{{"port": {PORT}, "#), 1)
    );
    let (_lb, sock) = net.start_lb(&config, &[]);
    net.wait_ready(&sock);
    let state = |net: &DemoNet, key: &str| net.backend_states(&sock).get(key).cloned();
    let b2_keys = [
        format!("{VIP4}:{PORT}/tcp 198.18.0.12"),
        format!("[{VIP6}]:{PORT}/tcp fd00::12"),
    ];
    let b1_keys = [
        format!("{VIP4}:{PORT}/tcp 198.18.0.11"),
        format!("[{VIP6}]:{PORT}/tcp fd00::11"),
    ];
    // Without verification b2's expired certificate passes; without a client certificate
    // b1 does not.
    let (unverified_b1, unverified_b2) = (
        format!("{VIP4}:8443/tcp 198.18.0.11"),
        format!("{VIP4}:8443/tcp 198.18.0.12"),
    );
    let is = |net: &DemoNet, k: &str, want: &str| state(net, k).as_deref() == Some(want);
    let settled = |net: &DemoNet| {
        b1_keys.iter().all(|k| is(net, k, "up"))
            && b2_keys.iter().all(|k| is(net, k, "down"))
            && is(net, &unverified_b2, "up")
            && is(net, &unverified_b1, "down")
    };
    let before = net.checks_ok(&sock);
    net.until(
        &sock,
        "b2 down where verified, b1 where unidentified",
        &|net| net.checks_ok(&sock) >= before + 8 && settled(net),
    );
    // The reasons name the certificate's fault; only the verified checks fail b2.
    let errors: Vec<String> = last_errors(&net, &sock, "198.18.0.12")
        .into_iter()
        .chain(last_errors(&net, &sock, "fd00::12"))
        .filter(|e| !e.is_empty())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        assert!(
            e.starts_with("TLS handshake failed: ") && e.contains("expired"),
            "{e}"
        );
    }
    // Clients of the verified VIPs reach b1 only, with their own certificate.
    let client_args = [
        "--cert",
        client_id.0.to_str().expect("utf-8 path"),
        "--key",
        client_id.1.to_str().expect("utf-8 path"),
    ];
    for vip in [VIP4, VIP6] {
        for body in fetch_with(&net, vip, 6, &client_args) {
            assert_eq!(body, "b1", "{vip}");
        }
    }

    // b2 renewed (same CA): up again under the verified checks.
    let renewed = ca.issue("renewed", false);
    servers.pop();
    servers.push(serve_tls(&net, 1, &renewed.0, &renewed.1));
    net.until(&sock, "b2 up with a renewed certificate", &|net| {
        b2_keys
            .iter()
            .all(|k| state(net, k).as_deref() == Some("up"))
    });
}
