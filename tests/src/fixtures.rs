//! The test_run fixture harness: a [`Lab`] is a freshly loaded balancer programmed through
//! the real core (config → `Core` → BPF maps), and a [`Fixture`] is data: a config, then
//! steps of input frame → expected verdict, output frame and counter deltas.
//!
//! Every backend gets a fixed next hop ([`NEXTHOP_MAC`] via ifindex 1, the loopback device
//! `BPF_PROG_TEST_RUN` presents as ingress), so outputs are byte-exact and independent of
//! the machine's routes. The FIB path is covered by its own fixtures inside a namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::Ebpf;
use lb_common::{
    addr::to_words,
    counters::{slot_name, Drop as DropReason, COUNTER_SLOTS},
    flow::FlowKey,
    hash::{flow_hash, src_hash},
};
use xlb::{
    config::{Config, Scheduler, VipId},
    core::{Core, NextHop, Settings},
    dataplane::{AyaDataplane, Counters},
    loader::{self, LoadOptions},
    testrun::{self, verdict_name},
};

use crate::packet::{
    self, diff_frames, eth_frame, ipv4_outer, ipv6_outer, Mac, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
};

/// The client's MAC (source of input frames).
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
/// The balancer's MAC (destination of input frames, source of output frames).
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
/// The next hop every backend is reached through.
pub const NEXTHOP_MAC: Mac = [0x02, 0, 0, 0, 0, 0xee];
/// Ingress ifindex under `BPF_PROG_TEST_RUN` (loopback).
pub const TEST_RUN_IFINDEX: u32 = 1;
/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
/// See [`XDP_DROP`].
pub const XDP_PASS: u32 = 2;
/// See [`XDP_DROP`].
pub const XDP_TX: u32 = 3;
/// See [`XDP_DROP`].
pub const XDP_REDIRECT: u32 = 4;

/// Addresses used by fixtures (test ranges only).
pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("fixture address")
}
/// See [`v4`].
pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("fixture address")
}

/// VIPs a lab can hold (small maps load fast).
pub const LAB_MAX_VIPS: u32 = 8;

/// The MTU of a lab's link and of its fixed next hops' paths.
pub const LAB_MTU: u32 = 1500;

/// A loaded balancer programmed through the core.
pub struct Lab {
    /// The loaded object (owns the program).
    pub ebpf: Ebpf,
    /// The core writing the maps.
    pub core: Core<AyaDataplane>,
}

impl Lab {
    /// Loads the balancer and applies `config` (JSON), with fixed next hops.
    #[track_caller]
    pub fn new(config: &str) -> Lab {
        Self::with_options(config, Self::options())
    }

    /// The map sizes [`Lab::new`] loads with.
    pub fn options() -> LoadOptions {
        LoadOptions {
            max_vips: LAB_MAX_VIPS,
            max_conns: 4096,
            flow_cache: true,
        }
    }

    /// [`Lab::new`] with other load options.
    #[track_caller]
    pub fn with_options(config: &str, opts: LoadOptions) -> Lab {
        let mut cfg = Config::from_json(config).unwrap_or_else(|e| panic!("fixture config: {e}"));
        // test_run sends new flows as fast as the syscalls go, which can pass the default
        // record rate limit: fixtures that do not test the limit run without one, so that
        // every new flow is recorded whatever the machine's speed.
        cfg.record_rate_limit.get_or_insert(0);
        let mut ebpf = loader::load_balancer(opts).expect("load balancer");
        let dp = AyaDataplane::new(&mut ebpf).expect("balancer maps");
        let settings = Settings::resolve(&cfg, &[], LAB_MTU, opts.max_vips);
        let mut core = Core::new(dp, settings).expect("core");
        core.apply(&cfg)
            .unwrap_or_else(|e| panic!("fixture config refused: {e}"));
        let mut lab = Lab { ebpf, core };
        lab.set_all_nexthops();
        lab
    }

    /// Gives every backend the fixed next hop.
    pub fn set_all_nexthops(&mut self) {
        let pairs = self.core.backend_pairs();
        let hop = NextHop {
            ifindex: TEST_RUN_IFINDEX,
            smac: LB_MAC,
            dmac: NEXTHOP_MAC,
            mtu: LAB_MTU,
        };
        for (vip, addr) in pairs {
            self.core
                .set_nexthop(&vip, addr, Some(hop))
                .expect("set next hop");
        }
    }

