//! test_run, randomized: flows keep their backend through backend churn. Thousands of
//! steps mix packets of 32 flows, sent from either CPU (each has its own flow cache), with
//! control changes made through the core: health down and up, drain and undrain, weight
//! changes, backends removed and added again. A model says where every packet must go:
//! - a flow stays on the backend it was recorded with while that backend is active (healthy)
//!   and still the same backend (not removed and added again since): drained or weight 0
//!   included, except for a SYN, which opens a new connection;
//! - otherwise its packet is scheduled anew: to the backend the VIP's live Maglev table
//!   gives its hash (computed on the host), which the flow then keeps;
//! - with no backend taking new flows, such a packet is dropped, and the flow keeps its
//!   recorded backend for when that one comes back;
//! - an ICMP error about the flow (a router's, about the backend's reply) goes where the
//!   flow's data would, but never records the flow.
//!
//! A second test keeps the backends still and checks least connection's counts: after
//! every packet, each backend's count is the number of its open connections.
//!
//! The steps come from a fixed generator, so a failure names a sequence that fails again.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::counters::Drop;
use xlb::{
    config::{BackendConfig, VipId},
    testing::Lcg,
};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ip_packet, Pkt, PROTO_TCP},
};

const FLOWS: u16 = 32;

/// Steps per case; `XLB_STEPS=N` for a deeper search by hand (same sequence, longer).
fn steps() -> usize {
    std::env::var("XLB_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000)
}

/// One run: a VIP with this scheduler, of this family, four backends.
struct Case {
    scheduler: &'static str,
    v6: bool,
    seed: u64,
}

impl Case {
    fn vip_addr(&self) -> IpAddr {
        if self.v6 { "fd00:1::1" } else { "198.18.1.1" }
            .parse()
            .unwrap()
    }

    fn client(&self) -> IpAddr {
        if self.v6 { "fd00::10" } else { "198.18.0.10" }
            .parse()
            .unwrap()
    }

    fn backends(&self) -> Vec<IpAddr> {
        (11..=14)
            .map(|i| {
                if self.v6 {
                    format!("fd00::{i}")
                } else {
                    format!("198.18.0.{i}")
                }
                .parse()
                .unwrap()
            })
            .collect()
    }

    fn vip(&self) -> String {
        match self.vip_addr() {
            IpAddr::V4(a) => format!("{a}:80/tcp"),
            IpAddr::V6(a) => format!("[{a}]:80/tcp"),
        }
    }

    fn config(&self) -> String {
        let backends: Vec<String> = self
            .backends()
            .iter()
            .map(|a| format!(r#"{{"address": "{a}"}}"#))
            .collect();
        format!(
            r#"{{"outer_source": {{"v4": "198.18.0.2", "v6": "fd00::2"}}, "vips": [
                {{"address": "{}", "port": 80, "protocol": "tcp", "scheduler": "{}",
                  "table_size": 1009, "backends": [{}]}}]}}"#,
            self.vip_addr(),
            self.scheduler,
            backends.join(", ")
        )
    }

    /// Whether the host can tell which backend a new flow gets (the table's pick); with
    /// least connection it is any backend that takes new flows.
    fn predictable(&self) -> bool {
        self.scheduler != "lc"
    }

    fn packet(&self, port: u16, kind: Kind) -> Vec<u8> {
        if kind == Kind::IcmpError {
            return self.icmp_error(port);
        }
        let p = Pkt::eth(CLIENT_MAC, LB_MAC);
        let p = match (self.client(), self.vip_addr()) {
            (IpAddr::V4(c), IpAddr::V4(v)) => p.ipv4(c, v),
            (IpAddr::V6(c), IpAddr::V6(v)) => p.ipv6(c, v),
            _ => unreachable!("one family per case"),
        }
        .tcp(port, 80);
        match kind {
            Kind::Syn => p.syn(),
            Kind::Data => p.ack(),
            Kind::Fin => p.fin().ack(),
            Kind::Rst => p.rst(),
            Kind::IcmpError => unreachable!("built above"),
        }
        .build()
    }

    /// A router's "fragmentation needed" / "packet too big" about the backend's reply to
    /// flow `port` (VIP → client): it comes to the VIP and must go to the flow's backend.
    fn icmp_error(&self, port: u16) -> Vec<u8> {
        let reply = Pkt::eth(LB_MAC, CLIENT_MAC);
        let (reply, router) = match (self.vip_addr(), self.client()) {
            (IpAddr::V4(v), IpAddr::V4(c)) => (reply.ipv4(v, c), IpAddr::from([198, 18, 0, 1])),
            (IpAddr::V6(v), IpAddr::V6(c)) => (reply.ipv6(v, c), "fd00::1".parse().unwrap()),
            _ => unreachable!("one family per case"),
        };
        let reply = reply.tcp(80, port).ack().payload(&[0; 32]).build();
        // As much of the reply as routers quote: from the minimum (the IP header and 8
        // bytes, RFC 792 / RFC 4443 allow no less) to 60 bytes, by flow.
        let least = if self.v6 { 48 } else { 28 };
        let quoted = &ip_packet(&reply)[..[least, least + 8, 60][usize::from(port % 3)]];
        let p = Pkt::eth(CLIENT_MAC, LB_MAC);
        match (router, self.vip_addr()) {
            (IpAddr::V4(r), IpAddr::V4(v)) => p.ipv4(r, v).icmp_frag_needed(1400, quoted),
            (IpAddr::V6(r), IpAddr::V6(v)) => p.ipv6(r, v).icmpv6_packet_too_big(1400, quoted),
            _ => unreachable!("one family per case"),
        }
        .build()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Syn,
    Data,
    Fin,
    Rst,
    /// An ICMP error about the flow: routed like its data, but never records the flow.
    IcmpError,
}

/// What the model knows of a backend address.
#[derive(Clone, Copy, Debug)]
struct Model {
    /// Configured on the VIP now.
    present: bool,
    /// Times it was added: a flow recorded with an earlier one must not come back to it.
    incarnation: u32,
    healthy: bool,
    drained: bool,
    weight: u32,
}

impl Model {
    fn keeps(&self, incarnation: u32) -> bool {
        self.present && self.incarnation == incarnation && self.healthy
    }

    fn takes_new(&self) -> bool {
        self.present && self.healthy && !self.drained && self.weight > 0
    }
}

/// The backend a tunnel frame goes to (outer destination).
fn tunnel_target(frame: &[u8]) -> IpAddr {
    if frame[12..14] == [0x86, 0xdd] {
        let b: [u8; 16] = frame[38..54].try_into().expect("outer destination");
        IpAddr::from(b)
    } else {
        let b: [u8; 4] = frame[30..34].try_into().expect("outer destination");
        IpAddr::from(b)
    }
}

#[test]
fn flows_keep_their_backend_through_churn_on_every_cpu() {
    if !require_root() {
        return;
    }
    let cases = [
        Case {
            scheduler: "maglev",
            v6: false,
            seed: 0x6166_6669_6e69_7479,
        },
        Case {
            scheduler: "maglev",
            v6: true,
            seed: 0x7636_6166_6669_6e69,
        },
        Case {
            scheduler: "sh",
            v6: false,
            seed: 0x7368_6166_6669_6e69,
        },
        Case {
            scheduler: "lc",
            v6: false,
            seed: 0x6c63_6166_6669_6e69,
        },
        Case {
            scheduler: "lc",
            v6: true,
            seed: 0x6c63_7636_6669_6e69,
        },
    ];
    for case in cases {
        churn(&case);
    }
}

fn churn(case: &Case) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut lab = Lab::new(&case.config());
    let vip = case.vip();
    let id: VipId = vip.parse().unwrap();
    let addrs = case.backends();
    let mut backends: BTreeMap<IpAddr, Model> = addrs
        .iter()
        .map(|&a| {
            let m = Model {
                present: true,
                incarnation: 0,
                healthy: true,
                drained: false,
                weight: 1,
            };
            (a, m)
        })
        .collect();
    // Flow (source port) → (backend, its incarnation) as recorded.
    let mut pinned: BTreeMap<u16, (IpAddr, u32)> = BTreeMap::new();
    let mut rng = Lcg(case.seed);
    let name = format!(
        "{} {}",
        case.scheduler,
        if case.v6 { "IPv6" } else { "IPv4" }
    );
    let mut log: Vec<String> = Vec::new();
    let (mut sent, mut moved, mut dropped) = (0usize, 0usize, 0usize);
    for step in 0..steps() {
        if rng.below(5) > 0 {
            // A packet of one flow, from one CPU; now and then a SYN or a FIN.
            let port = 40_000 + rng.below(usize::from(FLOWS)) as u16;
            let cpu = rng.below(cpus);
            let kind = [
                Kind::Syn,
                Kind::Fin,
                Kind::IcmpError,
                Kind::Data,
                Kind::Data,
                Kind::Data,
                Kind::Data,
                Kind::Data,
                Kind::Data,
                Kind::Data,
            ][rng.below(10)];
            let syn = kind == Kind::Syn;
            pin_to(cpu);
            let before = lab.counters();
            let o = lab.run(&case.packet(port, kind));
            let after = lab.counters();
            let keeps = pinned.get(&port).filter(|(a, inc)| {
                let m = &backends[a];
                m.keeps(*inc) && (!syn || m.takes_new())
            });
            let fail = |why: String| -> ! {
                panic!(
                    "{name}, step {step}: flow {port} ({kind:?} on CPU {cpu}): {why}\n  recorded: {:?}\n  backends: {backends:?}\n  last steps:\n    {}",
                    pinned.get(&port),
                    log[log.len().saturating_sub(12)..].join("\n    ")
                )
            };
            let rescheduled = keeps.is_none() && backends.values().any(Model::takes_new);
            let want = match keeps {
                Some(&(a, _)) => Some(a),
                None if rescheduled && case.predictable() => {
                    let key = flow(case.client(), port, case.vip_addr(), 80, PROTO_TCP);
                    Some(lab.predict(&vip, &key))
                }
                None => None,
            };
            match (want, o.verdict) {
                (_, XDP_TX) if want.is_some() || rescheduled => {
                    let got = tunnel_target(&o.frame);
                    match want {
                        Some(a) if got != a => fail(format!("went to {got}, must go to {a}")),
                        None if !backends.get(&got).is_some_and(Model::takes_new) => {
                            fail(format!("went to {got}, which takes no new flows"))
                        }
                        _ => {}
                    }
                    if keeps.is_none() && kind != Kind::IcmpError {
                        if pinned.contains_key(&port) {
                            moved += 1;
                        }
                        pinned.insert(port, (got, backends[&got].incarnation));
                    }
                    sent += 1;
                }
                (None, XDP_DROP) if !rescheduled => {
                    let slot = Drop::NoBackend.slot() as usize;
                    if after[slot] != before[slot] + 1 {
                        fail(format!(
                            "dropped, but not as no_backend: {}",
                            counter_deltas(&before, &after)
                        ));
                    }
                    dropped += 1;
                }
                (want, v) => fail(format!("verdict {v}, want {want:?}")),
            }
            log.push(format!(
                "cpu {cpu} flow {port}{} → {:?}",
                if syn { " SYN" } else { "" },
                want
            ));
            continue;
        }
        // A control change on one backend, made the way the daemon makes it.
        let addr = addrs[rng.below(addrs.len())];
        let m = backends.get_mut(&addr).expect("model");
        let what = match (m.present, rng.below(6)) {
            (false, _) => {
                lab.core
                    .add_backend(
                        &id,
                        BackendConfig {
                            max_conns: None,
                            quic_server_id: None,
                            address: addr,
                            weight: 1,
                            drained: false,
                            backup: false,
                        },
                    )
                    .expect("add backend");
                lab.set_all_nexthops();
                *m = Model {
                    present: true,
                    incarnation: m.incarnation + 1,
                    healthy: true,
                    drained: false,
                    weight: 1,
                };
                "added"
            }
            (true, 0) => {
                lab.core.remove_backend(&id, addr).expect("remove backend");
                m.present = false;
                "removed"
            }
            (true, 1 | 2) => {
                m.healthy = !m.healthy;
                lab.core.set_health(&id, addr, m.healthy).expect("health");
                if m.healthy {
                    "up"
                } else {
                    "down"
                }
            }
            (true, 3) => {
                m.drained = !m.drained;
                lab.core.set_drained(&id, addr, m.drained).expect("drain");
                if m.drained {
                    "drained"
                } else {
                    "undrained"
                }
            }
            (true, _) => {
                m.weight = [0, 1, 3][rng.below(3)];
                lab.core.set_weight(&id, addr, m.weight).expect("weight");
                "weight"
            }
        };
        log.push(format!("{addr} {what} ({m:?})"));
    }
    eprintln!("{name}: {sent} packets sent ({moved} flows moved off unusable backends), {dropped} dropped without a backend");
    assert!(
        sent > 1000 && moved > 20 && dropped > 0,
        "the churn reached too little: {sent} / {moved} / {dropped}"
    );
}

