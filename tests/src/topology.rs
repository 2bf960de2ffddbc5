//! The demo / end-to-end topology: a client, a balancer and N backends on one bridged LAN,
//! all in namespaces this process creates (and removes on drop).
//!
//! ```text
//!   client 198.18.0.10 fd00::10 ──┐
//!   lb     198.18.0.2  fd00::2  ──┼── bridge (own namespace)
//!   bN     198.18.0.1N fd00::1N ──┘   VIPs 198.18.1.1 / fd00:1::1 on each backend's lo
//! ```
//! A test may add a second LAN behind the balancer's `eth1` ([`DemoNet::add_arm`]).
//! The client routes the VIP prefixes via the balancer; the balancer tunnels to a backend;
//! the backend's decap program strips the tunnel and its stack answers the client directly
//! (DSR), never through the balancer. Backends run `python3 -m http.server` serving a page
//! that says who they are.

use std::{
    collections::BTreeMap,
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use aya::Ebpf;

use crate::netns::{wait_for, Lan, Netns};

/// IPv4 VIP.
pub const VIP4: &str = "198.18.1.1";
/// IPv6 VIP.
pub const VIP6: &str = "fd00:1::1";
/// The balancer's addresses.
pub const LB4: &str = "198.18.0.2";
/// See [`LB4`].
pub const LB6: &str = "fd00::2";
/// The balancer's addresses on a second LAN ([`DemoNet::add_arm`]).
pub const ARM_LB4: &str = "198.18.2.1";
/// See [`ARM_LB4`].
pub const ARM_LB6: &str = "fd00:2::1";
/// The client's addresses.
pub const CLIENT4: &str = "198.18.0.10";
/// See [`CLIENT4`].
pub const CLIENT6: &str = "fd00::10";
/// Debian's Python (has the standard library; PATH may hold a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";
/// Size of `big.bin` on every backend.
pub const BIG_FILE: usize = 256 * 1024;
/// Port of the line server (answers every line with the backend's name; long-lived flows).
pub const NAME_PORT: u16 = 7000;

/// A threaded HTTP server (dual stack, port 80) answering every GET with NAME after DELAY s.
const SLOW_SERVER: &str = r#"
import http.server, socketserver, time, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(DELAY)
        body = b"NAME\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", 80), H).serve_forever()
"#;

/// Port of the sink server (reads a whole upload, answers "NAME BYTES").
pub const SINK_PORT: u16 = 7001;

/// A threaded TCP server that reads until the client shuts its side, then answers with the
/// backend's name and the number of bytes it received.
const SINK_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
s.listen(64)
def serve(c):
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(("%s %d\n" % (name, n)).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A threaded TCP server answering each received line with the backend's name.
const NAME_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1].encode() + b"\n"
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
s.listen(128)
def serve(c):
    f = c.makefile("rb")
    for line in f:
        c.sendall(name)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A child process killed (and reaped) on drop, output going to a log file.