    /// Runs the balancer once.
    #[track_caller]
    pub fn run(&mut self, frame: &[u8]) -> testrun::Outcome {
        run_balancer(&mut self.ebpf, frame)
    }

    /// The lab's core in a daemon (no health checks started), and the lab's program: for
    /// what only the daemon does (recounts, the control ops' answers).
    pub fn into_daemon(self) -> (xlb::daemon::state::Daemon, Ebpf) {
        let Lab { ebpf, core } = self;
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let checker = xlb::health::HealthChecker::default();
        (xlb::daemon::state::Daemon::new(core, checker, tx), ebpf)
    }

    /// Summed counters by slot.
    pub fn counters(&self) -> Vec<u64> {
        self.core.dataplane().reasons()
    }

    /// The backend the data plane should pick for a new flow, computed on the host with
    /// the same hash and the core's live table.
    #[track_caller]
    pub fn predict(&self, vip: &str, flow: &FlowKey) -> IpAddr {
        let id: VipId = vip.parse().expect("vip id");
        let state = self.core.vip(&id).expect("vip");
        let hash = if state.config.scheduler == Scheduler::Sh {
            src_hash(flow)
        } else {
            flow_hash(flow)
        };
        let table = state.table();
        let idx = table[(hash % table.len() as u32) as usize];
        state
            .backends
            .iter()
            .find(|(_, b)| b.index == idx)
            .map(|(a, _)| *a)
            .expect("slot points at a backend")
    }
}

/// Runs `frame` through the balancer program of `ebpf` (a lab's, or one a daemon was
/// made from).
pub fn run_balancer(ebpf: &mut Ebpf, frame: &[u8]) -> testrun::Outcome {
    let prog = loader::xdp(ebpf, loader::BALANCER_PROG).expect("program");
    testrun::run(prog, frame).expect("test_run")
}

/// The IPv4 backend the balancer of `ebpf` tunnels `frame` to from `lb`, checking that
/// the whole output is that tunnel of the client's packet.
#[track_caller]
pub fn tunnelled_to(ebpf: &mut Ebpf, frame: &[u8], lb: IpAddr) -> IpAddr {
    let out = run_balancer(ebpf, frame);
    assert_eq!(out.verdict, XDP_TX, "not forwarded");
    let backend = IpAddr::from([out.frame[30], out.frame[31], out.frame[32], out.frame[33]]);
    assert_eq!(
        out.frame,
        encapsulated(frame, lb, backend, 0),
        "not a tunnel of the client's packet"
    );
    backend
}

/// The connection-table key of a client → VIP packet.
pub fn flow(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    FlowKey::between(src, sport, dst, dport, proto)
}

/// What a step's output must be.
pub enum Expect {
    /// The frame comes back untouched.
    Unchanged,
    /// Exactly these bytes.
    Frame(Vec<u8>),
    /// Not checked (drops: the kernel hands back whatever is in the buffer).
    Ignored,
}

/// One packet through the balancer.
pub struct Step {
    /// Something to do before the packet (change backends, health, …).
    pub before: Option<fn(&mut Lab)>,
    /// Input frame.
    pub input: Vec<u8>,
    /// Expected verdict.
    pub verdict: u32,
    /// Expected output.
    pub output: Expect,
    /// Expected counter deltas of this step; every other drop reason must stay unchanged.
    pub counters: Vec<(u32, u64)>,
}

/// A fixture: a config and a story of steps.
pub struct Fixture {
    /// Unique name (shows in failures).
    pub name: &'static str,
    /// JSON config.
    pub config: String,
    /// The steps.
    pub steps: Vec<Step>,
}

/// A step with no `before` hook.
pub fn step(input: Vec<u8>, verdict: u32, output: Expect, counters: &[(u32, u64)]) -> Step {
    Step {
        before: None,
        input,
        verdict,
        output,
        counters: counters.to_vec(),
    }
}

