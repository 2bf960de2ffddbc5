//! Network-namespace topologies for end-to-end tests.
//!
//! Rules every helper here keeps, so a test can never disturb the machine it runs on:
//! - interfaces are created inside namespaces (`ip -n NS link add … peer … netns OTHER`), never
//!   in the root namespace;
//! - addresses and routes are checked to lie in 198.18.0.0/15 (RFC 2544 benchmarking) or
//!   fd00::/8 (ULA) before they are configured;
//! - [`Netns`] deletes its namespace on drop, which also runs while a panicking test unwinds;
//!   deleting a namespace destroys its interfaces and veth peers.
//!
//! Commands use iproute2 and ethtool. Net sysctls are written in-process after `setns(2)`.

use std::cell::Cell;
use std::fs::File;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Linux limit for interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
const POLL_INTERVAL: Duration = Duration::from_millis(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// True when running as root. Otherwise prints why the calling test is skipped; use as
/// `if !require_root() { return; }`.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED: this test needs root (network namespaces); run it with sudo");
    false
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[track_caller]
fn command_output(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {program} {}: {e}", args.join(" ")),
    }
}

#[track_caller]
fn check(program: &str, args: &[&str], out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
#[track_caller]
fn ip(args: &[&str]) -> String {
    check("ip", args, command_output("ip", args))
}

/// Panics unless `addr` (an address or a prefix, v4 or v6) lies in 198.18.0.0/15 or fd00::/8.
#[track_caller]
pub fn assert_test_addr(addr: &str) {
    let host = addr.split('/').next().unwrap_or(addr);
    let allowed = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.octets()[0] == 198 && a.octets()[1] & 0xfe == 18,
        Ok(IpAddr::V6(a)) => a.octets()[0] == 0xfd,
        Err(_) => panic!("{addr:?} is not an IP address or prefix"),
    };
    assert!(
        allowed,
        "{addr} is outside the test ranges 198.18.0.0/15 and fd00::/8"
    );
}

#[track_caller]
fn assert_ifname(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= IFNAME_MAX && !name.contains(['/', ' ', ':']),
        "{name:?} is not a valid interface name (1..=15 bytes, no '/', ' ' or ':')"
    );
}

/// A named network namespace that is deleted, with every process still in it, on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping this handle deletes the namespace (false for [`Netns::existing`]).
    owned: bool,
}

