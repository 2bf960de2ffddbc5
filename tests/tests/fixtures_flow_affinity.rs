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
//!   recorded backend for when that one comes back.
//!
//! The steps come from a fixed generator, so a failure names a sequence that fails again.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::counters::Drop;
use xlb::config::{BackendConfig, VipId};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{Pkt, PROTO_TCP},
};

const VIP: &str = "198.18.1.1:80/tcp";
const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "table_size": 1009, "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"},
        {"address": "198.18.0.13"}, {"address": "198.18.0.14"}]}
]}"#;
const CLIENT: &str = "198.18.0.10";
const FLOWS: u16 = 32;
const STEPS: usize = 6000;

/// A fixed pseudo-random sequence (64-bit LCG, high bits out).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize % n
    }
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

fn packet(port: u16, syn: bool) -> Vec<u8> {
    let p = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4("198.18.1.1"))
        .tcp(port, 80);
    if syn { p.syn() } else { p.ack() }.build()
}

/// The backend a tunnel frame goes to (outer IPv4 destination).
fn tunnel_target(frame: &[u8]) -> IpAddr {
    let b: [u8; 4] = frame[30..34].try_into().expect("outer destination");
    IpAddr::from(b)
}

#[test]
fn flows_keep_their_backend_through_churn_on_every_cpu() {
    if !require_root() {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut lab = Lab::new(CFG);
    let id: VipId = VIP.parse().unwrap();
    let addrs: Vec<IpAddr> = (11..=14)
        .map(|i| format!("198.18.0.{i}").parse().unwrap())
        .collect();
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
    let mut rng = Lcg(0x6166_6669_6e69_7479);
    let mut log: Vec<String> = Vec::new();
    let (mut sent, mut moved, mut dropped) = (0usize, 0usize, 0usize);
    for step in 0..STEPS {
        if rng.below(5) > 0 {
            // A packet of one flow, from one CPU; now and then a SYN.
            let port = 40_000 + rng.below(usize::from(FLOWS)) as u16;
            let cpu = rng.below(cpus);
            let syn = rng.below(10) == 0;
            pin_to(cpu);
            let before = lab.counters();
            let o = lab.run(&packet(port, syn));
            let after = lab.counters();
            let keeps = pinned.get(&port).filter(|(a, inc)| {
                let m = &backends[a];
                m.keeps(*inc) && (!syn || m.takes_new())
            });
            let fail = |why: String| -> ! {
                panic!(
                    "step {step}: flow {port} ({}on CPU {cpu}): {why}\n  recorded: {:?}\n  backends: {backends:?}\n  last steps:\n    {}",
                    if syn { "SYN " } else { "" },
                    pinned.get(&port),
                    log[log.len().saturating_sub(12)..].join("\n    ")
                )
            };
            let want = match keeps {
                Some(&(a, _)) => Some(a),
                None if backends.values().any(Model::takes_new) => {
                    let key = flow(
                        v4(CLIENT).into(),
                        port,
                        v4("198.18.1.1").into(),
                        80,
                        PROTO_TCP,
                    );
                    Some(lab.predict(VIP, &key))
                }
                None => None,
            };
            match (want, o.verdict) {
                (Some(a), XDP_TX) => {
                    let got = tunnel_target(&o.frame);
                    if got != a {
                        fail(format!("went to {got}, must go to {a}"));
                    }
                    if keeps.is_none() {
                        if pinned.contains_key(&port) {
                            moved += 1;
                        }
                        pinned.insert(port, (a, backends[&a].incarnation));
                    }
                    sent += 1;
                }
                (None, XDP_DROP) => {
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
                            address: addr,
                            weight: 1,
                            drained: false,
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
    eprintln!("{sent} packets sent ({moved} flows moved off unusable backends), {dropped} dropped without a backend");
    assert!(
        sent > 1000 && moved > 20 && dropped > 0,
        "the churn reached too little: {sent} / {moved} / {dropped}"
    );
}