/// Runs fixtures, each on a fresh lab; panics with every failure listed.
#[track_caller]
pub fn run_all(fixtures: Vec<Fixture>) {
    let mut failures = Vec::new();
    for f in &fixtures {
        if let Err(e) = run_one(f) {
            failures.push(format!("fixture {}: {e}", f.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

fn run_one(f: &Fixture) -> Result<(), String> {
    let mut lab = Lab::new(&f.config);
    for (i, s) in f.steps.iter().enumerate() {
        if let Some(hook) = s.before {
            hook(&mut lab);
        }
        let before = lab.counters();
        let out = lab.run(&s.input);
        let after = lab.counters();
        if out.verdict != s.verdict {
            return Err(format!(
                "step {i}: verdict {} (want {}); counter changes: {}",
                verdict_name(out.verdict),
                verdict_name(s.verdict),
                deltas(&before, &after)
            ));
        }
        match &s.output {
            Expect::Unchanged => {
                if let Some(d) = diff_frames(&s.input, &out.frame) {
                    return Err(format!("step {i}: frame changed:\n{d}"));
                }
            }
            Expect::Frame(want) => {
                if let Some(d) = diff_frames(want, &out.frame) {
                    return Err(format!("step {i}: output differs:\n{d}"));
                }
            }
            Expect::Ignored => {}
        }
        for (slot, want) in &s.counters {
            let got = after[*slot as usize] - before[*slot as usize];
            if got != *want {
                return Err(format!(
                    "step {i}: counter {} moved by {got}, want {want}; all changes: {}",
                    slot_name(*slot).unwrap_or("?"),
                    deltas(&before, &after)
                ));
            }
        }
        for d in DropReason::ALL {
            let slot = d.slot() as usize;
            let listed = s.counters.iter().any(|(s, _)| *s as usize == slot);
            if !listed && after[slot] != before[slot] {
                return Err(format!(
                    "step {i}: unexpected drop {}; all changes: {}",
                    d.name(),
                    deltas(&before, &after)
                ));
            }
        }
    }
    Ok(())
}

fn deltas(before: &[u64], after: &[u64]) -> String {
    let v: Vec<String> = (0..COUNTER_SLOTS as usize)
        .filter(|&i| after[i] != before[i])
        .map(|i| {
            format!(
                "{}+{}",
                slot_name(i as u32).unwrap_or("?"),
                after[i] - before[i]
            )
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The frame the balancer should send for `input` towards `backend`: Ethernet to the next
/// hop, outer header from `src` (TOS / traffic class copied from the inner header, IPv6
/// flow label = low 20 bits of the flow hash), then the client's IP packet verbatim.
pub fn encapsulated(input: &[u8], src: IpAddr, backend: IpAddr, hash: u32) -> Vec<u8> {
    encapsulated_via(input, NEXTHOP_MAC, LB_MAC, src, backend, hash)
}

/// What the balancer should send for `input` towards `backend` (an address), from the
/// fixtures' usual outer sources (198.18.0.2, fd00::2, by the backend's family); `hash`
/// matters for IPv6 tunnels only (their flow label).
pub fn expect_tunnel(input: &[u8], backend: &str, hash: u32) -> Expect {
    let backend: IpAddr = backend.parse().expect("a backend address");
    let src: IpAddr = if backend.is_ipv4() {
        "198.18.0.2".parse().expect("v4")
    } else {
        "fd00::2".parse().expect("v6")
    };
    Expect::Frame(encapsulated(input, src, backend, hash))
}

/// [`encapsulated`] through a given next hop (`dmac`) from a given interface (`smac`), as
/// the FIB path produces.
pub fn encapsulated_via(
    input: &[u8],
    dmac: Mac,
    smac: Mac,
    src: IpAddr,
    backend: IpAddr,
    hash: u32,
) -> Vec<u8> {
    let inner = packet::ip_packet(input);
    let proto = if inner.first().is_some_and(|b| b >> 4 == 4) {
        packet::PROTO_IPIP
    } else {
        packet::PROTO_IPV6
    };
    tunnel_frame(input, (dmac, smac), (src, backend), proto, hash, inner)
}

/// The frame of a tunnel from `src` to `backend` (its family's outer header: TOS / traffic
/// class copied from `input`'s packet, the flow label from `hash`) carrying `payload` as
/// protocol `proto`, behind `macs` (destination, source) and `input`'s VLAN tag.
fn tunnel_frame(
    input: &[u8],
    (dmac, smac): (Mac, Mac),
    (src, backend): (IpAddr, IpAddr),
    proto: u8,
    hash: u32,
    payload: &[u8],
) -> Vec<u8> {
    let tos = inner_tos(packet::ip_packet(input));
    let vlan = vlan_of(input);
    match (src, backend) {
        (IpAddr::V4(s), IpAddr::V4(b)) => eth_frame(
            dmac,
            smac,
            vlan,
            ETHERTYPE_IPV4,
            &ipv4_outer(s, b, proto, tos, 64, 0, true, payload),
        ),
        (IpAddr::V6(s), IpAddr::V6(b)) => eth_frame(
            dmac,
            smac,
            vlan,
            ETHERTYPE_IPV6,
            &ipv6_outer(s, b, proto, tos, hash & 0xf_ffff, 64, payload),
        ),
        _ => panic!("outer source and backend families differ"),
    }
}

/// The TOS byte (IPv4) or traffic class (IPv6) of an IP packet: the outer header copies it.
fn inner_tos(inner: &[u8]) -> u8 {
    if inner.first().is_some_and(|b| b >> 4 == 4) {
        inner[1]
    } else {
        (u16::from_be_bytes([inner[0], inner[1]]) >> 4) as u8
    }
}

/// A GUE tunnel's UDP header and payload: from the flow hash's source port
/// (`lb_common::maps::gue_source_port`) to `port`, no checksum, then `inner` verbatim.
pub fn gue_udp(port: u16, hash: u32, inner: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + inner.len()).expect("fits a UDP datagram");
    let mut out = Vec::with_capacity(8 + inner.len());
    out.extend_from_slice(&lb_common::maps::gue_source_port(hash).to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(inner);
    out
}

/// What the balancer sends for `input` towards `backend` of a GUE VIP (`"encap": "gue"`)
/// from `src`: [`encapsulated`]'s outer header with UDP as its protocol, then [`gue_udp`],
/// over IPv6 with its checksum over the whole datagram ([`udp_checksum`]) unless
/// `checksum` is false (the client's packet does not let the balancer compute it); over
/// IPv4 without one.
pub fn gue_encapsulated(
    input: &[u8],
    src: IpAddr,
    backend: IpAddr,
    hash: u32,
    port: u16,
    checksum: bool,
) -> Vec<u8> {
    let mut udp = gue_udp(port, hash, packet::ip_packet(input));
    if checksum && backend.is_ipv6() {
        let c = udp_checksum(src, backend, &udp);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    tunnel_frame(input, (NEXTHOP_MAC, LB_MAC), (src, backend), 17, hash, &udp)
}

/// The checksum of the UDP datagram `datagram` (its checksum field zero) from `src` to
/// `dst`, summed over every byte as a receiver checks it (RFC 768; 0 is sent as 0xffff).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, datagram: &[u8]) -> u16 {
    let mut bytes = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets(), d.octets()].concat(),
        _ => panic!("one family: {src} {dst}"),
    };
    bytes.extend_from_slice(&(datagram.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 17]);
    bytes.extend_from_slice(datagram);
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

fn vlan_of(frame: &[u8]) -> Option<u16> {
    let tpid = u16::from_be_bytes([frame[12], frame[13]]);
    (tpid == packet::ETHERTYPE_VLAN).then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

// ---------------------------------------------------------------------------------------
// Beyond the core: runs with a `struct xdp_md` context, and second handles on the maps.
// ---------------------------------------------------------------------------------------

/// Size of the UAPI `struct xdp_md` (data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex; six u32).
const XDP_MD_LEN: usize = 24;
/// The kernel accepts at most 32 bytes of XDP metadata, in 4-byte steps.
pub const MAX_META_LEN: usize = 32;

/// Runs `prog` on `frame` with `BPF_PROG_TEST_RUN` through a `struct xdp_md` context:
/// `meta_len` bytes placed in front of the frame as XDP metadata, and `ingress_ifindex`
/// (0 = loopback, as without context). The output is the frame only (metadata stripped).
///
/// The kernel's answer is returned as is: it refuses (`EINVAL`) a packet shorter than an
/// Ethernet header even behind metadata (seen on 6.18), so a program never sees one here.
pub fn run_with_ctx(
    prog: &aya::programs::Xdp,
    frame: &[u8],
    meta_len: usize,
    ingress_ifindex: u32,
) -> Result<testrun::Outcome, aya::programs::ProgramError> {
    use aya::programs::{TestRun, TestRunOptions};
    assert!(
        meta_len.is_multiple_of(4) && meta_len <= MAX_META_LEN,
        "XDP metadata is 0..=32 bytes in steps of 4"
    );
    let mut data = vec![0u8; meta_len];
    data.extend_from_slice(frame);
    let mut md = [0u8; XDP_MD_LEN];
    md[0..4].copy_from_slice(&(meta_len as u32).to_ne_bytes());
    md[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; data.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(&data),
        data_out: Some(&mut out),
        ctx_in: Some(&md),
        ..TestRunOptions::new()
    })?;
    out.truncate(res.data_size_out as usize);
    // The kernel copies out from data_meta: drop the metadata again.
    let frame = out.get(meta_len..).unwrap_or(&[]).to_vec();
    Ok(testrun::Outcome {
        verdict: res.return_value,
        frame,
    })
}

/// Another handle on the map called `name` among those `prog` uses, opened by id. The
/// balancer's `Ebpf` object no longer holds its maps (the core took them); fixtures that
/// put the data plane in a state the core never writes (a table slot at an inactive
/// backend, no outer source, an egress port) reach the maps this way.
#[track_caller]
pub fn prog_map(prog: &aya::programs::Xdp, name: &str) -> aya::maps::Map {
    use aya::maps::{Map, MapData};
    let ids = prog
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("kernel reports the program's map ids");
    for id in ids {
        let data = MapData::from_id(id).expect("open map by id");
        let info = data.info().expect("map info");
        if info.name_as_str() == Some(name) {
            return Map::from_map_data(data).expect("known map type");
        }
    }
    panic!("the program uses no map named {name}")
}

impl Lab {
    /// Runs the balancer through a context (see [`run_with_ctx`]).
    #[track_caller]
    pub fn run_ctx(
        &mut self,
        frame: &[u8],
        meta_len: usize,
        ingress_ifindex: u32,
    ) -> Result<testrun::Outcome, aya::programs::ProgramError> {
        let prog = loader::xdp(&mut self.ebpf, loader::BALANCER_PROG).expect("program");
        run_with_ctx(prog, frame, meta_len, ingress_ifindex)
    }

    /// A second handle on one of the balancer's maps (see [`prog_map`]), e.g.
    /// `lb_common::maps::MAP_BACKENDS`.
    #[track_caller]
    pub fn map(&mut self, name: &str) -> aya::maps::Map {
        let prog = loader::xdp(&mut self.ebpf, loader::BALANCER_PROG).expect("program");
        prog_map(prog, name)
    }

    /// The IPv4 connection table's entry for `flow`, if recorded.
    pub fn recorded_v4(&mut self, flow: &FlowKey) -> Option<lb_common::maps::ConnEntry> {
        use lb_common::{flow::FlowKeyV4, maps::ConnEntry};
        let conns: aya::maps::HashMap<_, FlowKeyV4, ConnEntry> =
            aya::maps::HashMap::try_from(self.map(lb_common::maps::MAP_CONNS_V4))
                .expect("CONNS_V4 is a hash map");
        conns.get(&FlowKeyV4::of(flow), 0).ok()
    }

    /// Rewrites backend slot `idx` in the `BACKENDS` map behind the core's back.
    #[track_caller]
    pub fn poke_backend(&mut self, idx: u32, edit: impl FnOnce(&mut lb_common::maps::Backend)) {
        use aya::maps::Array;
        let mut backends: Array<_, lb_common::maps::Backend> =
            Array::try_from(self.map(lb_common::maps::MAP_BACKENDS)).expect("BACKENDS is an array");
        let mut b = backends.get(&idx, 0).expect("backend slot");
        edit(&mut b);
        backends.set(idx, b, 0).expect("write backend slot");
    }

    /// Rewrites the balancer-wide `CONFIG` slot behind the core's back.
    #[track_caller]
    pub fn poke_config(&mut self, edit: impl FnOnce(&mut lb_common::maps::LbConfig)) {
        use aya::maps::Array;
        let mut config: Array<_, lb_common::maps::LbConfig> =
            Array::try_from(self.map(lb_common::maps::MAP_CONFIG)).expect("CONFIG is an array");
        let mut c = config.get(&0, 0).expect("config slot");
        edit(&mut c);
        config.set(0, c, 0).expect("write config slot");
    }

    /// The backend index the core gave `addr` on VIP `vip`.
    #[track_caller]
    pub fn backend_index(&self, vip: &str, addr: &str) -> u32 {
        let id: VipId = vip.parse().expect("vip id");
        let addr: IpAddr = addr.parse().expect("backend address");
        self.core
            .vip(&id)
            .expect("vip")
            .backends
            .get(&addr)
            .expect("backend on the VIP")
            .index
    }

    /// Adds `ifindex` to the `TX_PORTS` devmap (egress ports for `XDP_REDIRECT`). Call from
    /// the network namespace the device lives in: the kernel resolves the ifindex there.
    #[track_caller]
    pub fn add_tx_port(&mut self, ifindex: u32) {
        use aya::maps::DevMapHash;
        let mut ports = DevMapHash::try_from(self.map(lb_common::maps::MAP_TX_PORTS))
            .expect("TX_PORTS is a devmap hash");
        ports
            .insert(ifindex, ifindex, None, 0)
            .expect("add TX port");
    }
}

/// The loaded decap program with its local-address map filled in.
pub struct DecapLab {
    /// The loaded object (owns the program and `DECAP_ADDRS`).
    pub ebpf: Ebpf,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, lb_common::counters::Counters>,
}

impl DecapLab {
    /// Loads `xlb_decap` and declares `local` as this host's tunnel endpoints.
    #[track_caller]
    pub fn new(local: &[IpAddr]) -> DecapLab {
        use aya::maps::{HashMap, PerCpuArray};
        use lb_common::maps::{DecapAddr, MAP_DECAP_ADDRS, MAP_STATS};
        let mut ebpf = loader::load_decap().expect("load decap");
        {
            let mut addrs: HashMap<_, DecapAddr, u32> =
                HashMap::try_from(ebpf.map_mut(MAP_DECAP_ADDRS).expect("DECAP_ADDRS map"))
                    .expect("DECAP_ADDRS type");
            for a in local {
                let (addr, family) = to_words(*a);
                addrs
                    .insert(
                        DecapAddr {
                            addr,
                            family: u32::from(family),
                        },
                        1u32,
                        0,
                    )
                    .expect("add decap address");
            }
        }
        let stats = PerCpuArray::try_from(ebpf.take_map(MAP_STATS).expect("STATS map"))
            .expect("STATS type");
        DecapLab { ebpf, stats }
    }

    /// Takes GUE tunnels to `port` too (`xlb decap --gue-port`).
    pub fn set_gue_port(&mut self, port: u16) {
        let mut map: aya::maps::Array<_, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut(lb_common::maps::MAP_GUE_PORT)
                .expect("GUE_PORT map"),
        )
        .expect("GUE_PORT type");
        map.set(0, u32::from(port), 0).expect("set the GUE port");
    }

    /// Runs the decap program once.
    #[track_caller]
    pub fn run(&mut self, frame: &[u8]) -> testrun::Outcome {
        let prog = loader::xdp(&mut self.ebpf, loader::DECAP_PROG).expect("decap program");
        testrun::run(prog, frame).expect("test_run")
    }

    /// Every `STATS` slot, summed over CPUs.
    pub fn counters(&self) -> Vec<u64> {
        xlb::dataplane::sum_reasons(&self.stats)
    }
}

/// Counter changes between two snapshots, named (`"decapsulated+1, …"` or `"none"`).
pub fn counter_deltas(before: &[u64], after: &[u64]) -> String {
    deltas(before, after)
}

/// Pins the calling thread to CPU `cpu`. The flow cache is per CPU and test_run runs the
/// program on the calling CPU, so tests of the cache pin their thread.
pub fn pin_to(cpu: usize) {
    // SAFETY: plain libc calls on a zeroed, correctly sized cpu_set_t for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity failed");
    }
}

/// Pins the calling thread to the CPU it runs on (see [`pin_to`]).
pub fn pin_to_this_cpu() {
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    pin_to(usize::try_from(cpu).expect("sched_getcpu failed"));
}