impl Netns {
    /// Creates `xlbt-{prefix}-{pid}-{n}` with `lo` up.
    #[track_caller]
    pub fn new(prefix: &str) -> Netns {
        let name = format!("xlbt-{prefix}-{}-{}", std::process::id(), next_id());
        ip(&["netns", "add", &name]);
        // From here on, Drop cleans up even if the next command fails.
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A handle to a namespace another `Netns` owns (e.g. for a worker thread: `Netns` is
    /// not shared across threads). Dropping it deletes nothing.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`, panicking with stderr on failure; returns stdout.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn exec_args<'a>(&'a self, cmd: &[&'a str]) -> Vec<&'a str> {
        assert!(!cmd.is_empty(), "empty command");
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        args
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`) and returns its output, whatever the
    /// exit status.
    #[track_caller]
    pub fn exec(&self, cmd: &[&str]) -> Output {
        command_output("ip", &self.exec_args(cmd))
    }

    /// Runs `cmd` inside the namespace, panicking with its stderr unless it succeeds; returns
    /// stdout.
    #[track_caller]
    pub fn run(&self, cmd: &[&str]) -> String {
        let args = self.exec_args(cmd);
        check("ip", &args, command_output("ip", &args))
    }

    /// Starts `cmd` inside the namespace with stdout piped (stdin and stderr inherited); the
    /// returned guard kills it on drop.
    #[track_caller]
    pub fn spawn(&self, cmd: &[&str]) -> Spawned {
        let args = self.exec_args(cmd);
        match Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
        {
            // `ip netns exec` execs the command, so this pid is the command itself.
            Ok(child) => Spawned { child },
            Err(e) => panic!("cannot spawn ip {}: {e}", args.join(" ")),
        }
    }

    /// Sets a `net.*` sysctl of this namespace (other sysctls are global, so refused).
    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        assert!(
            key.starts_with("net.") && !key.contains(".."),
            "sysctl {key} is not per network namespace"
        );
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        // /proc/sys/net resolves to the network namespace of the thread that opens it.
        let _inside = self.enter();
        if let Err(e) = std::fs::write(&path, value) {
            panic!("sysctl {key}={value} in {}: {e}", self.name);
        }
    }

    /// Moves the current thread into this namespace until the guard drops, e.g. to load and
    /// attach a BPF program to an interface in here. Other threads are unaffected.
    #[track_caller]
    pub fn enter(&self) -> NsGuard<'_> {
        let open = |path: &str| match File::open(path) {
            Ok(f) => f,
            Err(e) => panic!("open {path}: {e}"),
        };
        // thread-self, not self: in a multi-threaded test binary /proc/self is the main
        // thread, whose namespace may differ from this thread's.
        let original = open("/proc/thread-self/ns/net");
        let target = open(&format!("/var/run/netns/{}", self.name));
        setns(&target, &self.name);
        NsGuard {
            original,
            _ns: PhantomData,
            _not_send: PhantomData,
        }
    }

    /// Brings an interface up.
    #[track_caller]
    pub fn link_up(&self, ifname: &str) {
        self.ip(&["link", "set", ifname, "up"]);
    }

    /// Adds an address (`198.18.0.2/24`, `fd00::2/64`). IPv6 addresses skip duplicate address
    /// detection so they are usable at once.
    #[track_caller]
    pub fn addr(&self, ifname: &str, cidr: &str) {
        assert_test_addr(cidr);
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname]);
        }
    }

    /// `ip route add ARGS`, e.g. `&["198.18.1.1/32", "via", "198.18.0.2"]`. Every address in
    /// the arguments must be a test address; `default` is accepted.
    #[track_caller]
    pub fn route(&self, args: &[&str]) {
        let mut v6 = false;
        for arg in args {
            let host = arg.split('/').next().unwrap_or(arg);
            if host.parse::<IpAddr>().is_ok() {
                assert_test_addr(arg);
                v6 |= arg.contains(':');
            }
        }
        let mut full = vec![if v6 { "-6" } else { "-4" }, "route", "add"];
        full.extend_from_slice(args);
        self.ip(&full);
    }

    /// Turns off TX checksum offload and GRO. veth otherwise hands XDP and the peer packets
    /// with partial checksums or merged segments. Features the driver cannot change are left
    /// as they are.
    #[track_caller]
    pub fn offloads_off(&self, ifname: &str) {
        for feature in ["tx", "gro"] {
            // ethtool exits non-zero when a feature is fixed; that is fine here.
            let _ = self.exec(&["ethtool", "-K", ifname, feature, "off"]);
        }
    }

    #[track_caller]
    pub fn set_mtu(&self, ifname: &str, mtu: u32) {
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()]);
    }

    /// One line of `ip -o link show dev IF`: `IDX: NAME[@PEER]: <FLAGS> … link/ether MAC …`.
    #[track_caller]
    fn link_line(&self, ifname: &str) -> String {
        self.ip(&["-o", "link", "show", "dev", ifname])
    }

    #[track_caller]
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let line = self.link_line(ifname);
        match line.split(':').next().map(|i| i.trim().parse::<u32>()) {
            Some(Ok(index)) => index,
            _ => panic!("no ifindex in `ip link` output for {ifname}: {line}"),
        }
    }

    #[track_caller]
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let line = self.link_line(ifname);
        let parsed = line
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .and_then(parse_mac);
        match parsed {
            Some(mac) => mac,
            None => panic!("no MAC in `ip link` output for {ifname}: {line}"),
        }
    }

    /// Whether an interface of this name exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        let out = command_output("ip", &["-n", &self.name, "link", "show", "dev", ifname]);
        out.status.success()
    }

    /// Pids of processes whose main thread is in this namespace.
    fn pids(&self) -> Vec<i32> {
        let out = command_output("ip", &["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        for pid in self.pids() {
            // Never kill the test binary itself, should its main thread have entered.
            if pid != me {
                // SAFETY: plain kill(2) on a pid we just listed; errors (already gone) ignored.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Do not panic in drop: this may run while a test is already unwinding.
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[track_caller]
fn setns(file: &File, what: &str) {
    // SAFETY: the fd is open for the duration of the call; CLONE_NEWNET only affects the
    // calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns into {what}: {}", std::io::Error::last_os_error());
    }
}

/// The current thread's stay in a namespace (see [`Netns::enter`]); drop returns the thread
/// to the namespace it was in. Not `Send`: it must drop on the thread that entered.
pub struct NsGuard<'a> {
    original: File,
    _ns: PhantomData<&'a Netns>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: as in setns() above.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        // A thread stuck in a namespace about to be deleted would run the rest of its tests
        // in the wrong place: better to stop the whole binary loudly.
        if rc != 0 {
            eprintln!(
                "fatal: cannot return thread to its network namespace: {}",
                std::io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
}

/// A process started by [`Netns::spawn`]; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
}

impl Spawned {
    /// The child, e.g. to take its piped stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a veth pair with end `a_if` in `a` and end `b_if` in `b` (created in `a` and its
/// peer moved straight to `b`, so nothing appears in the root namespace). Both stay down.
#[track_caller]
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    assert_ifname(a_if);
    assert_ifname(b_if);
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
}

/// A switch: a namespace holding one Linux bridge that hosts plug into with [`Lan::attach`].
#[derive(Debug)]
pub struct Lan {
    ns: Netns,
    ports: Cell<usize>,
}

/// One host's connection to a [`Lan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The bridge-side veth end, in [`Lan::ns`]. veth delivers XDP_TX frames only to a peer
    /// with an XDP program, so tests attach an XDP_PASS program here.
    pub bridge_if: String,
    /// The host-side veth end, in the host's namespace.
    pub host_if: String,
}

impl Lan {
    const BRIDGE: &'static str = "br0";

    #[track_caller]
    pub fn new(prefix: &str) -> Lan {
        let ns = Netns::new(prefix);
        // The switch only forwards frames; without its own IPv6 stack it sends no router or
        // neighbour solicitations that tests would see.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        // No STP (ports forward at once) and no multicast snooping (neighbour discovery is
        // flooded rather than waiting for MLD reports).
        ns.ip(&[
            "link",
            "add",
            Self::BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ]);
        ns.link_up(Self::BRIDGE);
        Lan {
            ns,
            ports: Cell::new(0),
        }
    }

    /// The switch namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Plugs `host` in as `host_if` with `addrs` (`198.18.0.1/24`, `fd00::1/64`, …): both veth
    /// ends up, TX checksum offload and GRO off on both.
    #[track_caller]
    pub fn attach(&self, host: &Netns, host_if: &str, addrs: &[&str]) -> Port {
        let n = self.ports.get();
        self.ports.set(n + 1);
        let bridge_if = format!("p{n}");
        // Created in the switch namespace, peer moved to the host's: never in the root one.
        veth(&self.ns, &bridge_if, host, host_if);
        self.ns
            .ip(&["link", "set", &bridge_if, "master", Self::BRIDGE]);
        for (ns, ifname) in [(&self.ns, bridge_if.as_str()), (host, host_if)] {
            ns.offloads_off(ifname);
            ns.link_up(ifname);
        }
        for addr in addrs {
            host.addr(host_if, addr);
        }
        Port {
            bridge_if,
            host_if: host_if.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use super::*;

    const PYTHON: &str = "/usr/bin/python3";

    /// Echoes one line per connection on every address given, printing "ready" once listening.
    const ECHO_SERVER: &str = r#"
import socket, sys, threading
def serve(s):
    while True:
        c, _ = s.accept()
        c.sendall(c.recv(100))
        c.close()
for addr in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 7777))
    s.listen()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

    const ECHO_CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(5)
s.connect((sys.argv[1], 7777))
s.sendall(b"xlb")
print(s.recv(100).decode())
"#;

    fn ns_inode(path: &str) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    fn netns_exists(name: &str) -> bool {
        Path::new(&format!("/var/run/netns/{name}")).exists()
            || String::from_utf8_lossy(&command_output("ip", &["netns", "list"]).stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
    }

    #[test]
    fn hosts_on_a_lan_reach_each_other_v4_and_v6() {
        if !require_root() {
            return;
        }
        let lan = Lan::new("lan");
        let a = Netns::new("a");
        let b = Netns::new("b");
        let pa = lan.attach(&a, "eth0", &["198.18.0.1/24", "fd00::1/64"]);
        let pb = lan.attach(&b, "eth0", &["198.18.0.2/24", "fd00::2/64"]);
        assert_ne!(pa.bridge_if, pb.bridge_if);
        assert!(lan.ns().has_link(&pa.bridge_if));
        assert_eq!(a.mac("eth0").len(), 6);
        assert_ne!(a.mac("eth0"), b.mac("eth0"));
        assert!(a.ifindex("eth0") > 1);

        let mut server = b.spawn(&[PYTHON, "-c", ECHO_SERVER, "198.18.0.2", "fd00::2"]);
        let stdout = server.child().stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");

        for dst in ["198.18.0.2", "fd00::2"] {
            let reply = a.run(&[PYTHON, "-c", ECHO_CLIENT, dst]);
            assert_eq!(reply.trim(), "xlb", "echo via {dst}");
        }
    }

    #[test]
    fn drop_removes_namespaces_and_links() {
        if !require_root() {
            return;
        }
        let a = Netns::new("da");
        let b = Netns::new("db");
        veth(&a, "va", &b, "vb");
        assert!(b.has_link("vb"));
        let a_name = a.name().to_string();
        drop(a);
        assert!(!netns_exists(&a_name));
        // The peer goes away with its namespace, asynchronously in the kernel.
        wait_for("veth peer removal", Duration::from_secs(5), || {
            !b.has_link("vb")
        });
    }

    #[test]
    fn drop_cleans_up_during_a_panic() {
        if !require_root() {
            return;
        }
        let survivor = Netns::new("sv");
        let names = std::sync::Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(|| {
            let lan = Lan::new("pl");
            let h = Netns::new("ph");
            names
                .lock()
                .unwrap()
                .extend([lan.ns().name().to_string(), h.name().to_string()]);
            lan.attach(&h, "eth0", &["198.18.0.9/24"]);
            veth(&h, "x0", &survivor, "x1");
            let _sleeper = h.spawn(&["sleep", "30"]);
            panic!("test failure inside the topology");
        });
        assert!(result.is_err());
        for name in names.lock().unwrap().iter() {
            assert!(!netns_exists(name), "{name} survived the panic");
        }
        wait_for("veth peer removal", Duration::from_secs(5), || {
            !survivor.has_link("x1")
        });
    }

    #[test]
    fn enter_switches_and_restores_the_thread() {
        if !require_root() {
            return;
        }
        let ns = Netns::new("en");
        let peer = Netns::new("ep");
        veth(&ns, "xlbtve0", &peer, "xlbtve1");
        let before = ns_inode("/proc/thread-self/ns/net");
        let target = ns_inode(&format!("/var/run/netns/{}", ns.name()));
        assert_ne!(before, target);
        let name = CString::new("xlbtve0").unwrap();
        // SAFETY: valid NUL-terminated string; the lookup uses the thread's namespace.
        let lookup = || unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_eq!(lookup(), 0, "xlbtve0 must not exist outside the namespace");
        {
            let _guard = ns.enter();
            assert_eq!(ns_inode("/proc/thread-self/ns/net"), target);
            assert_eq!(lookup(), ns.ifindex("xlbtve0"));
        }
        assert_eq!(lookup(), 0);
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), before);
        ns.sysctl("net.ipv4.ip_forward", "1");
        assert_eq!(
            ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
            "1"
        );
        assert_eq!(ns_inode("/proc/thread-self/ns/net"), before);
    }

    #[test]
    #[should_panic(expected = "outside the test ranges")]
    fn refuses_foreign_addresses() {
        assert_test_addr("192.0.2.1/24");
    }

    #[test]
    fn test_address_ranges() {
        for ok in ["198.18.0.1/24", "198.19.255.1", "fd00::1/64", "fdff::1"] {
            assert_test_addr(ok);
        }
        for bad in ["198.20.0.1", "203.0.113.1/8", "fe80::1", "2001:db8::1"] {
            assert!(
                std::panic::catch_unwind(|| assert_test_addr(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