pub struct Proc {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.wait(timeout)
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits up to `timeout` for the process to exit; its exit status, `None` if it did not.
    pub fn wait(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGHUP (`xlb run` reloads its config file).
    pub fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` inside `ns` with output to `log`.
#[track_caller]
pub fn spawn_logged(ns: &Netns, cmd: &[&str], log: &Path) -> Proc {
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log handle");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?} in {}: {e}", ns.name()));
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// Path of a freshly built `xlb` binary (built once per process, debug profile, in the
/// workspace's target directory).
pub fn xlb_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "lb-userspace", "--bin", "xlb"])
            .status()
            .expect("running cargo build for xlb");
        assert!(status.success(), "building the xlb binary failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("xlb")
    })
    .clone()
}

/// One backend host.
pub struct BackendHost {
    /// Its namespace.
    pub ns: Netns,
    /// Its own IPv4 address (tunnel destination).
    pub v4: Ipv4Addr,
    /// Its own IPv6 address.
    pub v6: Ipv6Addr,
    /// Name its web page answers with (`b1`, `b2`, …).
    pub name: String,
    /// The web server, while running.
    pub http: Option<Proc>,
    /// The decap program's process.
    pub decap: Option<Proc>,
    docroot: PathBuf,
}

/// Where backend `b`'s decap serves its metrics (`xlb decap --metrics`).
pub fn decap_metrics(b: &BackendHost) -> std::net::SocketAddr {
    std::net::SocketAddr::new(b.v4.into(), 9101)
}

/// The whole topology.
pub struct DemoNet {
    /// The switch.
    pub lan: Lan,
    /// The client host.
    pub client: Netns,
    /// The balancer host.
    pub lb: Netns,
    /// Backends.
    pub backends: Vec<BackendHost>,
    /// Scratch directory for logs, configs and web roots.
    pub dir: PathBuf,
    /// XDP_PASS on the balancer's bridge port (veth delivers XDP_TX only to a peer with an
    /// XDP program); detached on drop.
    _pass: Ebpf,
    /// LANs behind the balancer's other interfaces ([`DemoNet::add_arm`]), each with the
    /// XDP_PASS program on the balancer's port.
    arms: Vec<(Lan, Ebpf)>,
    /// Names this topology's namespaces.
    prefix: String,
}

impl DemoNet {
    /// Builds the topology with `n` backends (no processes started yet).
    pub fn new(prefix: &str, n: usize) -> DemoNet {
        let dir =
            std::env::temp_dir().join(format!("xlb-{prefix}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let lan = Lan::new(prefix);
        let client = Netns::new(&format!("{prefix}c"));
        let lb = Netns::new(&format!("{prefix}l"));
        lan.attach(
            &client,
            "eth0",
            &[&format!("{CLIENT4}/24"), &format!("{CLIENT6}/64")],
        );
        client.route(&["198.18.1.0/24", "via", LB4]);
        client.route(&["fd00:1::/64", "via", LB6]);
        let lb_port = lan.attach(&lb, "eth0", &[&format!("{LB4}/24"), &format!("{LB6}/64")]);
        lb.sysctl("net.ipv4.conf.all.forwarding", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");
        let pass = pass_on(&lan, &lb_port.bridge_if);
        let mut net = DemoNet {
            lan,
            client,
            lb,
            backends: Vec::new(),
            dir,
            _pass: pass,
            arms: Vec::new(),
            prefix: prefix.to_string(),
        };
        for i in 1..=n {
            let v4: Ipv4Addr = format!("198.18.0.{}", 10 + i).parse().expect("addr");
            let v6: Ipv6Addr = format!("fd00::{}", 10 + i).parse().expect("addr");
            let ns = Netns::new(&format!("{prefix}b{i}"));
            net.lan
                .attach(&ns, "eth0", &[&format!("{v4}/24"), &format!("{v6}/64")]);
            net.add_backend(ns, v4, v6);
        }
        net
    }

    /// Makes backend host `ns` (plugged in as `eth0` with `v4` and `v6`) a DSR backend
    /// named after its place (`bN`) and adds it to [`DemoNet::backends`].
    fn add_backend(&mut self, ns: Netns, v4: Ipv4Addr, v6: Ipv6Addr) {
        ns.addr("lo", &format!("{VIP4}/32"));
        ns.addr("lo", &format!("{VIP6}/128"));
        // Classic DSR: the VIP lives on lo, and must not be answered for on the LAN.
        ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.eth0.rp_filter", "0");
        let name = format!("b{}", self.backends.len() + 1);
        let docroot = self.dir.join(&name);
        std::fs::create_dir_all(&docroot).expect("docroot");
        std::fs::write(docroot.join("index.html"), format!("{name}\n")).expect("index.html");
        // A large file: replies that big would show in the balancer's receive counters if
        // they crossed it.
        std::fs::write(docroot.join("big.bin"), vec![b'x'; BIG_FILE]).expect("big.bin");
        self.backends.push(BackendHost {
            ns,
            v4,
            v6,
            name,
            http: None,
            decap: None,
            docroot,
        });
    }

    /// A second LAN behind the balancer (a two-armed balancer): the balancer plugs in as
    /// `eth1` with [`ARM_LB4`] and [`ARM_LB6`], and `n` more backends (198.18.2.1N,
    /// fd00:2::1N, numbered on from the first LAN's) route to the client through it. Every
    /// link of that LAN has `mtu`. The balancer reaches these backends by XDP_REDIRECT to
    /// `eth1`; their replies cross the balancer's kernel (forwarding is on), not its XDP
    /// program, which sits on `eth0` only. Returns the new backends' indices.
    pub fn add_arm(&mut self, n: usize, mtu: u32) -> std::ops::Range<usize> {
        let prefix = self.prefix.clone();
        let lan = Lan::new(&format!("{prefix}a{}", self.arms.len() + 1));
        let lb_port = lan.attach(
            &self.lb,
            "eth1",
            &[&format!("{ARM_LB4}/24"), &format!("{ARM_LB6}/64")],
        );
        let set_mtu = |lan: &Lan, host: &Netns, port: &crate::netns::Port| {
            lan.ns().set_mtu(&port.bridge_if, mtu);
            host.set_mtu(&port.host_if, mtu);
        };
        set_mtu(&lan, &self.lb, &lb_port);
        let pass = pass_on(&lan, &lb_port.bridge_if);
        let first = self.backends.len();
        for i in first + 1..=first + n {
            let v4: Ipv4Addr = format!("198.18.2.{}", 10 + i).parse().expect("addr");
            let v6: Ipv6Addr = format!("fd00:2::{}", 10 + i).parse().expect("addr");
            let ns = Netns::new(&format!("{prefix}b{i}"));
            let port = lan.attach(&ns, "eth0", &[&format!("{v4}/24"), &format!("{v6}/64")]);
            set_mtu(&lan, &ns, &port);
            ns.route(&["198.18.0.0/24", "via", ARM_LB4]);
            ns.route(&["fd00::/64", "via", ARM_LB6]);
            self.add_backend(ns, v4, v6);
        }
        self.arms.push((lan, pass));
        first..first + n
    }

    /// Starts every backend's decap program and web server and waits until they serve.
    pub fn start_backends(&mut self) {
        for i in 0..self.backends.len() {
            self.start_decap(i);
            self.start_http(i);
        }
    }

    /// Starts backend `i`'s decap program.
    pub fn start_decap(&mut self, i: usize) {
        self.start_decap_with(i, &[]);
    }

    /// Starts backend `i`'s decap program with `extra` arguments (e.g. `--clamp-mss`).
    pub fn start_decap_with(&mut self, i: usize, extra: &[&str]) {
        let bin = xlb_bin();
        let b = &mut self.backends[i];
        let log = self.dir.join(format!("{}-decap.log", b.name));
        let metrics = decap_metrics(b).to_string();
        let mut argv = vec![
            bin.to_str().expect("utf-8 path"),
            "decap",
            "--iface",
            "eth0",
            "--metrics",
            &metrics,
        ];
        argv.extend_from_slice(extra);
        let p = spawn_logged(&b.ns, &argv, &log);
        let ns = b.ns.name().to_string();
        wait_for(&format!("decap on {ns}"), Duration::from_secs(20), || {
            let out = Command::new("ip")
                .args(["-n", &ns, "link", "show", "eth0"])
                .output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).contains("xdp"))
                .unwrap_or(false)
        });
        b.decap = Some(p);
    }

    /// Starts backend `i`'s web server and waits until it answers locally.
    pub fn start_http(&mut self, i: usize) {
        let root = self.backends[i]
            .docroot
            .to_str()
            .expect("utf-8 path")
            .to_string();
        self.serve_http(
            i,
            "http",
            &[
                "-m",
                "http.server",
                "80",
                "--bind",
                "::",
                "--directory",
                &root,
            ],
        );
    }

    /// Runs `python3 ARGS` as backend `i`'s web server on port 80 and waits until it answers
    /// a GET (bounded); the server stays until [`DemoNet::stop_http`].
    fn serve_http(&mut self, i: usize, label: &str, args: &[&str]) {
        let b = &mut self.backends[i];
        let log = self.dir.join(format!("{}-{label}.log", b.name));
        let mut cmd = vec![PYTHON];
        cmd.extend_from_slice(args);
        let p = spawn_logged(&b.ns, &cmd, &log);
        let url = format!("http://{}/", b.v4);
        let ns = &b.ns;
        // 2 s per try: a deliberately slow server must still pass.
        wait_for(
            &format!("{label} server {}", b.name),
            Duration::from_secs(20),
            || curl(ns, &url, 2).is_some(),
        );
        b.http = Some(p);
    }

    /// Starts backend `i`'s line server on [`NAME_PORT`].
    pub fn start_name_server(&self, i: usize) -> Proc {
        self.start_script_server(i, "names", NAME_SERVER, NAME_PORT)
    }

    /// Starts backend `i`'s sink server on [`SINK_PORT`].
    pub fn start_sink(&self, i: usize) -> Proc {
        self.start_script_server(i, "sink", SINK_SERVER, SINK_PORT)
    }

    /// Runs a Python TCP server script (`script NAME PORT`) on backend `i` and waits until
    /// it accepts connections.
    fn start_script_server(&self, i: usize, label: &str, script: &str, port: u16) -> Proc {
        let b = &self.backends[i];
        let log = self.dir.join(format!("{}-{label}.log", b.name));
        let port_arg = port.to_string();
        let p = spawn_logged(&b.ns, &[PYTHON, "-c", script, &b.name, &port_arg], &log);
        let addr = std::net::SocketAddr::new(b.v4.into(), port);
        let ns = &b.ns;
        wait_for(
            &format!("{label} server {}", b.name),
            Duration::from_secs(20),
            || {
                let _inside = ns.enter();
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            },
        );
        p
    }

    /// Starts backend `i`'s web server answering every request after `delay_ms` (a slow
    /// backend, made slow inside its server).
    pub fn start_slow_http(&mut self, i: usize, delay_ms: u64) {
        let script = SLOW_SERVER
            .replace("DELAY", &format!("{}", delay_ms as f64 / 1000.0))
            .replace("NAME", &self.backends[i].name);
        self.serve_http(i, "slow", &["-c", &script]);
    }

    /// Starts `xlb agent` on backend `i`, answering with the first line of `state_file`.
    pub fn start_agent(&self, i: usize, port: u16, state_file: &Path) -> Proc {
        let b = &self.backends[i];
        let log = self.dir.join(format!("{}-agent.log", b.name));
        let bin = xlb_bin();
        let listen = format!("[::]:{port}");
        spawn_logged(
            &b.ns,
            &[
                bin.to_str().expect("utf-8 path"),
                "agent",
                "--listen",
                &listen,
                "--state-file",
                state_file.to_str().expect("utf-8 path"),
            ],
            &log,
        )
    }

    /// Stops backend `i`'s web server (its host stays up: health checks must notice).
    pub fn stop_http(&mut self, i: usize) {
        self.backends[i].http = None;
    }

    /// Name of the backend whose own IPv4 address is `addr`.
    pub fn backend_name(&self, addr: &str) -> Option<&str> {
        self.backends
            .iter()
            .find(|b| b.v4.to_string() == addr || b.v6.to_string() == addr)
            .map(|b| b.name.as_str())
    }

    /// A config with one VIP per family on port 80 over all backends (TCP health checks).
    pub fn config_json(&self) -> String {
        let b4: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!(r#"{{"address": "{}"}}"#, b.v4))
            .collect();
        let b6: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!(r#"{{"address": "{}"}}"#, b.v6))
            .collect();
        format!(
            r#"{{"vips": [
  {{"name": "web4", "address": "{VIP4}", "port": 80, "protocol": "tcp",
    "health_check": {{"kind": "http", "path": "/", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 600}},
    "backends": [{}]}},
  {{"name": "web6", "address": "{VIP6}", "port": 80, "protocol": "tcp",
    "health_check": {{"kind": "http", "path": "/", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 600}},
    "backends": [{}]}}
]}}"#,
            b4.join(", "),
            b6.join(", ")
        )
    }

    /// Starts `xlb run` on the balancer with `config` (JSON text) and a control socket in
    /// the scratch directory; waits until the program is attached and the socket answers.
    pub fn start_lb(&self, config: &str, extra: &[&str]) -> (Proc, PathBuf) {
        let cfg = self.dir.join("xlb.json");
        std::fs::write(&cfg, config).expect("write config");
        let sock = self.dir.join("xlb.sock");
        let bin = xlb_bin();
        let mut args = vec![
            bin.to_str().expect("utf-8 path").to_string(),
            "run".into(),
            "--iface".into(),
            "eth0".into(),
            "--config".into(),
            cfg.to_str().expect("utf-8 path").into(),
            "--socket".into(),
            sock.to_str().expect("utf-8 path").into(),
            "--max-vips".into(),
            "8".into(),
            "--max-conns".into(),
            "65536".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = spawn_logged(&self.lb, &argv, &self.dir.join("xlb-run.log"));
        let s2 = sock.clone();
        wait_for(
            "xlb run to serve its socket",
            Duration::from_secs(30),
            || {
                assert!(p.running(), "xlb run exited:\n{}", p.log_text());
                s2.exists()
            },
        );
        (p, sock)
    }

    /// Runs an `xlb` control command against `sock` (from the root namespace: it only
    /// talks to the Unix socket) and returns stdout; panics on failure.
    #[track_caller]
    pub fn ctl(&self, sock: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.try_ctl(sock, args);
        assert!(ok, "xlb {args:?} failed: {err}");
        out
    }

    /// Waits up to 15 s for `done`, showing the balancer's `xlb status` if it never comes.
    #[track_caller]
    pub fn until(&self, sock: &Path, what: &str, done: &dyn Fn(&DemoNet) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "never {what}:\n{}",
                self.ctl(sock, &["status"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Health checks passed so far, over every backend of every VIP (`xlb status`).
    pub fn checks_ok(&self, sock: &Path) -> u64 {
        self.status_json(sock)["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
            .filter_map(|b| b["health"]["checks_ok"].as_u64())
            .sum()
    }

    /// `xlb status --json`, parsed; panics on failure.
    #[track_caller]
    pub fn status_json(&self, sock: &Path) -> serde_json::Value {
        serde_json::from_str(&self.ctl(sock, &["status", "--json"])).expect("status JSON")
    }

    /// `xlb stats --json`, parsed; panics on failure.
    #[track_caller]
    pub fn stats_json(&self, sock: &Path) -> serde_json::Value {
        serde_json::from_str(&self.ctl(sock, &["stats", "--json"])).expect("stats JSON")
    }

    /// Like [`DemoNet::ctl`], returning (success, stdout, stderr).
    pub fn try_ctl(&self, sock: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(xlb_bin())
            .args(args)
            .arg("--socket")
            .arg(sock)
            .output()
            .expect("running xlb");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Backend states (`up`, `down`, `drained`) by "VIP backend" from `xlb status --json`.
    pub fn backend_states(&self, sock: &Path) -> BTreeMap<String, String> {
        let (ok, out, _) = self.try_ctl(sock, &["status", "--json"]);
        let mut states = BTreeMap::new();
        let Some(v) = ok
            .then(|| serde_json::from_str::<serde_json::Value>(&out).ok())
            .flatten()
        else {
            return states;
        };
        for vip in v["vips"].as_array().into_iter().flatten() {
            for b in vip["backends"].as_array().into_iter().flatten() {
                let key = format!(
                    "{} {}",
                    vip["vip"].as_str().unwrap_or("?"),
                    b["address"].as_str().unwrap_or("?")
                );
                states.insert(key, b["state"].as_str().unwrap_or("?").to_string());
            }
        }
        states
    }

    /// Waits until the balancer has a resolved next hop for every backend of every VIP
    /// (status shows `next_hop`), so that the first requests are not lost to resolution.
    pub fn wait_ready(&self, sock: &Path) {
        wait_for(
            "next hops for all backends",
            Duration::from_secs(20),
            || {
                let (ok, out, _) = self.try_ctl(sock, &["status", "--json"]);
                ok && serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| v["vips"].as_array().cloned())
                    .is_some_and(|vips| {
                        vips.iter().all(|v| {
                            v["backends"]
                                .as_array()
                                .is_some_and(|bs| bs.iter().all(|b| !b["next_hop"].is_null()))
                        })
                    })
            },
        );
    }
}

impl Drop for DemoNet {
    fn drop(&mut self) {
        // Processes first (their namespaces go with the Netns drops), then the scratch dir.
        for b in &mut self.backends {
            b.http = None;
            b.decap = None;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// XDP_PASS attached to `bridge_if` in `lan`'s namespace (detached when dropped): veth
/// delivers XDP_TX and XDP_REDIRECT frames only to a peer with NAPI, and GRO is off on the
/// LANs' ports.
fn pass_on(lan: &Lan, bridge_if: &str) -> Ebpf {
    let _inside = lan.ns().enter();
    let mut ebpf = xlb::loader::load_baseline("xlb_pass").expect("load xlb_pass");
    xlb::loader::attach(
        &mut ebpf,
        "xlb_pass",
        bridge_if,
        aya::programs::XdpMode::Driver,
    )
    .expect("attach xlb_pass");
    ebpf
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A TCP connection opened from inside `ns` (the socket stays in that namespace).
pub fn connect_in(
    ns: &Netns,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let _inside = ns.enter();
    let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// The Prometheus text of `xlb run --metrics ADDR`, scraped from inside `ns` as
/// Prometheus would; panics if it cannot be read.
#[track_caller]
pub fn scrape_metrics(ns: &Netns, addr: std::net::SocketAddr) -> String {
    metrics_port_get(ns, addr, "/metrics")
}

/// `GET path` on a metrics port from inside `ns`: the whole answer, status line first.
#[track_caller]
pub fn metrics_port_get(ns: &Netns, addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut m = connect_in(ns, addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("metrics port {addr}: {e}"));
    m.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .expect("metrics port request");
    let mut text = String::new();
    m.read_to_string(&mut text).expect("metrics port answer");
    text
}

/// A long-lived connection to a line server (see [`NAME_PORT`]): every question is answered
/// with the backend's name, so a test sees at once if the connection moved.
pub struct LineConn {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl LineConn {
    /// Connects from inside `ns` to the IPv4 VIP's line port ([`VIP4`]:[`NAME_PORT`]);
    /// panics if it cannot.
    #[track_caller]
    pub fn to_vip(ns: &Netns) -> LineConn {
        let addr = std::net::SocketAddr::new(VIP4.parse().expect("VIP4"), NAME_PORT);
        LineConn::open(ns, addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    /// `n` connections to the IPv4 VIP's line port from inside `ns`, each with the backend
    /// that first answered it.
    #[track_caller]
    pub fn many_to_vip(ns: &Netns, n: usize) -> Vec<(LineConn, String)> {
        (0..n)
            .map(|_| {
                let mut c = LineConn::to_vip(ns);
                let who = c.who();
                (c, who)
            })
            .collect()
    }

    /// The client's end of the connection (address and port).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.writer
            .local_addr()
            .expect("a connected socket's address")
    }

    /// Asks who answers; panics if the connection broke.
    #[track_caller]
    pub fn who(&mut self) -> String {
        self.ask()
            .unwrap_or_else(|e| panic!("no answer on a long-lived connection: {e}"))
    }

    /// Connects from inside `ns`.
    pub fn open(
        ns: &Netns,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<LineConn> {
        let s = connect_in(ns, addr, timeout)?;
        Ok(LineConn {
            reader: std::io::BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Asks who answers.
    pub fn ask(&mut self) -> std::io::Result<String> {
        use std::io::{BufRead, Write};
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
}

/// One HTTP/1.0 GET over a new connection from inside `ns`; the body, or an error. Faster
/// than spawning curl, so load loops can run hundreds of requests.
pub fn http_get(
    ns: &Netns,
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = connect_in(ns, addr, timeout)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: xlb\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    if !resp.starts_with(b"HTTP/1.0 200") && !resp.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "status: {}",
            String::from_utf8_lossy(&resp[..split.min(40)])
        )));
    }
    Ok(resp[split + 4..].to_vec())
}

/// Like [`http_get`], from a given source address of the client (several client identities).
pub fn http_get_from(
    ns: &Netns,
    src: std::net::IpAddr,
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let _inside = ns.enter();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&std::net::SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&addr.into(), timeout)?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: xlb\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    Ok(resp[split + 4..].to_vec())
}

/// Receive byte counter of `ifname` in `ns`.
pub fn rx_bytes(ns: &Netns, ifname: &str) -> u64 {
    let path = format!("/sys/class/net/{ifname}/statistics/rx_bytes");
    let _inside = ns.enter();
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One HTTP GET from `ns` with curl (new connection, new source port); the body, or `None`
/// on any failure. Bounded by `timeout_s`.
pub fn curl(ns: &Netns, url: &str, timeout_s: u32) -> Option<String> {
    curl_with(ns, url, timeout_s, &[])
}

/// [`curl`] with extra curl arguments (e.g. `--local-port`).
pub fn curl_with(ns: &Netns, url: &str, timeout_s: u32, extra: &[&str]) -> Option<String> {
    let t = timeout_s.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "curl", "-s", "-f", "-g"])
        .args(extra)
        .args(["--max-time", &t, url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
