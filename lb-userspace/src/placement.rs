//! Where a client's flow to a VIP goes, decided as the data plane decides it: the answer to
//! the control socket's `flow` op, for the operator asking "which backend serves this
//! client?" (a user reports errors, a backend's logs must be found).
//!
//! Pure: it reads the VIP's state as the core holds it, the flow's connection-table entry
//! if any, and the backends' active-flow counts, and mirrors `select.rs` (the table first:
//! the flow cache never disagrees with it; then the scheduler).

use std::net::IpAddr;

use lb_common::{
    flow::FlowKey,
    hash::{flow_hash, next_probe, src_hash, SECOND_CHOICE_PROBES},
    maps::{
        ConnEntry, CONN_F_CLOSED, CONN_F_COUNTED, VIP_F_LEAST_CONN, VIP_F_SEQUENCE, VIP_F_SRC_HASH,
    },
};
use serde::Serialize;

use crate::core::{BackendState, VipState};

/// What the connection table holds for the flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// The backend it was recorded with; `None` when that slot no longer holds it (the
    /// backend was removed, its slot perhaps reused).
    pub backend: Option<IpAddr>,
    /// Counted for least connection.
    pub counted: bool,
    /// The client closed it (FIN/RST seen); its count went back.
    pub closed: bool,
    /// Seconds since the flow's last packet went through the table (a flow that sends
    /// goes there at least once a second; idle counted flows stop counting); `None` for an
    /// entry never stamped (recorded by a daemon that stamped counted flows only).
    pub idle_s: Option<u32>,
}

impl Recorded {
    /// What entry `e` says, its backend `backend` (resolved by the caller: the slot's
    /// holder if its generation is the entry's), at `now_s` (the clock of
    /// `ConnEntry::seen_s`).
    pub fn of(e: &ConnEntry, backend: Option<IpAddr>, now_s: u32) -> Self {
        let counted = e.flags & CONN_F_COUNTED != 0;
        Self {
            backend,
            counted,
            closed: e.flags & CONN_F_CLOSED != 0,
            idle_s: (e.seen_s != 0).then(|| now_s.saturating_sub(e.seen_s)),
        }
    }
}

/// Where the flow's next packet goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Next {
    /// How it is decided: `recorded` (the table's entry), `hash` (the VIP's lookup table
    /// at the flow's hash), `less_loaded` (the candidate with fewer active flows per unit
    /// of weight, as of now), `round_robin` (the VIP's cursor: not known in advance),
    /// `no_backend` or `source_denied` (the packet would be dropped: no backend takes new
    /// flows, or the client is outside the VIP's `allowed_sources`).
    pub how: &'static str,
    /// The backend, when known.
    pub backend: Option<IpAddr>,
    /// Least connection's two candidates (one when the table holds one backend).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<IpAddr>,
}

/// The flow's entry and its next packet's backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The connection-table entry, if the flow has one.
    pub recorded: Option<Recorded>,
    /// Where the next packet (not a SYN) goes.
    pub next: Next,
}

/// Places `flow` (client → VIP) on `vip`: `entry` is its connection-table entry, `active`
/// a backend slot's active-flow count, `now_s` the clock of `ConnEntry::seen_s`.
pub fn place(
    vip: &VipState,
    flow: &FlowKey,
    entry: Option<ConnEntry>,
    active: impl Fn(u32) -> u64,
    now_s: u32,
) -> Placement {
    // The entry's backend, if its slot still holds the backend it was recorded with.
    let on = entry.and_then(|e| slot(vip, e.backend).filter(|(_, b)| b.generation == e.generation));
    let recorded = entry.map(|e| Recorded::of(&e, on.map(|(a, _)| *a), now_s));
    // A recorded flow stays while its backend is usable (select.rs, `recorded`).
    let next = match on.filter(|(_, b)| b.active()) {
        Some((addr, _)) => Next {
            how: "recorded",
            backend: Some(*addr),
            candidates: Vec::new(),
        },
        // The data plane admits a new flow before it schedules it.
        None if !admitted(vip, flow) => Next {
            how: "source_denied",
            backend: None,
            candidates: Vec::new(),
        },
        None => schedule(vip, flow, active),
    };
    Placement { recorded, next }
}

/// Whether `vip` admits new flows from the flow's client (`allowed_sources`: empty admits
/// every client).
fn admitted(vip: &VipState, flow: &FlowKey) -> bool {
    let sources = &vip.config.allowed_sources;
    sources.is_empty()
        || lb_common::addr::from_words(flow.src, flow.family)
            .is_some_and(|client| sources.iter().any(|p| p.contains(client)))
}

/// The backend in data-plane slot `idx` of `vip`.
fn slot(vip: &VipState, idx: u32) -> Option<(&IpAddr, &BackendState)> {
    vip.backends.iter().find(|(_, b)| b.index == idx)
}

