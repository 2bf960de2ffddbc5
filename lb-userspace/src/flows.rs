//! The `flows` op: the flows the connection tables hold and the backend each is on
//! (`ipvsadm -Lnc`'s view), for the operator who asks who is still on a backend before
//! taking it away, or where a group of clients landed; and `flows.forget`, which deletes
//! some of them (`conntrack -D`'s job): to cut clients a VIP no longer admits, or to send a
//! drained backend's flows elsewhere at once.
//!
//! The tables are scanned without the daemon's lock (a million flows take a while, see
//! `conntable`), so what names an entry — VIP indexes, backend slots and the generation
//! each slot is at — is copied from the core first ([`Names`]); the scan then feeds a
//! [`Listing`], which keeps the first `limit` matching flows in (VIP, client) order, so that
//! the same table gives the same answer whatever order the kernel walks it in, or a
//! [`Forgetting`], which keeps every matching key.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    flow::FlowKey,
    maps::{ConnEntry, CONN_F_CLOSED, CONN_F_COUNTED},
};
use serde::Serialize;

use crate::{
    config::{Protocol, SourcePrefix, VipId},
    core::VipState,
    placement::Recorded,
};

/// Flows listed when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most flows one answer lists: 10 000 lines of about 150 bytes each.
pub const MAX_LIMIT: u32 = 10_000;

/// `limit` as a count, or why it is refused.
pub fn check_limit(limit: Option<u32>) -> Result<usize, String> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        n => Err(format!(
            "{n} is out of range: list 1..={MAX_LIMIT} flows (narrow the listing with a VIP or \
             a backend for fewer)"
        )),
    }
}

/// What names the connection tables' entries, copied from the core under the daemon's lock.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// VIP index (`ConnEntry::vip_id`) → the VIP.
    vips: HashMap<u32, VipId>,
    /// Backend slot → the backend's address and the slot's generation.
    slots: HashMap<u32, (IpAddr, u32)>,
}

impl Names {
    /// The names of every VIP and backend in `vips`.
    pub fn of<'a>(vips: impl Iterator<Item = &'a VipState>) -> Self {
        let mut names = Self::default();
        for v in vips {
            names.vip(v.id, v.config.id());
            for (addr, b) in &v.backends {
                names.backend(b.index, *addr, b.generation);
            }
        }
        names
    }

    /// Names VIP index `id`.
    pub fn vip(&mut self, id: u32, vip: VipId) -> &mut Self {
        self.vips.insert(id, vip);
        self
    }

    /// Names backend slot `slot`, at generation `generation`.
    pub fn backend(&mut self, slot: u32, addr: IpAddr, generation: u32) -> &mut Self {
        self.slots.insert(slot, (addr, generation));
        self
    }

    /// The VIP that holds a flow to `to` recorded under VIP index `id`: `None` when the
    /// index names no VIP now, or one that `to` cannot belong to (the flow's VIP was
    /// removed and its index reused; the entry waits for the table to evict it).
    fn service(&self, id: u32, to: &VipId) -> Option<VipId> {
        self.vips.get(&id).copied().filter(|v| {
            v.address == to.address
                && v.protocol == to.protocol
                && (v.all_ports() || v.port == to.port)
        })
    }

    /// The backend entry `e` is on: `None` when its slot has had another holder since
    /// (the backend was removed).
    fn backend_of(&self, e: &ConnEntry) -> Option<IpAddr> {
        self.slots
            .get(&e.backend)
            .filter(|(_, generation)| *generation == e.generation)
            .map(|(addr, _)| *addr)
    }
}

/// Which flows to list or forget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this VIP's flows (its index), and of those only the flows to `port` when set
    /// (a port of an all-ports VIP).
    pub vip: Option<(u32, Option<u16>)>,
    /// Only the flows on this backend.
    pub backend: Option<IpAddr>,
    /// Only the flows of clients in this prefix.
    pub client: Option<SourcePrefix>,
    /// Only the flows of clients in none of these prefixes: those a VIP's new
    /// `allowed_sources` leaves out.
    pub outside: Option<Vec<SourcePrefix>>,
    /// Only the flows idle for longer than this many seconds (an entry never stamped has
    /// no known idle time and is left out).
    pub idle_over_s: Option<u32>,
}