/// Where a flow stands for least connection's counts.
#[derive(Clone, Copy, Debug)]
enum Conn {
    /// Opened (its first packet was no FIN or RST, or a SYN reused it since it closed):
    /// counted on its backend.
    Open(IpAddr),
    /// The client sent FIN or RST: taken back.
    Closed(IpAddr),
    /// First seen closing (a connection older than the balancer's table): never counted.
    Uncounted(IpAddr),
}

impl Conn {
    fn backend(self) -> IpAddr {
        match self {
            Conn::Open(a) | Conn::Closed(a) | Conn::Uncounted(a) => a,
        }
    }
}

/// Least connection's counts, packet by packet from both CPUs, without backend changes (a
/// change makes them estimates until the daemon's recount, see fixtures_recount): each
/// backend's count is the number of its flows that are open, whichever CPU's cache served
/// their packets.
#[test]
fn least_connection_counts_are_open_connections_on_every_cpu() {
    if !require_root() {
        return;
    }
    for (v6, seed) in [(false, 0x636f_756e_7434), (true, 0x636f_756e_7436)] {
        let case = Case {
            scheduler: "lc",
            v6,
            seed,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut lab = Lab::new(&case.config());
        let vip = case.vip();
        let slots: BTreeMap<IpAddr, u32> = case
            .backends()
            .into_iter()
            .map(|a| (a, lab.backend_index(&vip, &a.to_string())))
            .collect();
        let mut conns: BTreeMap<u16, Conn> = BTreeMap::new();
        let mut rng = Lcg(seed);
        let mut log: Vec<String> = Vec::new();
        for step in 0..steps() {
            let port = 40_000 + rng.below(usize::from(FLOWS)) as u16;
            let cpu = rng.below(cpus);
            let kind = rng.pick(&[
                Kind::Syn,
                Kind::Syn,
                Kind::Fin,
                Kind::Rst,
                Kind::IcmpError,
                Kind::Data,
                Kind::Data,
                Kind::Data,
            ]);
            pin_to(cpu);
            let o = lab.run(&case.packet(port, kind));
            log.push(format!("cpu {cpu} flow {port} {kind:?}"));
            macro_rules! fail {
                ($($why:tt)*) => {
                    panic!(
                        "lc {}, step {step}: {}\n  flows: {conns:?}\n  last steps:\n    {}",
                        if v6 { "IPv6" } else { "IPv4" },
                        format!($($why)*),
                        log[log.len().saturating_sub(12)..].join("\n    ")
                    )
                };
            }
            if o.verdict != XDP_TX {
                fail!("verdict {}", o.verdict);
            }
            let got = tunnel_target(&o.frame);
            let before = conns.get(&port).copied();
            if let Some(c) = before {
                if c.backend() != got {
                    fail!("flow {port} moved from {} to {got}", c.backend());
                }
            }
            let closing = matches!(kind, Kind::Fin | Kind::Rst);
            let after = match (before, kind) {
                // Errors never create or change a flow.
                (_, Kind::IcmpError) => before,
                // An unknown flow's RST is forwarded, not recorded (`unknown_rst`).
                (None, Kind::Rst) => None,
                (None, _) if closing => Some(Conn::Uncounted(got)),
                (None, _) => Some(Conn::Open(got)),
                (Some(Conn::Open(a)), _) if closing => Some(Conn::Closed(a)),
                (Some(Conn::Closed(a)), Kind::Syn) => Some(Conn::Open(a)),
                (c, _) => c,
            };
            if let Some(c) = after {
                conns.insert(port, c);
            }
            for (addr, slot) in &slots {
                let open = conns
                    .values()
                    .filter(|c| matches!(c, Conn::Open(a) if a == addr))
                    .count() as u64;
                let counted = lab.core.dataplane().active_counter(*slot);
                if counted != open {
                    fail!("{addr} counts {counted}, {open} connections are open on it");
                }
            }
        }
    }
}