/// What the VIP's scheduler picks for a flow the table does not pin (select.rs, `pick`).
fn schedule(vip: &VipState, flow: &FlowKey, active: impl Fn(u32) -> u64) -> Next {
    let flags = crate::sched::flags(vip.config.scheduler);
    let table = vip.table();
    let next = |how, backend, candidates| Next {
        how,
        backend,
        candidates,
    };
    if table.is_empty() {
        return next("no_backend", None, Vec::new());
    }
    if flags & VIP_F_SEQUENCE != 0 {
        return next("round_robin", None, Vec::new());
    }
    let hash = if flags & VIP_F_SRC_HASH != 0 {
        src_hash(flow)
    } else {
        flow_hash(flow)
    };
    let at = |h: u32| table[(h % table.len() as u32) as usize];
    let first = at(hash);
    let Some((first_addr, first_b)) = slot(vip, first) else {
        return next("no_backend", None, Vec::new());
    };
    if flags & VIP_F_LEAST_CONN == 0 {
        return next("hash", Some(*first_addr), Vec::new());
    }
    let mut h = hash;
    let second = (0..SECOND_CHOICE_PROBES)
        .map(|_| {
            h = next_probe(h);
            at(h)
        })
        .find(|&c| c != first)
        .and_then(|c| slot(vip, c));
    // At its `max_conns`, a backend takes no new flow (select.rs, `load`).
    let full = |b: &BackendState| b.max_conns.is_some_and(|m| active(b.index) >= u64::from(m));
    let Some((second_addr, second_b)) = second else {
        if full(first_b) {
            return next("backends_full", None, vec![*first_addr]);
        }
        return next("less_loaded", Some(*first_addr), vec![*first_addr]);
    };
    // a / wa <= b / wb without division, weights as the data plane holds them.
    let weight = |b: &BackendState| u64::from(b.effective_weight().max(1));
    let (a, b) = (active(first_b.index), active(second_b.index));
    let first_lighter =
        full(second_b) || (!full(first_b) && a * weight(second_b) <= b * weight(first_b));
    let candidates = vec![*first_addr, *second_addr];
    if !full(first_b) || !full(second_b) {
        let winner = if first_lighter {
            first_addr
        } else {
            second_addr
        };
        return next("less_loaded", Some(*winner), candidates);
    }
    // Both full: the flow's next hashes, from the start, for one with room.
    let mut h = hash;
    let room = (0..2 * SECOND_CHOICE_PROBES)
        .map(|_| {
            h = next_probe(h);
            at(h)
        })
        .filter_map(|c| slot(vip, c))
        .find(|(_, b)| !full(b));
    match room {
        Some((addr, _)) => next("less_loaded", Some(*addr), candidates),
        None => next("backends_full", None, candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::VipId,
        core::{recorder_core, Core},
        dataplane::Recorder,
    };

    const B1: &str = "198.18.0.11";
    const B2: &str = "198.18.0.12";

    /// A core with one VIP of `scheduler` over B1 and B2.
    fn core(scheduler: &str) -> (Core<Recorder>, VipId) {
        let core = recorder_core(&format!(
            r#"{{"vips": [{{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "{scheduler}",
                 "backends": [{{"address": "{B1}"}}, {{"address": "{B2}"}}]}}]}}"#
        ));
        let id = "198.18.1.1:80/tcp".parse().unwrap();
        (core, id)
    }

    fn key(sport: u16) -> FlowKey {
        let ip = |a: &str| a.parse().unwrap();
        FlowKey::between(ip("198.18.0.10"), sport, ip("198.18.1.1"), 80, 6)
    }

    /// A connection-table entry on `addr` as `core` holds it now.
    fn entry(core: &Core<Recorder>, id: &VipId, addr: &str, flags: u32, seen_s: u32) -> ConnEntry {
        let b = &core.vip(id).unwrap().backends[&addr.parse().unwrap()];
        ConnEntry {
            backend: b.index,
            generation: b.generation,
            flags,
            seen_s,
            ..ConnEntry::default()
        }
    }

    fn ip(a: &str) -> Option<IpAddr> {
        Some(a.parse().unwrap())
    }

    #[test]
    fn a_recorded_flow_stays_while_its_backend_is_up_even_drained() {
        let (mut core, id) = core("maglev");
        let e = entry(&core, &id, B1, 0, 0);
        core.set_drained(&id, B1.parse().unwrap(), true).unwrap();
        let p = place(core.vip(&id).unwrap(), &key(1), Some(e), |_| 0, 100);
        assert_eq!(p.next.how, "recorded");
        assert_eq!(p.next.backend, ip(B1));
        let r = p.recorded.unwrap();
        assert_eq!((r.backend, r.counted, r.idle_s), (ip(B1), false, None));
    }

    #[test]
    fn a_flow_whose_backend_is_down_goes_to_the_scheduler_and_keeps_its_entry() {
        let (mut core, id) = core("maglev");
        let e = entry(&core, &id, B1, CONN_F_COUNTED | CONN_F_CLOSED, 90);
        core.set_health(&id, B1.parse().unwrap(), false).unwrap();
        let p = place(core.vip(&id).unwrap(), &key(1), Some(e), |_| 0, 100);
        // B1 is out of the table: every slot is B2's.
        assert_eq!((p.next.how, p.next.backend), ("hash", ip(B2)));
        let r = p.recorded.unwrap();
        assert_eq!(r.backend, ip(B1), "the entry still names its backend");
        assert!(r.counted && r.closed);
        assert_eq!(r.idle_s, Some(10));
    }

    #[test]
    fn a_client_outside_the_allow_list_is_dropped_unless_recorded() {
        let (mut core, id) = core("maglev");
        let e = entry(&core, &id, B1, 0, 0);
        core.set_sources(&id, vec!["198.19.0.0/16".parse().unwrap()])
            .unwrap();
        let p = place(core.vip(&id).unwrap(), &key(1), None, |_| 0, 0);
        assert_eq!((p.next.how, p.next.backend), ("source_denied", None));
        let p = place(core.vip(&id).unwrap(), &key(1), Some(e), |_| 0, 0);
        assert_eq!((p.next.how, p.next.backend), ("recorded", ip(B1)));
        core.set_sources(&id, vec!["198.18.0.0/24".parse().unwrap()])
            .unwrap();
        let p = place(core.vip(&id).unwrap(), &key(1), None, |_| 0, 0);
        assert_eq!(p.next.how, "hash");
    }

    #[test]
    fn an_entry_from_a_removed_backend_names_none() {
        let (mut core, id) = core("maglev");
        let e = entry(&core, &id, B1, 0, 0);
        core.remove_backend(&id, B1.parse().unwrap()).unwrap();
        let p = place(core.vip(&id).unwrap(), &key(1), Some(e), |_| 0, 0);
        assert_eq!(p.recorded.unwrap().backend, None);
        assert_eq!(p.next.backend, ip(B2));
    }

    #[test]
    fn no_backend_up_means_no_backend() {
        let (mut core, id) = core("maglev");
        for b in [B1, B2] {
            core.set_health(&id, b.parse().unwrap(), false).unwrap();
        }
        let p = place(core.vip(&id).unwrap(), &key(1), None, |_| 0, 0);
        assert_eq!((p.next.how, p.next.backend), ("no_backend", None));
    }

    /// B1's and B2's slots in `vip`, and a client port whose flow has both as candidates
    /// (8 probes; two backends: some flow does).
    fn two_candidates(vip: &VipState) -> (u32, u32, u16) {
        let idx = |a: &str| vip.backends[&a.parse().unwrap()].index;
        let sport = (1..100)
            .find(|&s| place(vip, &key(s), None, |_| 0, 0).next.candidates.len() == 2)
            .expect("a flow with two candidates");
        (idx(B1), idx(B2), sport)
    }

    #[test]
    fn least_connection_names_both_candidates_and_the_less_loaded_wins() {
        let (core, id) = core("lc");
        let vip = core.vip(&id).unwrap();
        let (i1, i2, sport) = two_candidates(vip);
        let busy = |busy: u32| move |i: u32| if i == busy { 5 } else { 1 };
        assert_eq!(
            place(vip, &key(sport), None, busy(i1), 0).next.backend,
            ip(B2)
        );
        assert_eq!(
            place(vip, &key(sport), None, busy(i2), 0).next.backend,
            ip(B1)
        );
    }

    /// With `max_conns`, a full backend loses to one with room however loaded that one is,
    /// and with both full the flow has nowhere to go.
    #[test]
    fn least_connection_skips_backends_at_their_limit() {
        let (mut core, id) = core("lc");
        for b in [B1, B2] {
            core.set_max_conns(&id, b.parse().unwrap(), Some(4))
                .unwrap();
        }
        let vip = core.vip(&id).unwrap();
        let (i1, i2, sport) = two_candidates(vip);
        // B1 at its limit of 4 and B2 under it, though busier than B1 would be: B2.
        let counts = |a: u64, b: u64| {
            move |i: u32| {
                if i == i1 {
                    a
                } else if i == i2 {
                    b
                } else {
                    0
                }
            }
        };
        assert_eq!(
            place(vip, &key(sport), None, counts(4, 3), 0).next.backend,
            ip(B2)
        );
        assert_eq!(
            place(vip, &key(sport), None, counts(1, 4), 0).next.backend,
            ip(B1)
        );
        let full = place(vip, &key(sport), None, counts(4, 9), 0).next;
        assert_eq!((full.how, full.backend), ("backends_full", None));
    }

    #[test]
    fn round_robin_is_not_known_in_advance() {
        let (core, id) = core("rr");
        let p = place(core.vip(&id).unwrap(), &key(1), None, |_| 0, 0);
        assert_eq!((p.next.how, p.next.backend), ("round_robin", None));
    }
}