impl Filter {
    /// Whether `flow` (its entry `e`) passes.
    fn keeps(&self, flow: &Listed, e: &ConnEntry) -> bool {
        if let Some((id, port)) = self.vip {
            if flow.service.is_none() || e.vip_id != id || port.is_some_and(|p| p != flow.vip.port)
            {
                return false;
            }
        }
        let client = flow.client.ip();
        self.backend
            .is_none_or(|b| flow.recorded.backend == Some(b))
            && self.client.is_none_or(|p| p.contains(client))
            && self
                .outside
                .as_ref()
                .is_none_or(|list| !list.iter().any(|p| p.contains(client)))
            && self
                .idle_over_s
                .is_none_or(|n| flow.recorded.idle_s.is_some_and(|idle| idle > n))
    }
}

/// One listed flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// The client's address and port.
    pub client: SocketAddr,
    /// Where the client sent it: the VIP's address, the flow's port, the protocol.
    pub vip: VipId,
    /// The VIP that holds it (an all-ports VIP for a port without a VIP of its own);
    /// `None` for an entry of a VIP since removed.
    pub service: Option<VipId>,
    /// Its entry: the backend, and for least connection whether it counts.
    #[serde(flatten)]
    pub recorded: Recorded,
}

/// The `flows` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Entries in the tables (the filter not applied).
    pub scanned: u64,
    /// Entries the filter matched.
    pub matched: u64,
    /// Whether `flows` holds fewer than `matched` (the limit cut the list).
    pub truncated: bool,
    /// The first matching flows by VIP, then client.
    pub flows: Vec<Listed>,
}

/// The flows a scan matches, the first `limit` kept.
#[derive(Debug)]
pub struct Listing {
    names: Names,
    filter: Filter,
    limit: usize,
    now_s: u32,
    scanned: u64,
    matched: u64,
    kept: BTreeMap<(VipId, SocketAddr), Listed>,
}

impl Listing {
    /// An empty listing: `now_s` is the clock of `ConnEntry::seen_s`.
    pub fn new(names: Names, filter: Filter, limit: usize, now_s: u32) -> Self {
        Self {
            names,
            filter,
            limit,
            now_s,
            scanned: 0,
            matched: 0,
            kept: BTreeMap::new(),
        }
    }

    /// Takes one table entry into account.
    pub fn add(&mut self, key: &FlowKey, e: &ConnEntry) {
        self.scanned += 1;
        let Some(flow) = listed(&self.names, key, e, self.now_s) else {
            return;
        };
        if !self.filter.keeps(&flow, e) {
            return;
        }
        self.matched += 1;
        self.kept.insert((flow.vip, flow.client), flow);
        if self.kept.len() > self.limit {
            self.kept.pop_last();
        }
    }

    /// The answer.
    pub fn finish(self) -> Answer {
        Answer {
            scanned: self.scanned,
            matched: self.matched,
            truncated: self.matched > self.kept.len() as u64,
            flows: self.kept.into_values().collect(),
        }
    }
}

/// The entry as listed; `None` for a key no packet of ours can have made (neither TCP nor
/// UDP, an unknown family): nothing to name it by.
fn listed(names: &Names, key: &FlowKey, e: &ConnEntry, now_s: u32) -> Option<Listed> {
    let protocol = match key.proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let client = lb_common::addr::from_words(key.src, key.family)?;
    let vip = VipId {
        address: lb_common::addr::from_words(key.dst, key.family)?,
        port: u16::from_be(key.dport_be),
        protocol,
    };
    Some(Listed {
        client: SocketAddr::new(client, u16::from_be(key.sport_be)),
        service: names.service(e.vip_id, &vip),
        vip,
        recorded: Recorded::of(e, names.backend_of(e), now_s),
    })
}

/// The flows a scan matches for `flows.forget`: every key, and the backend slots (with
/// their generations) the flows were on.
#[derive(Debug)]
pub struct Forgetting {
    names: Names,
    filter: Filter,
    /// The clock of `ConnEntry::seen_s` now, for the filter's idle time.
    now_s: u32,
    scanned: u64,
    keys: Vec<FlowKey>,
    slots: BTreeSet<(u32, u32)>,
    counted_open: bool,
}

/// The `flows.forget` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    /// Entries in the tables (the filter not applied).
    pub scanned: u64,
    /// Entries the filter matched.
    pub matched: u64,
    /// Entries deleted: fewer than `matched` when some went meanwhile (evicted).
    pub forgotten: u64,
}

impl Forgetting {
    /// Nothing matched yet.
    pub fn new(names: Names, filter: Filter, now_s: u32) -> Self {
        Self {
            names,
            filter,
            now_s,
            scanned: 0,
            keys: Vec::new(),
            slots: BTreeSet::new(),
            counted_open: false,
        }
    }

    /// Takes one table entry into account.
    pub fn add(&mut self, key: &FlowKey, e: &ConnEntry) {
        self.scanned += 1;
        let Some(flow) = listed(&self.names, key, e, self.now_s) else {
            return;
        };
        if self.filter.keeps(&flow, e) {
            self.keys.push(*key);
            self.slots.insert((e.backend, e.generation));
            self.counted_open |= e.flags & (CONN_F_COUNTED | CONN_F_CLOSED) == CONN_F_COUNTED;
        }
    }

    /// The matching flows' keys, to delete.
    pub fn keys(&self) -> &[FlowKey] {
        &self.keys
    }

    /// The backend slots, at their generations, the matching flows were on: copies of
    /// their entries in the data plane's flow cache must stop serving.
    pub fn slots(&self) -> &BTreeSet<(u32, u32)> {
        &self.slots
    }

    /// Whether a matching flow holds a least-connection count (counted, not closed): its
    /// backend's count keeps it once the entry is gone, until a recount.
    pub fn counted_open(&self) -> bool {
        self.counted_open
    }

    /// The answer, once `forgotten` of the keys are deleted.
    pub fn finish(&self, forgotten: u64) -> Forgotten {
        Forgotten {
            scanned: self.scanned,
            matched: self.keys.len() as u64,
            forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: u32 = 3;
    const ANY: u32 = 4;

    fn vip(s: &str) -> VipId {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// VIP index 3 is 198.18.1.1:80/tcp (backends .11 in slot 0 at generation 1, .12 in
    /// slot 1 at generation 2), index 4 the all-ports 198.18.1.2:*/tcp (.13 in slot 2).
    fn names() -> Names {
        let mut n = Names::default();
        n.vip(WEB, vip("198.18.1.1:80/tcp"))
            .vip(ANY, vip("198.18.1.2:*/tcp"))
            .backend(0, ip("198.18.0.11"), 1)
            .backend(1, ip("198.18.0.12"), 2)
            .backend(2, ip("198.18.0.13"), 1);
        n
    }

    fn flow(client: &str, to: &str, port: u16, proto: u8) -> FlowKey {
        let c: SocketAddr = client.parse().unwrap();
        FlowKey::between(c.ip(), c.port(), ip(to), port, proto)
    }

    fn entry(vip_id: u32, backend: u32, generation: u32) -> ConnEntry {
        ConnEntry {
            backend,
            vip_id,
            generation,
            ..Default::default()
        }
    }

    /// The table the tests scan, in a scrambled order: client, VIP address, port,
    /// protocol; the entry's VIP index, backend slot and generation.
    #[rustfmt::skip]
    const TABLE: [(&str, &str, u16, u8, u32, u32, u32); 6] = [
        ("198.18.0.10:40002", "198.18.1.1", 80, 6, WEB, 1, 2),
        ("198.18.0.10:40000", "198.18.1.1", 80, 6, WEB, 0, 1),
        // On slot 0 under an earlier generation: its backend was removed.
        ("198.18.0.9:5000", "198.18.1.1", 80, 6, WEB, 0, 0),
        ("198.18.0.10:40001", "198.18.1.2", 8080, 6, ANY, 2, 1),
        ("198.18.0.10:40003", "198.18.1.2", 9090, 6, ANY, 2, 1),
        // Index 3 is 198.18.1.1:80/tcp now; this flow's VIP was another, removed.
        ("198.18.0.10:40004", "198.18.1.7", 53, 17, WEB, 1, 2),
    ];

    fn list(filter: Filter, limit: usize) -> Answer {
        let mut l = Listing::new(names(), filter, limit, 100);
        for (client, to, port, proto, vip_id, slot, generation) in TABLE {
            l.add(
                &flow(client, to, port, proto),
                &entry(vip_id, slot, generation),
            );
        }
        l.finish()
    }

    fn clients(a: &Answer) -> Vec<String> {
        a.flows.iter().map(|f| f.client.to_string()).collect()
    }

    #[test]
    fn every_flow_is_listed_in_vip_then_client_order_with_its_backend() {
        let a = list(Filter::default(), 100);
        assert_eq!((a.scanned, a.matched, a.truncated), (6, 6, false));
        assert_eq!(
            clients(&a),
            [
                "198.18.0.9:5000",
                "198.18.0.10:40000",
                "198.18.0.10:40002",
                "198.18.0.10:40001",
                "198.18.0.10:40003",
                "198.18.0.10:40004",
            ]
        );
        let backends: Vec<Option<IpAddr>> = a.flows.iter().map(|f| f.recorded.backend).collect();
        assert_eq!(
            backends,
            [
                None,
                Some(ip("198.18.0.11")),
                Some(ip("198.18.0.12")),
                Some(ip("198.18.0.13")),
                Some(ip("198.18.0.13")),
                // Slot 1 at generation 2 is .12, whatever VIP the entry was for.
                Some(ip("198.18.0.12")),
            ]
        );
        let services: Vec<Option<String>> = a
            .flows
            .iter()
            .map(|f| f.service.map(|s| s.to_string()))
            .collect();
        let web = Some("198.18.1.1:80/tcp".to_owned());
        let any = Some("198.18.1.2:*/tcp".to_owned());
        assert_eq!(
            services,
            [web.clone(), web.clone(), web, any.clone(), any, None]
        );
        assert_eq!(a.flows[3].vip, vip("198.18.1.2:8080/tcp"));
        assert_eq!(a.flows[5].vip, vip("198.18.1.7:53/udp"));
    }

    #[test]
    fn filters_narrow_the_listing_and_the_limit_keeps_the_first() {
        let web = Filter {
            vip: Some((WEB, None)),
            ..Filter::default()
        };
        // The flow of a removed VIP under a reused index is not the new VIP's.
        assert_eq!(
            clients(&list(web, 100)),
            ["198.18.0.9:5000", "198.18.0.10:40000", "198.18.0.10:40002"]
        );
        let port = Filter {
            vip: Some((ANY, Some(9090))),
            ..Filter::default()
        };
        assert_eq!(clients(&list(port, 100)), ["198.18.0.10:40003"]);
        let on_12 = Filter {
            backend: Some(ip("198.18.0.12")),
            ..Filter::default()
        };
        assert_eq!(
            clients(&list(on_12, 100)),
            ["198.18.0.10:40002", "198.18.0.10:40004"]
        );
        let both = Filter {
            vip: Some((WEB, None)),
            backend: Some(ip("198.18.0.12")),
            ..Filter::default()
        };
        assert_eq!(clients(&list(both, 100)), ["198.18.0.10:40002"]);
        let from_9 = Filter {
            client: Some("198.18.0.9/32".parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(clients(&list(from_9, 100)), ["198.18.0.9:5000"]);
        let net = Filter {
            client: Some("198.18.0.0/28".parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(list(net, 100).matched, 6);
        let a = list(Filter::default(), 2);
        assert_eq!((a.matched, a.truncated), (6, true));
        assert_eq!(clients(&a), ["198.18.0.9:5000", "198.18.0.10:40000"]);
    }

    fn forget(filter: Filter) -> (Vec<String>, Vec<(u32, u32)>) {
        let mut f = Forgetting::new(names(), filter, 100);
        for (client, to, port, proto, vip_id, slot, generation) in TABLE {
            f.add(
                &flow(client, to, port, proto),
                &entry(vip_id, slot, generation),
            );
        }
        let mut keys: Vec<String> = f
            .keys()
            .iter()
            .map(|k| {
                let ip = lb_common::addr::from_words(k.src, k.family).unwrap();
                SocketAddr::new(ip, u16::from_be(k.sport_be)).to_string()
            })
            .collect();
        keys.sort();
        let answer = f.finish(1);
        assert_eq!(answer.scanned, TABLE.len() as u64);
        assert_eq!(answer.matched, keys.len() as u64);
        (keys, f.slots().iter().copied().collect())
    }

    /// Only a matching flow that holds a count (counted, not closed) asks for a recount.
    #[test]
    fn forgetting_says_whether_a_count_is_left_behind() {
        let web = Filter {
            vip: Some((WEB, None)),
            ..Filter::default()
        };
        let (client, to, port, proto, vip_id, slot, generation) = TABLE[0];
        let with_flags = |flags: u32| {
            let mut f = Forgetting::new(names(), web.clone(), 100);
            let e = ConnEntry {
                flags,
                ..entry(vip_id, slot, generation)
            };
            f.add(&flow(client, to, port, proto), &e);
            assert_eq!(f.keys().len(), 1, "the flow matches");
            f.counted_open()
        };
        assert!(!with_flags(0), "not counted");
        assert!(with_flags(CONN_F_COUNTED), "counted and open");
        assert!(
            !with_flags(CONN_F_COUNTED | CONN_F_CLOSED),
            "its client closed it: the count went back already"
        );
    }

    /// `idle_over_s` keeps the flows idle for longer, and leaves out entries never stamped
    /// (their idle time is not known).
    #[test]
    fn the_idle_filter_keeps_flows_idle_for_longer() {
        let idle = |over: u32| {
            let mut f = Forgetting::new(
                names(),
                Filter {
                    vip: Some((WEB, None)),
                    idle_over_s: Some(over),
                    ..Filter::default()
                },
                1000,
            );
            let clients = [
                "198.18.0.10:41000",
                "198.18.0.10:41001",
                "198.18.0.10:41002",
                "198.18.0.10:41003",
            ];
            for (client, seen_s) in clients.into_iter().zip([0, 400, 990, 1000]) {
                let (_, to, port, proto, vip_id, slot, generation) = TABLE[0];
                let e = ConnEntry {
                    seen_s,
                    ..entry(vip_id, slot, generation)
                };
                f.add(&flow(client, to, port, proto), &e);
            }
            f.keys().len()
        };
        // Idle 600, 10 and 0 s; the unstamped one never counts.
        assert_eq!(idle(5), 2);
        assert_eq!(idle(100), 1);
        assert_eq!(idle(600), 0);
    }

    #[test]
    fn forgetting_takes_every_match_and_the_slots_it_was_on() {
        // No limit: every flow of the VIP, with the slots at the generations recorded.
        let web = Filter {
            vip: Some((WEB, None)),
            ..Filter::default()
        };
        assert_eq!(
            forget(web),
            (
                vec![
                    "198.18.0.10:40000".to_owned(),
                    "198.18.0.10:40002".to_owned(),
                    "198.18.0.9:5000".to_owned(),
                ],
                vec![(0, 0), (0, 1), (1, 2)]
            )
        );
        // Clients outside a VIP's new list: 198.18.0.9 is in none of the prefixes.
        let cut = Filter {
            vip: Some((WEB, None)),
            outside: Some(vec![
                "198.18.0.10/32".parse().unwrap(),
                "198.19.0.0/16".parse().unwrap(),
            ]),
            ..Filter::default()
        };
        assert_eq!(
            forget(cut),
            (vec!["198.18.0.9:5000".to_owned()], vec![(0, 0)])
        );
        // An empty list leaves every client outside.
        let none = Filter {
            vip: Some((ANY, None)),
            outside: Some(Vec::new()),
            ..Filter::default()
        };
        assert_eq!(forget(none).0.len(), 2);
        let on_13 = Filter {
            backend: Some(ip("198.18.0.13")),
            client: Some("198.18.0.10/32".parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(
            forget(on_13),
            (
                vec![
                    "198.18.0.10:40001".to_owned(),
                    "198.18.0.10:40003".to_owned()
                ],
                vec![(2, 1)]
            )
        );
    }

    #[test]
    fn an_entry_says_whether_it_counts_and_keys_of_no_known_protocol_are_skipped() {
        let mut l = Listing::new(names(), Filter::default(), 10, 100);
        let counted = ConnEntry {
            flags: CONN_F_COUNTED | CONN_F_CLOSED,
            seen_s: 97,
            ..entry(WEB, 0, 1)
        };
        l.add(&flow("198.18.0.10:1", "198.18.1.1", 80, 6), &counted);
        l.add(
            &flow("198.18.0.10:2", "198.18.1.1", 80, 1),
            &entry(WEB, 0, 1),
        );
        let a = l.finish();
        assert_eq!((a.scanned, a.matched), (2, 1));
        assert_eq!(
            a.flows[0].recorded,
            Recorded {
                backend: Some(ip("198.18.0.11")),
                counted: true,
                closed: true,
                idle_s: Some(3),
            }
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json["flows"][0],
            serde_json::json!({"client": "198.18.0.10:1", "vip": "198.18.1.1:80/tcp",
                "service": "198.18.1.1:80/tcp", "backend": "198.18.0.11", "counted": true,
                "closed": true, "idle_s": 3})
        );
    }

    #[test]
    fn the_limit_is_checked() {
        assert_eq!(check_limit(None), Ok(DEFAULT_LIMIT as usize));
        assert_eq!(check_limit(Some(1)), Ok(1));
        assert_eq!(check_limit(Some(MAX_LIMIT)), Ok(MAX_LIMIT as usize));
        assert!(check_limit(Some(0)).is_err());
        assert!(check_limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
