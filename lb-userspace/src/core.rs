//! The pure core: VIPs, backends, their state, and how that state becomes data-plane writes.
//!
//! It knows nothing of BPF: it writes through a [`Dataplane`], so it is unit-tested with a
//! recorder. Every operation validates first and changes nothing when it refuses.
//!
//! Ordering rules that keep packets safe while maps change (no packet ever sees a
//! half-written table or a backend that is not ready):
//! - A lookup table is written into the VIP's *inactive* table, then one `VIPS` update flips
//!   `table_id` to it (double buffering).
//! - A backend slot is written (active) before any table can point at it, and deactivated
//!   only after the tables no longer do.
//! - Backend indices are handed out first-in first-out from a free list, so an index freed
//!   now is the last to be reused: a stale connection-table entry for it has aged out of the
//!   LRU long before.
//! - All backends of a VIP down: the table is empty and new flows are dropped and counted
//!   (`no_backend`); flows pinned to backends that are still active keep flowing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{
    addr::to_words,
    maps::{
        Backend, FlowLimits, LbConfig, LimitedFlows, TrafficStats, VipInfo, VipKey,
        BACKEND_F_ACTIVE, BACKEND_F_GUE, BACKEND_F_NEXTHOP, BACKEND_F_NO_NEW, CFG_F_ALL_PORTS,
        CFG_F_ICMP_ECHO, CFG_F_ICMP_TOO_BIG, DEFAULT_TABLE_SIZE, MAX_BACKENDS, PROTO_ANY,
        SOURCE_RANGE_VIP_BITS, VIP_F_ADDR_ONLY, VIP_F_CLIENT_LIMIT, VIP_F_FLOW_LIMIT,
        VIP_F_HASHED_SRC, VIP_F_SRC_RANGES, VIP_F_STATELESS,
    },
    quic::{QuicServer, QuicServerKey},
};
use serde::Serialize;

use crate::{
    config::{
        check_idle_timeout, check_sources, check_weight, BackendConfig, Config, ConfigError, Encap,
        Scheduler, SourceMode, SourcePrefix, VipConfig, VipId,
    },
    dataplane::{Dataplane, DataplaneError},
    health::HealthCheckConfig,
    sched::{self, Member},
};

/// Balancer-wide settings, resolved from the config file and the interface.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// Outer source of IPv4 tunnels.
    pub src_v4: Option<Ipv4Addr>,
    /// Outer source of IPv6 tunnels.
    pub src_v6: Option<Ipv6Addr>,
    /// Flow-hash source prefix and host mask (IPv4).
    pub hashed_v4: Option<(Ipv4Addr, u32)>,
    /// Flow-hash source prefix (IPv6, /96 or shorter).
    pub hashed_v6: Option<Ipv6Addr>,
    /// Largest IP packet towards backends; 0 = unchecked.
    pub mtu: u32,
    /// Answer oversized packets with ICMP.
    pub icmp_too_big: bool,
    /// Answer echo requests to VIP addresses.
    pub icmp_echo: bool,
    /// New flows each CPU records per second; 0 = no limit.
    pub record_rate_limit: u32,
    /// ICMP errors each CPU sends per second; 0 = no limit.
    pub icmp_rate_limit: u32,
    /// VIPs that can have tables (the `LOOKUP` map's size / 2 tables).
    pub max_vips: u32,
    /// Destination port of GUE tunnels.
    pub gue_port: u16,
    /// The interface's own addresses when the balancer started: no all-ports VIP may take
    /// one (see [`Core::check_vip_address`]).
    pub own_addrs: Vec<IpAddr>,
}

impl Settings {
    /// Settings from a validated config, filling the gaps from the interface: its first
    /// address of each family is the outer source, its MTU the link MTU.
    pub fn resolve(cfg: &Config, iface_addrs: &[IpAddr], iface_mtu: u32, max_vips: u32) -> Self {
        let first_v4 = iface_addrs.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let first_v6 = iface_addrs.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        Self {
            src_v4: cfg.outer_source.v4.or(first_v4),
            src_v6: cfg.outer_source.v6.or(first_v6),
            hashed_v4: cfg
                .hashed_source
                .v4
                .as_deref()
                .and_then(|p| crate::config::parse_v4_prefix(p).ok()),
            hashed_v6: cfg
                .hashed_source
                .v6
                .as_deref()
                .and_then(|p| crate::config::parse_v6_prefix(p).ok()),
            mtu: cfg.mtu.unwrap_or(iface_mtu),
            icmp_too_big: cfg.icmp_too_big,
            icmp_echo: cfg.icmp_echo,
            record_rate_limit: cfg.record_rate_limit(),
            icmp_rate_limit: cfg.icmp_rate_limit(),
            max_vips,
            gue_port: cfg.gue_port(),
            own_addrs: iface_addrs.to_vec(),
        }
    }
}

/// A resolved next hop towards a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Our MAC on it.
    pub smac: [u8; 6],
    /// The next hop's MAC.
    pub dmac: [u8; 6],
    /// Largest IP packet the path carries: the route's MTU if it sets one, else the
    /// egress interface's (0: not known; the balancer's own `mtu` alone applies).
    pub mtu: u32,
}

/// Why the core refused an operation. Each has a stable code for the control protocol.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A field is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// No such VIP.
    #[error("unknown VIP {vip}; `xlb status` lists VIPs")]
    UnknownVip {
        /// The VIP asked for.
        vip: VipId,
    },
    /// No such backend on the VIP.
    #[error("VIP {vip} has no backend {backend}")]
    UnknownBackend {
        /// The VIP.
        vip: VipId,
        /// The backend asked for.
        backend: IpAddr,
    },
    /// The VIP exists already.
    #[error("VIP {vip} exists already")]
    VipExists {
        /// The VIP.
        vip: VipId,
    },
    /// The backend exists already.
    #[error("VIP {vip} has backend {backend} already")]
    BackendExists {
        /// The VIP.
        vip: VipId,
        /// The backend.
        backend: IpAddr,
    },
    /// Out of VIP slots.
    #[error("all {max} VIP slots are in use; restart with a larger --max-vips")]
    TooManyVips {
        /// The limit.
        max: u32,
    },
    /// Out of backend slots.
    #[error("all {max} backend slots are in use")]
    TooManyBackends {
        /// The limit.
        max: u32,
    },
    /// A backend of a family we have no tunnel source for.
    #[error("no outer source address for {family} tunnels to {backend}: set outer_source.{family} or give the interface an {family} address")]
    NoSource {
        /// "v4" or "v6".
        family: &'static str,
        /// The backend.
        backend: IpAddr,
    },
    /// The data plane refused a write (state may be partly applied: the daemon logs it).
    #[error("data plane write failed: {0}")]
    Dataplane(#[from] DataplaneError),
}

impl CoreError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::UnknownVip { .. } => "unknown_vip",
            Self::UnknownBackend { .. } => "unknown_backend",
            Self::VipExists { .. } | Self::BackendExists { .. } => "exists",
            Self::TooManyVips { .. } | Self::TooManyBackends { .. } => "capacity",
            Self::NoSource { .. } => "no_source",
            Self::Dataplane(_) => "internal",
        }
    }
}

/// A backend of a VIP as the core tracks it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendState {
    /// Data-plane index (per VIP and backend: each pair has its own counters and state).
    pub index: u32,
    /// Weight.
    pub weight: u32,
    /// Drained by the operator: no new flows.
    pub drained: bool,
    /// Health as the checker last said.
    pub healthy: bool,
    /// Resolved next hop, if any.
    pub nexthop: Option<NextHop>,
    /// The backend's agent says down / maint / fail / stopped (`scheduler: agent`).
    pub agent_down: bool,
    /// The backend's agent says drain.
    pub agent_drain: bool,
    /// A backup (`BackendConfig::backup`): new flows only while no other backend takes
    /// them.
    pub backup: bool,
    /// A backup held back because another backend takes new flows (kept by `publish`).
    pub standby: bool,
    /// Dynamic share of the weight in percent (agent's `NN%`, or `lrt`'s latency factor);
    /// 100 when nothing adjusts it.
    pub factor_pct: u32,
    /// Slow start's share of the weight in percent (`crate::slow_start`), on top of
    /// `factor_pct`; 100 when not ramping.
    pub ramp_pct: u32,
    /// Generation of the data-plane slot (see `Backend::generation`).
    pub generation: u32,
    /// The slot's flow-cache epoch (see `Backend::cache_epoch`).
    pub cache_epoch: u32,
    /// Most active flows it takes under a least-connection scheduler
    /// (`BackendConfig::max_conns`).
    pub max_conns: Option<u32>,
    /// The server ID its QUIC connection IDs carry (`BackendConfig::quic_server_id`).
    pub quic_server_id: Option<u32>,
    /// Tunnelled with GUE (its VIP's `encap`).
    pub gue: bool,
}

impl BackendState {
    /// A newly added backend: healthy until its checks say otherwise, no next hop yet.
    pub(crate) fn new(index: u32, generation: u32, cache_epoch: u32, b: &BackendConfig) -> Self {
        Self {
            index,
            weight: b.weight,
            drained: b.drained,
            healthy: true,
            nexthop: None,
            agent_down: false,
            agent_drain: false,
            backup: b.backup,
            // Set by `Core::new_backend`, kept by `publish`.
            standby: false,
            factor_pct: 100,
            ramp_pct: 100,
            generation,
            cache_epoch,
            max_conns: b.max_conns,
            quic_server_id: b.quic_server_id,
            gue: false,
        }
    }

    /// May carry flows (existing ones, and new ones if in the table).
    pub fn active(&self) -> bool {
        self.healthy && !self.agent_down
    }

    /// Weight after the dynamic factor, in hundredths of a weight unit (weight × percent),
    /// so a 1 % factor still counts on weight 1; then slow start's share of that, rounded
    /// up, so that a ramping backend never drops to 0. 0 takes no new flows.
    pub fn effective_weight(&self) -> u32 {
        let w = self.weight * self.factor_pct;
        if self.ramp_pct >= 100 {
            w
        } else {
            (w * self.ramp_pct).div_ceil(100)
        }
    }

    /// Could take new flows, backup or not.
    fn eligible(&self) -> bool {
        self.active() && !self.drained && !self.agent_drain && self.effective_weight() > 0
    }

    /// Takes new flows.
    pub fn in_table(&self) -> bool {
        self.eligible() && !self.standby
    }
}

/// What a backend's agent last reported (HAProxy agent-check words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// `down`, `maint`, `fail` or `stopped`.
    pub down: bool,
    /// `drain`.
    pub drain: bool,
    /// `NN%`, if given.
    pub pct: Option<u32>,
}

/// A VIP as the core tracks it.
#[derive(Clone, Debug)]
pub struct VipState {
    /// Its definition (`backends` kept empty: see `backends` below).
    pub config: VipConfig,
    /// Index into per-VIP counters; owns tables `2·id` and `2·id + 1`.
    pub id: u32,
    /// Backends by address.
    pub backends: BTreeMap<IpAddr, BackendState>,
    /// Which of the two tables is live (0 or 1).
    active: u32,
    /// What each of the two tables holds, to write only the slots that change.
    shadow: [Vec<u32>; 2],
    /// Traffic of backends removed from this VIP (their last figures): the data plane
    /// counts per backend slot only, and slots are reused.
    retired: TrafficStats,
}

impl VipState {
    /// The VIP's traffic: what its backends carried, removed ones included.
    /// New flows the VIP's limits turned away.
    pub fn limited<D: Dataplane>(&self, dp: &D) -> LimitedFlows {
        dp.limited(self.id)
    }

    pub fn traffic<D: Dataplane>(&self, dp: &D) -> TrafficStats {
        self.backends
            .values()
            .fold(self.retired, |acc, b| acc + dp.backend(b.index))
    }

    /// The VIP as a config file would give it: its definition, with its backends as they
    /// run now (weights, drains and backups set at runtime included).
    pub fn running_config(&self) -> VipConfig {
        let mut cfg = self.config.clone();
        cfg.backends = self
            .backends
            .iter()
            .map(|(a, b)| BackendConfig {
                max_conns: b.max_conns,
                quic_server_id: b.quic_server_id,
                address: *a,
                weight: b.weight,
                drained: b.drained,
                backup: b.backup,
            })
            .collect();
        cfg
    }

    /// Slots of the live table per backend index (for status and tests).
    pub fn table(&self) -> &[u32] {
        &self.shadow[self.active as usize]
    }
}

/// What [`Core::capacity`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// VIP ids free.
    pub free_vips: usize,
    /// VIPs the balancer holds.
    pub max_vips: u32,
    /// Backend slots free.
    pub free_backends: usize,
    /// Backend slots the balancer holds.
    pub max_backends: u32,
}

/// FIFO pool of small integer ids.
#[derive(Debug)]
struct Pool {
    free: VecDeque<u32>,
    max: u32,
}

impl Pool {
    fn new(range: std::ops::Range<u32>) -> Self {
        Self {
            max: range.end - range.start,
            free: range.collect(),
        }
    }
}

/// The core.
pub struct Core<D: Dataplane> {
    dp: D,
    settings: Settings,
    vips: BTreeMap<VipId, VipState>,
    vip_ids: Pool,
    backend_ids: Pool,
    /// Per backend slot: how many times it was handed out (`Backend::generation`).
    generations: Vec<u32>,
    /// Per backend slot: its `Backend::cache_epoch`, bumped when the slot is handed out and
    /// when its backend takes new flows again.
    cache_epochs: Vec<u32>,
    /// The last daemon's backend slots whose connection tables this core inherits
    /// (`--state-dir`): (VIP tag, address) → (index, generation), until each slot is handed
    /// out again.
    inherited: HashMap<(u32, IpAddr), (u32, u32)>,
    /// Inherited slots whose backend was down under the last daemon (`inherit_down`).
    inherited_down: std::collections::HashSet<(u32, IpAddr)>,
    /// VIP address → number of VIPs on it (address-only markers).
    addr_refs: BTreeMap<IpAddr, u32>,
    /// Interfaces registered in `TX_PORTS` for next hops.
    tx_ports: BTreeSet<u32>,
    /// Whether the data plane's config has `CFG_F_ALL_PORTS` (some VIP serves every port).
    all_ports: bool,
    /// What `SOURCE_RANGES` holds, by VIP index: written entries stay listed until a
    /// removal succeeds, so that a VIP given the index next never admits a leftover.
    source_ranges: BTreeMap<u32, BTreeSet<RangeKey>>,
    /// What `QUIC_SERVERS` holds, by VIP index and server ID: as `source_ranges`, written
    /// entries stay listed until a removal succeeds.
    quic_servers: BTreeMap<u32, BTreeMap<u32, QuicServer>>,
}

/// A `SOURCE_RANGES` key: prefix length (VIP id bits included) and data.
pub(crate) type RangeKey = (u32, lb_common::maps::SourceRange);

/// The `SOURCE_RANGES` keys that admit `sources` to VIP index `vip_id`.
pub(crate) fn range_keys(vip_id: u32, sources: &[SourcePrefix]) -> BTreeSet<RangeKey> {
    sources
        .iter()
        .map(|p| {
            let (addr, _) = to_words(p.addr);
            (
                SOURCE_RANGE_VIP_BITS + u32::from(p.len),
                lb_common::maps::SourceRange { vip_id, addr },
            )
        })
        .collect()
}

pub(crate) fn vip_key(id: &VipId) -> VipKey {
    let (addr, family) = to_words(id.address);
    VipKey {
        addr,
        port_be: id.port.to_be(),
        proto: id.protocol.number(),
        family,
    }
}

fn marker_key(addr: IpAddr) -> VipKey {
    let (addr, family) = to_words(addr);
    VipKey {
        addr,
        port_be: 0,
        proto: PROTO_ANY,
        family,
    }
}

fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "v4"
    } else {
        "v6"
    }
}

impl<D: Dataplane> Core<D> {
    /// A core with no VIPs; writes the balancer-wide settings.
    pub fn new(mut dp: D, settings: Settings) -> Result<Self, CoreError> {
        dp.set_config(&lb_config(&settings))?;
        Ok(Self {
            dp,
            vip_ids: Pool::new(0..settings.max_vips),
            backend_ids: Pool::new(1..MAX_BACKENDS),
            generations: vec![0; MAX_BACKENDS as usize],
            cache_epochs: vec![0; MAX_BACKENDS as usize],
            inherited: HashMap::new(),
            inherited_down: std::collections::HashSet::new(),
            settings,
            vips: BTreeMap::new(),
            addr_refs: BTreeMap::new(),
            tx_ports: Default::default(),
            all_ports: false,
            source_ranges: BTreeMap::new(),
            quic_servers: BTreeMap::new(),
        })
    }

    /// Takes over the backend slots of a previous daemon whose connection tables the data
    /// plane kept (index → VIP tag, address, generation): a backend of the same VIP and
    /// address gets its old slot and generation back, so its recorded flows stay; other
    /// backends get other slots while there are any, and a slot given to another backend
    /// gets a newer generation, so flows recorded for the old holder are re-picked rather
    /// than sent elsewhere. Call before [`Core::apply`].
    pub fn inherit_slots(&mut self, slots: &HashMap<u32, (u32, IpAddr, u32)>) {
        for (&index, &(tag, addr, generation)) in slots {
            if let Some(g) = self.generations.get_mut(index as usize) {
                *g = (*g).max(generation);
                self.inherited.insert((tag, addr), (index, generation));
            }
        }
    }

    /// The (VIP tag, address) pairs of inherited slots whose backend carried no flows when
    /// the last daemon stopped (`state_dir::Inherited::down`): such a backend, back in its
    /// slot, starts down rather than healthy, so that a restart does not send it new flows
    /// until its health check has passed `rise` times (the daemon starts its check from this
    /// verdict).
    pub fn inherit_down(&mut self, down: std::collections::HashSet<(u32, IpAddr)>) {
        self.inherited_down = down;
    }

    /// Adds every VIP of a validated config.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), CoreError> {
        for vip in &cfg.vips {
            self.add_vip(vip.clone())?;
        }
        Ok(())
    }

    /// The data plane (tests read the recorder through this).
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// The data plane, for tests that stage what it reports.
    #[cfg(test)]
    fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// All VIPs.
    pub fn vips(&self) -> impl Iterator<Item = &VipState> {
        self.vips.values()
    }

    /// One VIP.
    pub fn vip(&self, id: &VipId) -> Result<&VipState, CoreError> {
        self.vips.get(id).ok_or(CoreError::UnknownVip { vip: *id })
    }

    /// Whether `addr` can be a backend of a VIP configured as `vip`: an outer source of its
    /// family, a hashed one for `flow_hash`, and for an IPv6 VIP an MTU that carries the
    /// smallest packet IPv6 allows in the tunnel (what adding it checks first).
    /// An all-ports VIP (port 0) on one of the balancer's own addresses (its interface's,
    /// or an outer source) would take every TCP or UDP packet to the host at that address
    /// before its stack sees it, SSH and the daemon's own health checks' answers included:
    /// refused. A VIP on one port of it is fine (a single-address host serving 443 through
    /// the VIP keeps SSH on 22).
    pub fn check_vip_address(&self, vip: &VipConfig) -> Result<(), CoreError> {
        let s = &self.settings;
        let own = s.own_addrs.contains(&vip.address)
            || s.src_v4.map(IpAddr::V4) == Some(vip.address)
            || s.src_v6.map(IpAddr::V6) == Some(vip.address);
        if vip.port == 0 && own {
            return Err(ConfigError::new(
                "address",
                format!(
                    "{} is the balancer's own address: a VIP on all its ports would take every {} packet to this host there (SSH, the health checks' answers); give the VIP an address of its own, or a port",
                    vip.address,
                    vip.protocol.to_string().to_uppercase()
                ),
            )
            .into());
        }
        Ok(())
    }

    pub fn check_backend(&self, vip: &VipConfig, addr: &IpAddr) -> Result<(), CoreError> {
        self.check_backend_at(vip, addr, self.settings.mtu)
    }

    /// [`Core::check_backend`] under the MTU `mtu` rather than the one in force (a
    /// reload's checks, when the reload changes it before adding the backend).
    pub fn check_backend_at(
        &self,
        vip: &VipConfig,
        addr: &IpAddr,
        mtu: u32,
    ) -> Result<(), CoreError> {
        self.check_source(addr)?;
        self.check_hashed_source(vip, addr)?;
        self.check_ipv6_minimum(vip, addr, mtu)
    }

    /// IPv6 senders never go below 1280 bytes (RFC 8200, RFC 8201), so an MTU (`mtu`: the
    /// balancer's, 0 unchecked) that cannot carry a 1280-byte packet in a backend's tunnel
    /// would answer its retries with the same "packet too big" for ever: such a VIP is
    /// refused rather than black-holed, and so is an MTU that would do that to one.
    pub fn check_ipv6_minimum(
        &self,
        vip: &VipConfig,
        backend: &IpAddr,
        mtu: u32,
    ) -> Result<(), CoreError> {
        let Some(needed) = ipv6_minimum_unmet(vip.address, *backend, mtu) else {
            return Ok(());
        };
        Err(ConfigError::new(
            "mtu",
            format!(
                "{mtu} cannot carry a 1280-byte IPv6 packet (the least IPv6 allows) from VIP {} \
                 to backend {backend} in its tunnel: needs at least {needed}",
                vip.address,
            ),
        )
        .into())
    }

    /// Free VIP ids and backend slots, and the limits the errors name.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            free_vips: self.vip_ids.free.len(),
            max_vips: self.vip_ids.max,
            free_backends: self.backend_ids.free.len(),
            max_backends: self.backend_ids.max,
        }
    }

    fn check_source(&self, backend: &IpAddr) -> Result<(), CoreError> {
        let ok = match backend {
            IpAddr::V4(_) => self.settings.src_v4.is_some(),
            IpAddr::V6(_) => self.settings.src_v6.is_some(),
        };
        if ok {
            Ok(())
        } else {
            Err(CoreError::NoSource {
                family: family_name(backend),
                backend: *backend,
            })
        }
    }

    fn check_hashed_source(&self, vip: &VipConfig, backend: &IpAddr) -> Result<(), CoreError> {
        if vip.source != SourceMode::FlowHash {
            return Ok(());
        }
        let ok = match backend {
            IpAddr::V4(_) => self.settings.hashed_v4.is_some(),
            IpAddr::V6(_) => self.settings.hashed_v6.is_some(),
        };
        if ok {
            return Ok(());
        }
        Err(ConfigError::new(
            "source",
            format!(
                "flow_hash needs hashed_source.{} for backend {backend}",
                family_name(backend)
            ),
        )
        .into())
    }

    /// Adds a VIP with its backends (all healthy until a health check says otherwise).
    pub fn add_vip(&mut self, mut cfg: VipConfig) -> Result<(), CoreError> {
        cfg.validate("vip")?;
        let id = cfg.id();
        if self.vips.contains_key(&id) {
            return Err(CoreError::VipExists { vip: id });
        }
        self.check_vip_address(&cfg)?;
        for b in &cfg.backends {
            self.check_backend(&cfg, &b.address)?;
        }
        if self.vip_ids.free.is_empty() {
            return Err(CoreError::TooManyVips {
                max: self.vip_ids.max,
            });
        }
        if self.backend_ids.free.len() < cfg.backends.len() {
            return Err(CoreError::TooManyBackends {
                max: self.backend_ids.max,
            });
        }
        // Validated: from here on only data-plane failures can stop us.
        let vip_index = self
            .vip_ids
            .free
            .pop_front()
            .ok_or(CoreError::TooManyVips {
                max: self.vip_ids.max,
            })?;
        // The slot's counts of turned-away flows belong to whichever VIP had it before.
        if let Err(e) = self.dp.clear_limited(vip_index) {
            self.vip_ids.free.push_front(vip_index);
            return Err(e.into());
        }
        let backends_cfg = std::mem::take(&mut cfg.backends);
        let mut state = VipState {
            config: cfg,
            id: vip_index,
            backends: BTreeMap::new(),
            active: 1,
            shadow: [Vec::new(), Vec::new()],
            // What the last daemon recorded (`--state-dir`), or nothing.
            retired: self.dp.retired(&vip_key(&id)),
        };
        let mut result = Ok(());
        // New backends start healthy: the backups wait if a regular one can take new flows.
        let others_serve = backends_cfg
            .iter()
            .any(|b| !b.backup && !b.drained && b.weight > 0);
        for b in backends_cfg {
            match self.new_backend(&id, &b, state.config.encap, others_serve, 100) {
                Ok(bs) => {
                    state.backends.insert(b.address, bs);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let refs = self.addr_refs.entry(id.address).or_insert(0);
        *refs += 1;
        if result.is_ok() && *refs == 1 {
            let marker = VipInfo {
                flags: VIP_F_ADDR_ONLY,
                ..VipInfo::default()
            };
            result = self
                .dp
                .set_vip(&marker_key(id.address), &marker)
                .map_err(CoreError::from);
        }
        let sources = range_keys(vip_index, &state.config.allowed_sources);
        self.vips.insert(id, state);
        if result.is_ok() {
            result = self.sync_all_ports();
        }
        if result.is_ok() {
            // Before the VIP's entry (with `VIP_F_SRC_RANGES`) goes live; a leftover of the
            // index's last VIP goes too.
            result = self.sync_ranges(vip_index, &sources);
        }
        if result.is_ok() {
            result = self.publish(&id);
        }
        if result.is_err() {
            // The VIP's entry is the last write: nothing of it went live. Its index and slots
            // go back, or a few failed writes would use up the balancer's capacity.
            if let Some(state) = self.vips.remove(&id) {
                for b in state.backends.values() {
                    self.backend_ids.free.push_back(b.index);
                }
                self.vip_ids.free.push_front(state.id);
            }
            self.release_address(id.address);
            self.sync_all_ports_or_log();
        }
        result
    }

    /// Writes the data plane's config again when whether some VIP serves every port
    /// changed (`CFG_F_ALL_PORTS`): set before the first such VIP's entry goes live, or its
    /// first flows would pass to the kernel; cleared once the last one's entry is gone, or
    /// packets for no VIP would pay a second lookup for nothing. Only the flag changes: a
    /// packet reading the slot meanwhile sees the same settings either way.
    fn sync_all_ports(&mut self) -> Result<(), CoreError> {
        let want = self.vips.keys().any(VipId::all_ports);
        if want != self.all_ports {
            self.write_config(&self.settings.clone(), want)?;
            self.all_ports = want;
        }
        Ok(())
    }

    /// Changes the settings a reload may change in place (the MTU, `icmp_too_big`,
    /// `icmp_echo` and the
    /// rate limits; `update` must leave the others as they are): the data plane's config
    /// is written again, then kept. A packet reading the config meanwhile sees each
    /// setting old or new, never a mix: each is one aligned word (a flag bit, a limit) of
    /// the one slot. Nothing changes when the write fails. The caller checks a new MTU
    /// against the IPv6 VIPs (`reload::check_fits`).
    pub fn set_limits(&mut self, update: impl FnOnce(&mut Settings)) -> Result<(), CoreError> {
        let mut settings = self.settings.clone();
        update(&mut settings);
        self.write_config(&settings, self.all_ports)?;
        self.settings = settings;
        Ok(())
    }

    /// Writes the data plane's config from `settings`, with the all-ports flag as given.
    fn write_config(&mut self, settings: &Settings, all_ports: bool) -> Result<(), CoreError> {
        let mut cfg = lb_config(settings);
        if all_ports {
            cfg.flags |= CFG_F_ALL_PORTS;
        }
        self.dp.set_config(&cfg)?;
        Ok(())
    }

    /// [`Core::sync_all_ports`] where nothing depends on it: a flag left set costs packets
    /// for no VIP one lookup, and the next change writes it again.
    fn sync_all_ports_or_log(&mut self) {
        if let Err(e) = self.sync_all_ports() {
            log::warn!("updating the all-ports flag of the data plane's config: {e}");
        }
    }

    /// One VIP less on `addr`; the last one takes the address marker with it (best effort:
    /// a marker left behind only makes the program drop fragments to the address).
    fn release_address(&mut self, addr: IpAddr) {
        let Some(refs) = self.addr_refs.get_mut(&addr) else {
            return;
        };
        *refs -= 1;
        if *refs == 0 {
            self.addr_refs.remove(&addr);
            if let Err(e) = self.dp.remove_vip(&marker_key(addr)) {
                log::warn!("removing the VIP address marker of {addr}: {e}");
            }
        }
    }

    /// Removes a VIP: new packets to it pass to the kernel at once; its flows end.
    /// The VIP's entry goes first: if that fails, nothing changed. What follows is clean-up
    /// that no packet depends on for its safety (a slot left active serves flows of the
    /// removed VIP until it is reused, with a new generation); its failures are logged.
    pub fn remove_vip(&mut self, id: &VipId) -> Result<VipConfig, CoreError> {
        if !self.vips.contains_key(id) {
            return Err(CoreError::UnknownVip { vip: *id });
        }
        self.dp.remove_vip(&vip_key(id))?;
        let state = self
            .vips
            .remove(id)
            .ok_or(CoreError::UnknownVip { vip: *id })?;
        self.release_address(id.address);
        self.sync_all_ports_or_log();
        // The VIP's figures go with it: added again, it starts from zero.
        if let Err(e) = self.dp.remove_retired(&vip_key(id)) {
            log::warn!("forgetting the traffic of {id}'s removed backends: {e}");
        }
        for (addr, b) in &state.backends {
            let gone = BackendState {
                healthy: false,
                ..b.clone()
            };
            match self
                .dp
                .set_backend(b.index, &backend_entry(id, *addr, &gone))
            {
                Ok(()) => self.clear_slot(b.index),
                Err(e) => log::warn!("deactivating backend {addr} of removed VIP {id}: {e}"),
            }
            self.backend_ids.free.push_back(b.index);
        }
        // Its entry is gone: no packet reads its prefixes or server IDs any more.
        if let Err(e) = self.sync_ranges(state.id, &BTreeSet::new()) {
            log::warn!("removing the client prefixes of removed VIP {id}: {e} (retried when its index is used again)");
        }
        if let Err(e) = self.sync_quic_servers(state.id, &BTreeMap::new()) {
            log::warn!("removing the QUIC server IDs of removed VIP {id}: {e} (retried when its index is used again)");
        }
        self.vip_ids.free.push_back(state.id);
        Ok(state.running_config())
    }

    /// Adds a backend to a VIP.
    pub fn add_backend(&mut self, id: &VipId, b: BackendConfig) -> Result<(), CoreError> {
        self.add_backend_ramped(id, b, 100)
    }

    /// As [`Self::add_backend`], starting at `ramp_pct` percent of its weight (slow start):
    /// its entry and the first table naming it carry the lowered weight.
    pub fn add_backend_ramped(
        &mut self,
        id: &VipId,
        b: BackendConfig,
        ramp_pct: u32,
    ) -> Result<(), CoreError> {
        b.validate("backend")?;
        let vip = self
            .vips
            .get(id)
            .ok_or(CoreError::UnknownVip { vip: *id })?;
        if vip.backends.contains_key(&b.address) {
            return Err(CoreError::BackendExists {
                vip: *id,
                backend: b.address,
            });
        }
        if vip.backends.len() >= crate::config::MAX_BACKENDS_PER_VIP {
            return Err(ConfigError::new(
                "backend",
                format!(
                    "VIP {id} has {} backends, the most a VIP may have",
                    vip.backends.len()
                ),
            )
            .into());
        }
        self.check_backend(&vip.config, &b.address)?;
        crate::config::check_max_conns(b.max_conns, vip.config.scheduler)
            .map_err(|m| ConfigError::new("backend.max_conns", format!("{id}: {m}")))?;
        crate::config::check_quic_server_id(
            b.quic_server_id,
            vip.config.quic,
            vip.backends.values().filter_map(|x| x.quic_server_id),
        )
        .map_err(|m| ConfigError::new("backend.quic_server_id", format!("{id}: {m}")))?;
        let others_serve = vip.backends.values().any(|x| !x.backup && x.eligible());
        let encap = vip.config.encap;
        let bs = self.new_backend(id, &b, encap, others_serve, ramp_pct)?;
        let index = bs.index;
        self.vip_mut(id)?.backends.insert(b.address, bs);
        if let Err(e) = self.publish(id) {
            // No table naming it went live (the VIP's entry flips last): take it back.
            self.vip_mut(id)?.backends.remove(&b.address);
            self.backend_ids.free.push_back(index);
            return Err(e);
        }
        Ok(())
    }

    /// Takes a backend slot (oldest freed first), clears its counters (unless it is the
    /// same backend's slot under the last daemon) and writes the backend active, at
    /// `ramp_pct` percent of its weight, before any table can point at it. `others_serve`:
    /// a regular backend of the VIP takes new flows, so a backup starts in standby (its
    /// entry right from the first write, which matters when the slot is a running
    /// balancer's, pinned; `publish` settles it anyway).
    fn new_backend(
        &mut self,
        vip: &VipId,
        b: &BackendConfig,
        encap: Encap,
        others_serve: bool,
        ramp_pct: u32,
    ) -> Result<BackendState, CoreError> {
        let tag = vip_tag(vip);
        let (index, kept) = self
            .take_slot(tag, b.address)
            .ok_or(CoreError::TooManyBackends {
                max: self.backend_ids.max,
            })?;
        let generation = match (kept, self.generations.get_mut(index as usize)) {
            (Some(generation), _) => generation,
            (None, Some(g)) => {
                *g = g.wrapping_add(1);
                *g
            }
            (None, None) => 0,
        };
        let cache_epoch = self.next_cache_epoch(index);
        let mut bs = BackendState::new(index, generation, cache_epoch, b);
        if kept.is_some() && self.inherited_down.remove(&(tag, b.address)) {
            log::info!(
                "{vip}: backend {} was down under the last daemon: it starts down, and takes \
                 flows again once its health check passes",
                b.address
            );
            bs.healthy = false;
        }
        bs.standby = b.backup && others_serve;
        bs.gue = encap == Encap::Gue;
        bs.ramp_pct = ramp_pct.clamp(1, 100);
        // The same backend back in its slot from the last daemon keeps its counters (they
        // are pinned with the slots, see `state_dir`); any other holder starts from zero.
        let cleared = if kept.is_some() {
            Ok(())
        } else {
            self.dp.clear_backend(index)
        };
        let written = cleared.and_then(|()| {
            self.dp
                .set_backend(index, &backend_entry(vip, b.address, &bs))
        });
        if let Err(e) = written {
            // No table names the slot yet: it goes back (last in line, like any freed one).
            self.backend_ids.free.push_back(index);
            return Err(e.into());
        }
        Ok(bs)
    }

    /// A free backend slot for (VIP `tag`, `addr`): the one it had under the last daemon
    /// if inherited and free (with that generation, to keep), else preferably one that no
    /// inherited flows point at.
    fn take_slot(&mut self, tag: u32, addr: IpAddr) -> Option<(u32, Option<u32>)> {
        let free = &mut self.backend_ids.free;
        if let Some(&(index, generation)) = self.inherited.get(&(tag, addr)) {
            if let Some(pos) = free.iter().position(|&i| i == index) {
                self.inherited.remove(&(tag, addr));
                free.remove(pos);
                return Some((index, Some(generation)));
            }
        }
        let reserved: std::collections::HashSet<u32> =
            self.inherited.values().map(|&(i, _)| i).collect();
        let pos = free.iter().position(|i| !reserved.contains(i)).unwrap_or(0);
        let index = free.remove(pos)?;
        // An inherited slot given away: its old holder can no longer have it back.
        self.inherited.retain(|_, (i, _)| *i != index);
        Some((index, None))
    }

    /// Removes a backend: it leaves the table, then flows pinned to it move.
    pub fn remove_backend(&mut self, id: &VipId, addr: IpAddr) -> Result<(), CoreError> {
        let vip = self.vip_mut(id)?;
        let b = vip
            .backends
            .remove(&addr)
            .ok_or(CoreError::UnknownBackend {
                vip: *id,
                backend: addr,
            })?;
        if let Err(e) = self.publish(id) {
            // The old table, naming it, is still live: it stays.
            self.vip_mut(id)?.backends.insert(addr, b);
            return Err(e);
        }
        let gone = BackendState {
            healthy: false,
            ..b
        };
        let deactivated = self
            .dp
            .set_backend(gone.index, &backend_entry(id, addr, &gone));
        if let Err(e) = &deactivated {
            // No table names it any more; its pinned flows keep going to it until the slot
            // is reused (with a new generation, so they re-pick then).
            log::warn!("deactivating removed backend {addr} of {id}: {e}");
        }
        // Deactivated: no packet counts into the slot any more (flows pinned to it
        // re-pick), so these are its last figures.
        let last = self.dp.backend(gone.index);
        let vip = self.vip_mut(id)?;
        vip.retired = vip.retired + last;
        let retired = vip.retired;
        self.record_retired(id, &retired);
        if deactivated.is_ok() {
            // Its figures are the VIP's record now: a next daemon must not find them in
            // the slot again (see `retire_inherited_slots`).
            self.clear_slot(gone.index);
        }
        self.backend_ids.free.push_back(gone.index);
        Ok(())
    }

    /// Records VIP `id`'s removed backends' traffic where a next daemon finds it (best
    /// effort: without the record, a restart would take that share off the VIP's figures).
    fn record_retired(&mut self, id: &VipId, retired: &TrafficStats) {
        if let Err(e) = self.dp.set_retired(&vip_key(id), retired) {
            log::warn!("recording the traffic of {id}'s removed backends: {e}");
        }
    }

    /// Zeroes a slot no backend holds any more (best effort: a slot is cleared again when
    /// it is handed out).
    fn clear_slot(&mut self, index: u32) {
        if let Err(e) = self.dp.clear_backend(index) {
            log::warn!("clearing the counters of backend slot {index}: {e}");
        }
    }

    /// Adds what the last daemon's backend slots that no backend of this config took back
    /// carried to their VIPs' removed-backend figures, and zeroes those slots; forgets the
    /// records of VIPs that are not configured. Without this, a backend dropped from the
    /// config across a restart would take its traffic off its VIP's figures, which then go
    /// down. Call once this daemon's program runs: the last daemon's counts into the slots
    /// until then. Slots of VIPs that are gone, or whose tag two VIPs share, are left alone
    /// (cleared when handed out).
    pub fn retire_inherited_slots(&mut self) {
        let mut by_tag: HashMap<u32, Vec<VipId>> = HashMap::new();
        for id in self.vips.keys() {
            by_tag.entry(vip_tag(id)).or_default().push(*id);
        }
        let unclaimed: Vec<(u32, u32)> = self
            .inherited
            .iter()
            .map(|(&(tag, _), &(index, _))| (tag, index))
            .collect();
        for (tag, index) in unclaimed {
            let Some([id]) = by_tag.get(&tag).map(Vec::as_slice) else {
                continue;
            };
            let last = self.dp.backend(index);
            if last == TrafficStats::default() {
                continue;
            }
            let Some(vip) = self.vips.get_mut(id) else {
                continue;
            };
            vip.retired = vip.retired + last;
            let (id, retired) = (*id, vip.retired);
            self.record_retired(&id, &retired);
            self.clear_slot(index);
        }
        let configured: std::collections::HashSet<VipKey> = self.vips.keys().map(vip_key).collect();
        for key in self.dp.retired_vips() {
            if !configured.contains(&key) {
                if let Err(e) = self.dp.remove_retired(&key) {
                    log::warn!("forgetting a removed VIP's record: {e}");
                }
            }
        }
    }

    /// Sets a backend's weight (0 = no new flows).
    pub fn set_weight(&mut self, id: &VipId, addr: IpAddr, weight: u32) -> Result<(), CoreError> {
        check_weight(weight).map_err(|m| ConfigError::new("weight", m))?;
        self.update_backend(id, addr, |b| b.weight = weight)
            .map(|_| ())
    }

    /// Sets a backend's most active flows under its VIP's counting scheduler (`None`: no
    /// limit); a VIP whose scheduler does not count refuses one.
    pub fn set_max_conns(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        max_conns: Option<u32>,
    ) -> Result<(), CoreError> {
        if max_conns == Some(0) {
            return Err(ConfigError::new(
                "max_conns",
                "0 would take no flow: use 1 or more, drain the backend, or lift the limit",
            )
            .into());
        }
        let scheduler = self.vip(id)?.config.scheduler;
        crate::config::check_max_conns(max_conns, scheduler)
            .map_err(|m| ConfigError::new("max_conns", format!("{id}: {m}")))?;
        self.update_backend(id, addr, |b| b.max_conns = max_conns)
            .map(|_| ())
    }

    /// Makes a backend a backup (new flows only while no other backend of its VIP takes
    /// them) or a regular one again.
    pub fn set_backup(&mut self, id: &VipId, addr: IpAddr, backup: bool) -> Result<(), CoreError> {
        // A regular backend leaves standby at once, a backup takes it where another backend
        // serves: `publish` settles it, the entry written on the safe side of the flip.
        self.update_backend(id, addr, |b| b.backup = backup)
            .map(|_| ())
    }

    /// Drains (no new flows; existing flows stay) or undrains a backend.
    pub fn set_drained(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        drained: bool,
    ) -> Result<(), CoreError> {
        self.update_backend(id, addr, |b| b.drained = drained)
            .map(|_| ())
    }

    /// Records a health verdict. Down: the backend leaves the table and, once it has, its
    /// pinned flows move on their next packet. Up: it is made active, then joins the table.
    /// Returns whether anything changed.
    pub fn set_health(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        healthy: bool,
    ) -> Result<bool, CoreError> {
        self.update_backend(id, addr, |b| b.healthy = healthy)
    }

    /// Records an agent's report; returns whether anything changed.
    pub fn set_agent(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        r: AgentReport,
    ) -> Result<bool, CoreError> {
        self.update_backend(id, addr, |b| {
            b.agent_down = r.down;
            b.agent_drain = r.drain;
            if let Some(p) = r.pct {
                b.factor_pct = p.min(100);
            }
        })
    }

    /// Sets the dynamic weight factor (percent, 0..=100); returns whether it changed.
    pub fn set_factor(&mut self, id: &VipId, addr: IpAddr, pct: u32) -> Result<bool, CoreError> {
        self.update_backend(id, addr, |b| b.factor_pct = pct.min(100))
    }

    /// Sets slow start's share of a backend's weight (percent, 1..=100; 100 ends the
    /// ramp); returns whether it changed.
    pub fn set_ramp(&mut self, id: &VipId, addr: IpAddr, pct: u32) -> Result<bool, CoreError> {
        self.update_backend(id, addr, |b| b.ramp_pct = pct.clamp(1, 100))
    }

    /// Makes `SOURCE_RANGES` hold exactly `want` for VIP index `vip_id`: the missing
    /// entries first, then the extra ones out. Stops at the first failed write.
    fn sync_ranges(&mut self, vip_id: u32, want: &BTreeSet<RangeKey>) -> Result<(), CoreError> {
        let written = self.source_ranges.entry(vip_id).or_default();
        for k in want.difference(&written.clone()) {
            self.dp.add_source_range(k.0, &k.1)?;
            written.insert(*k);
        }
        for k in written.clone().difference(want) {
            self.dp.remove_source_range(k.0, &k.1)?;
            written.remove(k);
        }
        if written.is_empty() {
            self.source_ranges.remove(&vip_id);
        }
        Ok(())
    }

    /// Makes `QUIC_SERVERS` hold exactly `want` (server ID → backend) for VIP index
    /// `vip_id`: new and changed entries first, then the extra ones out. Stops at the first
    /// failed write. An entry names a slot at a generation, so one left behind by a failed
    /// removal never routes to the slot's next holder.
    fn sync_quic_servers(
        &mut self,
        vip_id: u32,
        want: &BTreeMap<u32, QuicServer>,
    ) -> Result<(), CoreError> {
        let written = self.quic_servers.entry(vip_id).or_default();
        for (&server_id, server) in want {
            if written.get(&server_id) != Some(server) {
                self.dp
                    .set_quic_server(&QuicServerKey { vip_id, server_id }, server)?;
                written.insert(server_id, *server);
            }
        }
        let extra: Vec<u32> = written
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for server_id in extra {
            self.dp
                .remove_quic_server(&QuicServerKey { vip_id, server_id })?;
            written.remove(&server_id);
        }
        if written.is_empty() {
            self.quic_servers.remove(&vip_id);
        }
        Ok(())
    }

    /// Sets the client prefixes a VIP admits new flows from (empty: every client). The new
    /// prefixes are written before the VIP's entry changes and the old ones taken out after,
    /// so that a client both lists admit is admitted throughout.
    pub fn set_sources(&mut self, id: &VipId, sources: Vec<SourcePrefix>) -> Result<(), CoreError> {
        check_sources(id.address, &sources).map_err(|m| ConfigError::new("allowed_sources", m))?;
        let vip = self.vip_mut(id)?;
        let index = vip.id;
        let old = std::mem::replace(&mut vip.config.allowed_sources, sources);
        let (old_keys, new_keys) = (
            range_keys(index, &old),
            range_keys(index, &vip.config.allowed_sources),
        );
        let both: BTreeSet<RangeKey> = old_keys.union(&new_keys).copied().collect();
        let flipped = self
            .sync_ranges(index, &both)
            .and_then(|()| self.publish_table(id));
        if let Err(e) = flipped {
            // Back to the old list, entry and prefixes (best effort: what stays written is
            // listed, and goes at the next change).
            self.vip_mut(id)?.config.allowed_sources = old;
            if let Err(e) = self.publish_table(id) {
                log::warn!("restoring the entry of {id}: {e}");
            }
            if let Err(e) = self.sync_ranges(index, &old_keys) {
                log::warn!("restoring the client prefixes of {id}: {e}");
            }
            return Err(e);
        }
        self.sync_ranges(index, &new_keys)
    }

    /// Sets a VIP's slow start (`None`: none). Ramps under way are the caller's to end
    /// (`set_ramp` to 100) when it is turned off.
    pub fn set_slow_start(
        &mut self,
        id: &VipId,
        slow_start_s: Option<u32>,
    ) -> Result<(), CoreError> {
        let vip = self.vip_mut(id)?;
        crate::config::check_slow_start(slow_start_s, vip.config.scheduler)
            .map_err(|m| ConfigError::new("slow_start_s", m))?;
        crate::config::check_stateless(vip.config.stateless, vip.config.scheduler, slow_start_s)
            .map_err(|m| ConfigError::new("slow_start_s", format!("{id} is stateless: {m}")))?;
        vip.config.slow_start_s = slow_start_s;
        Ok(())
    }

    /// Applies `change` to a backend and brings the data plane along in a safe order: a
    /// backend becoming active is written before any table points at it; one becoming
    /// inactive leaves the tables first.
    fn update_backend(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        change: impl FnOnce(&mut BackendState),
    ) -> Result<bool, CoreError> {
        let b = self.backend_mut(id, addr)?;
        let before = b.clone();
        change(b);
        if *b == before {
            return Ok(false);
        }
        if b.in_table() && !before.in_table() {
            // Out of the table, it may have lost flows to other backends on one CPU while
            // another CPU's flow cache still held them: those copies must not serve again.
            let index = b.index;
            let epoch = self.next_cache_epoch(index);
            self.backend_mut(id, addr)?.cache_epoch = epoch;
        }
        let b = self.backend_mut(id, addr)?;
        let (index, entry, now_active) = (b.index, backend_entry(id, addr, b), b.active());
        let written = if before.active() && !now_active {
            self.publish(id)
                .and_then(|()| Ok(self.dp.set_backend(index, &entry)?))
        } else {
            self.dp
                .set_backend(index, &entry)
                .map_err(CoreError::from)
                .and_then(|()| self.publish(id))
        };
        if let Err(e) = written {
            // Refused as a whole: the core goes back to what it had, so that the same
            // change, asked again (the next health verdict, a retried request), is made
            // again rather than found done. The data plane gets the old entry back (best
            // effort); a table already flipped is rebuilt by the next change.
            *self.backend_mut(id, addr)? = before.clone();
            if let Err(e) = self
                .dp
                .set_backend(index, &backend_entry(id, addr, &before))
            {
                log::warn!("restoring backend {addr} of {id}: {e}");
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Records a resolved (or lost) next hop for a backend. Returns whether it changed.
    pub fn set_nexthop(
        &mut self,
        id: &VipId,
        addr: IpAddr,
        hop: Option<NextHop>,
    ) -> Result<bool, CoreError> {
        if self.backend_mut(id, addr)?.nexthop == hop {
            return Ok(false);
        }
        if let Some(h) = hop {
            // A next hop on another interface is reached by XDP_REDIRECT, which the program
            // only does to registered ports (else `no_route`): registered before the entry
            // names it.
            self.add_tx_port(h.ifindex)?;
            // Learned at run time, so not refused as a configured `mtu` is; said once per
            // change.
            if let Some(needed) = ipv6_minimum_unmet(id.address, addr, h.mtu) {
                log::warn!(
                    "the path to backend {addr} of {id} carries {} bytes: clients of the IPv6 \
                     VIP cannot send it a 1280-byte packet (needs {needed}); raise that \
                     interface's or route's MTU",
                    h.mtu
                );
            }
        }
        let b = self.backend_mut(id, addr)?;
        b.nexthop = hop;
        let (index, entry) = (b.index, backend_entry(id, addr, b));
        self.dp.set_backend(index, &entry)?;
        Ok(true)
    }

    /// Registers `ifindex` as a port the program may redirect to, once. Also for the
    /// egress of a backend whose neighbour is not resolved yet: the program's FIB lookup
    /// finds that interface as soon as the kernel resolves the neighbour, before the daemon
    /// records the next hop, and a redirect to an unregistered port is dropped (`no_route`).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), CoreError> {
        if !self.tx_ports.contains(&ifindex) {
            self.dp.add_tx_port(ifindex)?;
            self.tx_ports.insert(ifindex);
        }
        Ok(())
    }

    /// Every (VIP, backend address) pair.
    pub fn backend_pairs(&self) -> Vec<(VipId, IpAddr)> {
        self.vips
            .values()
            .flat_map(|v| v.backends.keys().map(move |a| (v.config.id(), *a)))
            .collect()
    }

    /// The backends of VIPs whose scheduler counts active flows (`lc`, `wlc`, `lrt`), each
    /// with its VIP's configuration.
    pub fn counted_backends(&self) -> impl Iterator<Item = (&VipConfig, &BackendState)> {
        self.vips
            .values()
            .filter(|v| sched::counts_active(v.config.scheduler))
            .flat_map(|v| v.backends.values().map(move |b| (&v.config, b)))
    }

    /// Sets the active-flow count of backend slot `index` to `value` if the slot still
    /// holds the backend it held under `generation`, of a VIP whose scheduler counts active
    /// flows (the daemon's recount, which runs without the lock: the slot may have been
    /// removed or reused meanwhile, and then keeps its count). Whether it was written.
    pub fn set_active_count(
        &mut self,
        index: u32,
        generation: u32,
        value: u64,
    ) -> Result<bool, CoreError> {
        let current = self
            .counted_backends()
            .any(|(_, b)| b.index == index && b.generation == generation);
        if !current {
            return Ok(false);
        }
        self.dp.set_active_count(index, value)?;
        Ok(true)
    }

    /// Switches a VIP's scheduler; flows already recorded keep their backends. What only
    /// the old scheduler set goes back to neutral: an agent's down, drain and percent, and
    /// `lrt`'s factor. Nothing would update them any more, so a backend the agent last
    /// called down would stay out of the table for good, and one `lrt` found slow would
    /// keep 1 % of its weight under the new scheduler.
    pub fn set_scheduler(&mut self, id: &VipId, scheduler: Scheduler) -> Result<(), CoreError> {
        let vip = self.vip_mut(id)?;
        if scheduler == Scheduler::Agent && vip.config.agent.is_none() {
            // As the config file refuses it: no agent would ever be polled.
            return Err(ConfigError::new(
                "scheduler",
                format!("scheduler agent needs the VIP's \"agent\" settings, and {id} has none"),
            )
            .into());
        }
        crate::config::check_slow_start(vip.config.slow_start_s, scheduler).map_err(|m| {
            ConfigError::new("scheduler", format!("{id} has a slow start, and {m}"))
        })?;
        crate::config::check_stateless(vip.config.stateless, scheduler, vip.config.slow_start_s)
            .map_err(|m| ConfigError::new("scheduler", format!("{id} is stateless: {m}")))?;
        let limited = vip.backends.iter().find(|(_, b)| b.max_conns.is_some());
        if let Some((addr, b)) = limited {
            if crate::config::check_max_conns(b.max_conns, scheduler).is_err() {
                return Err(ConfigError::new(
                    "scheduler",
                    format!(
                        "{} ignores backends' max_conns (only lc and wlc honour them), and \
                         backend {addr} of {id} has one: lift it first (`xlb backend \
                         max-conns {id} {addr} none`)",
                        scheduler.name()
                    ),
                )
                .into());
            }
        }
        let old = std::mem::replace(&mut vip.config.scheduler, scheduler);
        let before = vip.backends.clone();
        if old != scheduler && matches!(old, Scheduler::Agent | Scheduler::Lrt) {
            for b in vip.backends.values_mut() {
                b.agent_down = false;
                b.agent_drain = false;
                b.factor_pct = 100;
            }
        }
        // The reset only ever brings backends in: their entries (active, weight, and for
        // those back in the table a new cache epoch, see `update_backend`) are written
        // before the table that names them goes live.
        let changed: Vec<IpAddr> = before
            .iter()
            .filter(|(a, b)| vip.backends.get(a) != Some(b))
            .map(|(a, _)| *a)
            .collect();
        let mut written = Ok(());
        for addr in &changed {
            let joins = {
                let b = self.backend_mut(id, *addr)?;
                b.in_table() && !before[addr].in_table()
            };
            if joins {
                let index = before[addr].index;
                let epoch = self.next_cache_epoch(index);
                self.backend_mut(id, *addr)?.cache_epoch = epoch;
            }
            let b = self.backend_mut(id, *addr)?;
            let (index, entry) = (b.index, backend_entry(id, *addr, b));
            written = self.dp.set_backend(index, &entry).map_err(CoreError::from);
            if written.is_err() {
                break;
            }
        }
        if let Err(e) = written.and_then(|()| self.publish(id)) {
            // The old table is still live: so are the old scheduler and states, and the
            // entries go back to match them (best effort, as in `update_backend`).
            let vip = self.vip_mut(id)?;
            vip.config.scheduler = old;
            vip.backends = before;
            for addr in &changed {
                let b = &self.vip(id)?.backends[addr];
                let (index, entry) = (b.index, backend_entry(id, *addr, b));
                if let Err(e) = self.dp.set_backend(index, &entry) {
                    log::warn!("restoring backend {addr} of {id}: {e}");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Sets how long a VIP's flows may stay silent before they stop counting as active
    /// (`None`: the protocol's default). Only the daemon's recount reads it: nothing to
    /// write to the data plane, and the next recount applies it.
    pub fn set_idle_timeout(&mut self, id: &VipId, idle_s: Option<u32>) -> Result<(), CoreError> {
        if let Some(t) = idle_s {
            check_idle_timeout(t).map_err(|m| ConfigError::new("idle_timeout_s", m))?;
        }
        self.vip_mut(id)?.config.idle_timeout_s = idle_s;
        Ok(())
    }

    /// Sets how many new flows each CPU admits to a VIP per second (`None`: no limit); the
    /// VIP's entry is written again with it. Nothing changes when the write fails.
    pub fn set_new_flow_rate_limit(
        &mut self,
        id: &VipId,
        limit: Option<u32>,
    ) -> Result<(), CoreError> {
        self.set_flow_limit(id, "new_flow_rate_limit", limit, |c| {
            &mut c.new_flow_rate_limit
        })
    }

    /// Sets how many new flows the balancer admits to a VIP per second from one client (`None`:
    /// no limit), as [`Core::set_new_flow_rate_limit`].
    pub fn set_client_flow_rate_limit(
        &mut self,
        id: &VipId,
        limit: Option<u32>,
    ) -> Result<(), CoreError> {
        self.set_flow_limit(id, "client_flow_rate_limit", limit, |c| {
            &mut c.client_flow_rate_limit
        })
    }

    /// One of a VIP's new-flow limits (`field` of its config, reached by `of`).
    fn set_flow_limit(
        &mut self,
        id: &VipId,
        field: &'static str,
        limit: Option<u32>,
        of: fn(&mut VipConfig) -> &mut Option<u32>,
    ) -> Result<(), CoreError> {
        crate::config::check_new_flow_rate_limit(limit).map_err(|m| ConfigError::new(field, m))?;
        let vip = self.vip_mut(id)?;
        let before = std::mem::replace(of(&mut vip.config), limit);
        if let Err(e) = self.publish(id) {
            *of(&mut self.vip_mut(id)?.config) = before;
            return Err(e);
        }
        Ok(())
    }

    /// Sets a VIP's health check (`None`: the default TCP connect). The caller restarts
    /// the checks of its backends.
    pub fn set_health_check(
        &mut self,
        id: &VipId,
        check: Option<HealthCheckConfig>,
    ) -> Result<(), CoreError> {
        if let Some(hc) = &check {
            hc.validate()
                .and_then(|()| hc.check_files())
                .map_err(|e| ConfigError::new("health_check", e.to_string()))?;
        }
        crate::config::check_health_port(id.port, check.as_ref())
            .map_err(|m| ConfigError::new("health_check", m))?;
        self.vip_mut(id)?.config.health_check = check;
        Ok(())
    }

    fn vip_mut(&mut self, id: &VipId) -> Result<&mut VipState, CoreError> {
        self.vips
            .get_mut(id)
            .ok_or(CoreError::UnknownVip { vip: *id })
    }

    /// Makes the data plane's flow caches stop serving their copies of entries on these
    /// backend slots (each at the generation the entries were recorded under): the next
    /// packet of each of their flows looks the connection table up again. For entries
    /// deleted from the table (`flows.forget`), whose copies would otherwise serve their
    /// old backend for up to `FLOW_CACHE_REFRESH` more packets. The other flows on those
    /// backends pay one table lookup each. A slot at another generation now has had a new
    /// holder, with an epoch of its own since; it is left alone. Returns how many backends
    /// it refreshed.
    pub fn refresh_flow_caches(
        &mut self,
        slots: &BTreeSet<(u32, u32)>,
    ) -> Result<usize, CoreError> {
        let hit: Vec<(VipId, IpAddr, u32)> = self
            .vips
            .iter()
            .flat_map(|(id, v)| {
                v.backends
                    .iter()
                    .filter(|(_, b)| slots.contains(&(b.index, b.generation)))
                    .map(|(addr, b)| (*id, *addr, b.index))
            })
            .collect();
        for &(id, addr, index) in &hit {
            let epoch = self.next_cache_epoch(index);
            let b = self.backend_mut(&id, addr)?;
            b.cache_epoch = epoch;
            // Only the epoch differs from what the slot holds: a packet that reads the
            // entry while it is written sees the old epoch or the new one (or neither,
            // and then looks the table up).
            let entry = backend_entry(&id, addr, b);
            self.dp.set_backend(index, &entry)?;
        }
        Ok(hit.len())
    }

    /// Bumps slot `index`'s flow-cache epoch and returns it.
    fn next_cache_epoch(&mut self, index: u32) -> u32 {
        match self.cache_epochs.get_mut(index as usize) {
            Some(e) => {
                *e = e.wrapping_add(1);
                *e
            }
            None => 0,
        }
    }

    /// A backend of a VIP.
    pub fn backend(&self, id: &VipId, addr: IpAddr) -> Result<&BackendState, CoreError> {
        self.vip(id)?
            .backends
            .get(&addr)
            .ok_or(CoreError::UnknownBackend {
                vip: *id,
                backend: addr,
            })
    }

    fn backend_mut(&mut self, id: &VipId, addr: IpAddr) -> Result<&mut BackendState, CoreError> {
        let vip = self.vip_mut(id)?;
        vip.backends
            .get_mut(&addr)
            .ok_or(CoreError::UnknownBackend {
                vip: *id,
                backend: addr,
            })
    }

    /// Rebuilds the VIP's table into its inactive half and flips to it, with its backups
    /// in or out of it: they take new flows only while no other backend can. A backup
    /// coming in is written (no longer `BACKEND_F_NO_NEW`, a new cache epoch, as in
    /// `update_backend`) before the table naming it goes live; one going out after the
    /// table without it did.
    fn publish(&mut self, id: &VipId) -> Result<(), CoreError> {
        let vip = self.vip_mut(id)?;
        let serving = vip.backends.values().any(|b| !b.backup && b.eligible());
        // (address, standby now): a backup waits while a regular backend serves; a regular
        // backend never does (one that was a backup until now leaves standby here).
        let moved: Vec<(IpAddr, bool)> = vip
            .backends
            .iter_mut()
            .filter(|(_, b)| b.standby != (b.backup && serving))
            .map(|(addr, b)| {
                b.standby = !b.standby;
                (*addr, b.standby)
            })
            .collect();
        let undo = |core: &mut Self| {
            for (addr, standby) in &moved {
                if let Ok(b) = core.backend_mut(id, *addr) {
                    b.standby = !standby;
                    let (index, entry) = (b.index, backend_entry(id, *addr, b));
                    if let Err(e) = core.dp.set_backend(index, &entry) {
                        log::warn!("restoring backup {addr} of {id}: {e}");
                    }
                }
            }
        };
        for (addr, _) in moved.iter().filter(|(_, standby)| !standby) {
            let index = self.backend_mut(id, *addr)?.index;
            let epoch = self.next_cache_epoch(index);
            let b = self.backend_mut(id, *addr)?;
            b.cache_epoch = epoch;
            let entry = backend_entry(id, *addr, b);
            if let Err(e) = self.dp.set_backend(index, &entry) {
                undo(self);
                return Err(e.into());
            }
        }
        if let Err(e) = self.publish_table(id) {
            undo(self);
            return Err(e);
        }
        // What an operator pages on: a VIP left to its backups.
        let backups: Vec<String> = moved
            .iter()
            .filter(|(addr, _)| {
                self.vip(id)
                    .is_ok_and(|v| v.backends.get(addr).is_some_and(|b| b.backup))
            })
            .map(|(addr, _)| addr.to_string())
            .collect();
        if !backups.is_empty() {
            let list = backups.join(", ");
            if serving {
                log::info!("VIP {id}: a regular backend takes new flows again; backups {list} wait (their flows stay)");
            } else {
                log::warn!("VIP {id}: no regular backend takes new flows; its backups {list} do");
            }
        }
        for (addr, _) in moved.iter().filter(|(_, standby)| *standby) {
            let b = self.backend_mut(id, *addr)?;
            let (index, entry) = (b.index, backend_entry(id, *addr, b));
            if let Err(e) = self.dp.set_backend(index, &entry) {
                // Out of every table already: only a client reusing a recorded 5-tuple of
                // it could still open a connection on it.
                log::warn!("holding back backup {addr} of {id}: {e}");
            }
        }
        Ok(())
    }

    /// Rebuilds the VIP's table into its inactive half and flips to it. The VIP's QUIC
    /// server IDs are written first: the entry that turns their use on comes last.
    fn publish_table(&mut self, id: &VipId) -> Result<(), CoreError> {
        let vip = self.vip(id)?;
        let (vip_index, servers) = (vip.id, quic_servers(vip));
        let limits = FlowLimits {
            vip: vip.config.new_flow_rate_limit.unwrap_or(0),
            client: vip.config.client_flow_rate_limit.unwrap_or(0),
        };
        self.sync_quic_servers(vip_index, &servers)?;
        if limits != FlowLimits::default() {
            // Before the entry whose flags make the program read them.
            self.dp.set_flow_limit(vip_index, limits)?;
        }
        let vip = self
            .vips
            .get_mut(id)
            .ok_or(CoreError::UnknownVip { vip: *id })?;
        let members: Vec<Member> = vip
            .backends
            .iter()
            .filter(|(_, b)| b.in_table())
            .map(|(addr, b)| {
                let (w, family) = to_words(*addr);
                Member {
                    index: b.index,
                    key: [w[0], w[1], w[2], w[3], u32::from(family)],
                    weight: b.effective_weight(),
                }
            })
            .collect();
        let size = vip.config.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        let built = sched::builder(vip.config.scheduler)
            .build(&members, size)
            .map_err(|e| ConfigError::new("table_size", e.to_string()))?;
        let table = built.slots;
        let next = 1 - vip.active;
        let table_id = vip.id * 2 + next;
        let old = &vip.shadow[next as usize];
        let changes: Vec<(u32, u32)> = table
            .iter()
            .enumerate()
            .filter(|(i, v)| old.len() != table.len() || old[*i] != **v)
            .map(|(i, v)| (i as u32, *v))
            .collect();
        if let Err(e) = self.dp.write_table(table_id, &changes) {
            // Slot by slot: some of the changes may be in the map. The shadow no longer says
            // what this half holds, so the next build rewrites every slot of it rather than
            // leaving a stray one to go live with the flip.
            vip.shadow[next as usize].clear();
            return Err(e.into());
        }
        let live_size = if members.is_empty() {
            0
        } else {
            table.len() as u32
        };
        vip.shadow[next as usize] = table;
        let mut flags = built.flags;
        if vip.config.source == SourceMode::FlowHash {
            flags |= VIP_F_HASHED_SRC;
        }
        if !vip.config.allowed_sources.is_empty() {
            flags |= VIP_F_SRC_RANGES;
        }
        if vip.config.stateless {
            flags |= VIP_F_STATELESS;
        }
        if let Some(q) = vip.config.quic {
            flags |= q.to_flags().flags();
        }
        if vip.config.new_flow_rate_limit.is_some() {
            flags |= VIP_F_FLOW_LIMIT;
        }
        if vip.config.client_flow_rate_limit.is_some() {
            flags |= VIP_F_CLIENT_LIMIT;
        }
        let info = VipInfo {
            vip_id: vip.id,
            table_id,
            table_size: live_size,
            flags,
        };
        self.dp.set_vip(&vip_key(id), &info)?;
        vip.active = next;
        Ok(())
    }
}

/// The `QUIC_SERVERS` entries a VIP's backends call for: each server ID to its backend's
/// slot at the slot's generation (the program routes only to an active one).
fn quic_servers(vip: &VipState) -> BTreeMap<u32, QuicServer> {
    if vip.config.quic.is_none() {
        return BTreeMap::new();
    }
    vip.backends
        .values()
        .filter_map(|b| {
            let server = QuicServer {
                backend: b.index,
                generation: b.generation,
            };
            b.quic_server_id.map(|id| (id, server))
        })
        .collect()
}

/// The MTU an IPv6 VIP's backend needs when `mtu` (0: not checked) cannot carry IPv6's
/// smallest packet (1280 bytes, RFC 8200) in the backend's tunnel; `None` when it can, or
/// the VIP is IPv4.
fn ipv6_minimum_unmet(vip: IpAddr, backend: IpAddr, mtu: u32) -> Option<u32> {
    const IPV6_MIN_MTU: u32 = 1280;
    let needed = IPV6_MIN_MTU + if backend.is_ipv4() { 20 } else { 40 };
    (vip.is_ipv6() && mtu != 0 && mtu < needed).then_some(needed)
}

/// The data-plane entry of a backend in a given state.
fn backend_entry(vip: &VipId, addr: IpAddr, b: &BackendState) -> Backend {
    let (words, family) = to_words(addr);
    let weight = b.effective_weight().max(1);
    let generation = b.generation;
    let mut entry = Backend {
        addr: words,
        family,
        weight,
        generation,
        cache_epoch: b.cache_epoch,
        vip_tag: vip_tag(vip),
        max_active: b.max_conns.unwrap_or(0),
        ..Backend::default()
    };
    if b.active() {
        entry.flags |= BACKEND_F_ACTIVE;
        if !b.in_table() {
            entry.flags |= BACKEND_F_NO_NEW;
        }
    }
    if b.gue {
        entry.flags |= BACKEND_F_GUE;
    }
    if let Some(hop) = b.nexthop {
        entry.flags |= BACKEND_F_NEXTHOP;
        entry.ifindex = hop.ifindex;
        entry.smac = hop.smac;
        entry.dmac = hop.dmac;
        entry.mtu = hop.mtu;
    }
    entry
}

/// A VIP's tag in its backends' slots (`Backend::vip_tag`): FNV-1a over its address,
/// port and protocol, the same in every daemon. Two VIPs that share a tag and a backend
/// address can swap that address's slot across a restart; their flows then still reach
/// the same server.
pub fn vip_tag(vip: &VipId) -> u32 {
    let mut bytes = match vip.address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.extend_from_slice(&vip.port.to_be_bytes());
    bytes.extend_from_slice(vip.protocol.to_string().as_bytes());
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The data-plane form of the settings.
pub fn lb_config(s: &Settings) -> LbConfig {
    let mut cfg = LbConfig {
        mtu: s.mtu,
        record_rate_limit: s.record_rate_limit,
        icmp_rate_limit: s.icmp_rate_limit,
        gue_port_be: s.gue_port.to_be(),
        ..LbConfig::default()
    };
    if s.icmp_too_big {
        cfg.flags |= CFG_F_ICMP_TOO_BIG;
    }
    if s.icmp_echo {
        cfg.flags |= CFG_F_ICMP_ECHO;
    }
    if let Some(a) = s.src_v4 {
        cfg.src_v4 = to_words(IpAddr::V4(a)).0[0];
    }
    if let Some(a) = s.src_v6 {
        cfg.src_v6 = to_words(IpAddr::V6(a)).0;
    }
    if let Some((p, mask)) = s.hashed_v4 {
        cfg.hashed_src_v4 = to_words(IpAddr::V4(p)).0[0];
        cfg.hashed_src_v4_hostmask = mask;
    }
    if let Some(p) = s.hashed_v6 {
        cfg.hashed_src_v6 = to_words(IpAddr::V6(p)).0;
    }
    cfg
}

/// A core over a [`crate::dataplane::Recorder`] holding `config_json`'s VIPs (IPv4 outer
/// source, MTU 1500): for unit tests elsewhere that need one.
#[cfg(test)]
pub(crate) fn recorder_core(config_json: &str) -> Core<crate::dataplane::Recorder> {
    let cfg = crate::config::Config::from_json(config_json).expect("test config");
    let settings = Settings {
        src_v4: Some("198.18.0.2".parse().expect("literal")),
        mtu: 1500,
        max_vips: 4,
        ..Settings::default()
    };
    let mut core = Core::new(crate::dataplane::Recorder::default(), settings).expect("core");
    core.apply(&cfg).expect("test config applies");
    core
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Recorder, Write};

    fn settings() -> Settings {
        Settings {
            src_v4: Some("198.18.0.2".parse().unwrap()),
            src_v6: None,
            mtu: 1500,
            icmp_too_big: true,
            max_vips: 4,
            ..Settings::default()
        }
    }

    fn vip(backends: &[&str]) -> VipConfig {
        VipConfig {
            name: None,
            address: "198.18.1.1".parse().unwrap(),
            port: 80,
            protocol: crate::config::Protocol::Tcp,
            scheduler: Scheduler::Maglev,
            table_size: Some(65537),
            encap: Default::default(),
            source: SourceMode::Lb,
            health_check: None,
            agent: None,
            idle_timeout_s: None,
            slow_start_s: None,
            allowed_sources: Vec::new(),
            stateless: false,
            quic: None,
            new_flow_rate_limit: None,
            client_flow_rate_limit: None,
            backends: backends.iter().map(|a| backend(a)).collect(),
        }
    }

    /// A backend of weight 1, not drained.
    fn backend(address: &str) -> BackendConfig {
        BackendConfig {
            max_conns: None,
            quic_server_id: None,
            address: address.parse().unwrap(),
            weight: 1,
            drained: false,
            backup: false,
        }
    }

    fn core_with(backends: &[&str]) -> (Core<Recorder>, VipId) {
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let v = vip(backends);
        let id = v.id();
        core.add_vip(v).unwrap();
        (core, id)
    }

    /// The live table of `id` as the data plane sees it, by backend index.
    fn live(core: &Core<Recorder>, id: &VipId) -> (VipInfo, Vec<u32>) {
        let info = core.dataplane().vips[&vip_key(id)];
        let t = core
            .dataplane()
            .tables
            .get(&info.table_id)
            .cloned()
            .unwrap_or_default();
        (info, t[..info.table_size as usize].to_vec())
    }

    /// An all-ports VIP on one of the balancer's own addresses (its interface's, or an outer
    /// source) is refused, saying why; one port of it is a VIP like any other.
    #[test]
    fn an_all_ports_vip_on_the_balancers_own_address_is_refused() {
        let mut core = Core::new(
            Recorder::default(),
            Settings {
                own_addrs: vec!["198.18.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                src_v6: Some("fd00::3".parse().unwrap()),
                ..settings()
            },
        )
        .unwrap();
        let at = |addr: &str, port: u16| {
            let mut v = vip(&[if addr.contains(':') {
                "fd00::11"
            } else {
                "198.18.0.11"
            }]);
            v.address = addr.parse().unwrap();
            v.port = port;
            v.health_check = Some(HealthCheckConfig {
                kind: crate::health::CheckKind::Icmp,
                ..HealthCheckConfig::default()
            });
            v
        };
        for addr in ["198.18.0.2", "fd00::2", "fd00::3"] {
            let e = core.add_vip(at(addr, 0)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{addr} is the balancer's own address")) && e.contains("SSH"),
                "{e}"
            );
        }
        assert_eq!(core.vips().count(), 0, "nothing added");
        core.add_vip(at("198.18.0.2", 443)).unwrap();
        core.add_vip(at("198.18.1.1", 0)).unwrap();
    }

    /// A health check whose `ca_file` the daemon cannot use is refused with the file's
    /// fault, and the VIP keeps the check it had.
    #[test]
    fn a_health_check_with_an_unusable_ca_file_is_refused() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        let https = |ca_file: &str| HealthCheckConfig {
            kind: crate::health::CheckKind::Https,
            ca_file: Some(ca_file.into()),
            ..HealthCheckConfig::default()
        };
        let missing = format!("/nonexistent-xlb-{}/ca.pem", std::process::id());
        let e = core
            .set_health_check(&id, Some(https(&missing)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("health_check") && e.contains(&missing) && e.contains("No such file"),
            "{e}"
        );
        assert_eq!(core.vip(&id).unwrap().config.health_check, None);
    }

    /// `max_conns` reaches the backend's entry (`max_active`, 0 for none), only under a
    /// least-connection scheduler; a scheduler that would ignore a limit is refused while
    /// one is set, and nothing changes.
    #[test]
    fn max_conns_reach_the_entry_under_least_connection_only() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        let b11: IpAddr = "198.18.0.11".parse().unwrap();
        let e = core.set_max_conns(&id, b11, Some(5)).unwrap_err();
        assert!(e.to_string().contains("lc, wlc"), "{e}");
        core.set_scheduler(&id, Scheduler::Wlc).unwrap();
        let idx = core.backend(&id, b11).unwrap().index;
        let entry = |core: &Core<Recorder>| {
            core.dataplane()
                .writes
                .iter()
                .rev()
                .find_map(|w| match w {
                    Write::Backend(i, b) if *i == idx => Some(*b),
                    _ => None,
                })
                .unwrap()
        };
        core.set_max_conns(&id, b11, Some(5)).unwrap();
        assert_eq!(entry(&core).max_active, 5);
        assert!(core.set_max_conns(&id, b11, Some(0)).is_err());
        let e = core.set_scheduler(&id, Scheduler::Maglev).unwrap_err();
        assert!(e.to_string().contains("lift it first"), "{e}");
        assert_eq!(core.vip(&id).unwrap().config.scheduler, Scheduler::Wlc);
        let mut limited = backend("198.18.0.12");
        limited.max_conns = Some(7);
        core.add_backend(&id, limited).unwrap();
        assert_eq!(
            core.vip(&id).unwrap().running_config().backends[1].max_conns,
            Some(7)
        );
        core.set_max_conns(&id, b11, None).unwrap();
        assert_eq!(entry(&core).max_active, 0);
        // A hash VIP refuses a limited backend.
        let (mut maglev, mid) = core_with(&["198.18.0.11"]);
        let mut b = backend("198.18.0.13");
        b.max_conns = Some(3);
        assert!(maglev.add_backend(&mid, b).is_err());
        assert!(maglev
            .backend(&mid, "198.18.0.13".parse().unwrap())
            .is_err());
    }

    #[test]
    fn add_vip_writes_backends_then_table_then_vip() {
        let (core, id) = core_with(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
        let w = &core.dataplane().writes;
        let pos = |f: &dyn Fn(&Write) -> bool| w.iter().position(f).unwrap();
        let last_backend = w
            .iter()
            .rposition(|x| matches!(x, Write::Backend(..)))
            .unwrap();
        let table = pos(&|x| matches!(x, Write::Table(..)));
        let vip_write = w
            .iter()
            .rposition(|x| matches!(x, Write::Vip(k, _) if *k == vip_key(&id)))
            .unwrap();
        assert!(last_backend < table && table < vip_write, "{w:?}");
        let (info, t) = live(&core, &id);
        assert_eq!(info.table_size, 65537);
        let idx: Vec<u32> = core
            .vip(&id)
            .unwrap()
            .backends
            .values()
            .map(|b| b.index)
            .collect();
        assert!(t.iter().all(|s| idx.contains(s)));
        // Address marker present.
        assert!(core.dataplane().vips.contains_key(&marker_key(id.address)));
    }

    #[test]
    fn table_swap_writes_only_the_inactive_table_then_flips() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let (before, _) = live(&core, &id);
        let n = core.dataplane().writes.len();
        core.add_backend(&id, backend("198.18.0.13")).unwrap();
        let new_writes = &core.dataplane().writes[n..];
        let (after, t) = live(&core, &id);
        assert_ne!(before.table_id, after.table_id);
        // Every table write after the change went to the table that was not live, and
        // the flip came last.
        for w in new_writes {
            if let Write::Table(tid, _) = w {
                assert_eq!(*tid, after.table_id);
                assert_ne!(*tid, before.table_id);
            }
        }
        assert!(matches!(new_writes.last(), Some(Write::Vip(..))));
        let b3 = core.vip(&id).unwrap().backends[&"198.18.0.13".parse::<IpAddr>().unwrap()].index;
        let share = t.iter().filter(|&&s| s == b3).count() as f64 / t.len() as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.01, "{share}");
    }

    #[test]
    fn health_down_leaves_table_before_deactivating_and_up_reverses() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let idx = core.vip(&id).unwrap().backends[&a].index;
        let n = core.dataplane().writes.len();
        assert!(core.set_health(&id, a, false).unwrap());
        assert!(
            !core.set_health(&id, a, false).unwrap(),
            "no change reported twice"
        );
        let w = &core.dataplane().writes[n..];
        let flip = w.iter().position(|x| matches!(x, Write::Vip(..))).unwrap();
        let deact = w.iter().position(|x| matches!(x, Write::Backend(i, b) if *i == idx && b.flags & BACKEND_F_ACTIVE == 0)).unwrap();
        assert!(flip < deact, "{w:?}");
        let (_, t) = live(&core, &id);
        assert!(!t.contains(&idx));

        let n = core.dataplane().writes.len();
        core.set_health(&id, a, true).unwrap();
        let w = &core.dataplane().writes[n..];
        let act = w.iter().position(|x| matches!(x, Write::Backend(i, b) if *i == idx && b.flags & BACKEND_F_ACTIVE != 0)).unwrap();
        let flip = w.iter().position(|x| matches!(x, Write::Vip(..))).unwrap();
        assert!(act < flip, "{w:?}");
        assert!(live(&core, &id).1.contains(&idx));
    }

    /// The backend slots `core` wrote, as `state_dir` reads them back from the pin.
    fn pinned_slots(core: &Core<Recorder>) -> HashMap<u32, (u32, IpAddr, u32)> {
        core.dataplane()
            .backends
            .iter()
            .map(|(&i, b)| {
                let addr = lb_common::addr::from_words(b.addr, b.family).unwrap();
                (i, (b.vip_tag, addr, b.generation))
            })
            .collect()
    }

    #[test]
    fn inherited_slots_go_back_to_their_vip_and_address() {
        // The last daemon: web (.11, .12) then lines (.11, .12), in slots 1–4.
        let web = vip(&["198.18.0.11", "198.18.0.12"]);
        let lines = VipConfig {
            port: 7000,
            ..vip(&["198.18.0.11", "198.18.0.12"])
        };
        let (web_id, lines_id) = (web.id(), lines.id());
        let mut last = Core::new(Recorder::default(), settings()).unwrap();
        last.add_vip(web.clone()).unwrap();
        last.add_vip(lines.clone()).unwrap();
        let slot = |core: &Core<Recorder>, id: &VipId, a: &str| {
            let b = &core.vip(id).unwrap().backends[&a.parse::<IpAddr>().unwrap()];
            (b.index, b.generation)
        };
        let pinned = pinned_slots(&last);
        assert_eq!(pinned.len(), 4);

        // The next daemon's config adds .13 to web, which would shift every later slot.
        let mut next = Core::new(Recorder::default(), settings()).unwrap();
        next.inherit_slots(&pinned);
        next.add_vip(vip(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]))
            .unwrap();
        next.add_vip(lines).unwrap();
        for (id, a) in [
            (&web_id, "198.18.0.11"),
            (&web_id, "198.18.0.12"),
            (&lines_id, "198.18.0.11"),
            (&lines_id, "198.18.0.12"),
        ] {
            assert_eq!(slot(&next, id, a), slot(&last, id, a), "{id} {a}");
        }
        let (new_index, _) = slot(&next, &web_id, "198.18.0.13");
        assert!(
            !pinned.contains_key(&new_index),
            "a new backend takes a slot no inherited flow points at"
        );
    }

    /// A backend that was down under the last daemon comes back into its slot down: its
    /// entry inactive, out of the table, while the others serve; the down mark goes with
    /// the slot, so a backend in a fresh slot starts healthy whatever the mark says.
    #[test]
    fn a_backend_down_under_the_last_daemon_starts_down() {
        let web = vip(&["198.18.0.11", "198.18.0.12"]);
        let id = web.id();
        let mut last = Core::new(Recorder::default(), settings()).unwrap();
        last.add_vip(web).unwrap();
        let b12: IpAddr = "198.18.0.12".parse().unwrap();
        last.set_health(&id, b12, false).unwrap();
        let pinned = pinned_slots(&last);
        // What `state_dir` reads from the pinned slots: the entries without ACTIVE.
        let down: std::collections::HashSet<(u32, IpAddr)> = last
            .dataplane()
            .backends
            .values()
            .filter(|b| b.flags & BACKEND_F_ACTIVE == 0)
            .map(|b| {
                (
                    b.vip_tag,
                    lb_common::addr::from_words(b.addr, b.family).unwrap(),
                )
            })
            .collect();
        assert_eq!(down, [(vip_tag(&id), b12)].into());

        let mut next = Core::new(Recorder::default(), settings()).unwrap();
        next.inherit_slots(&pinned);
        next.inherit_down(down.clone());
        next.add_vip(vip(&["198.18.0.11", "198.18.0.12"])).unwrap();
        let state = next.vip(&id).unwrap();
        assert!(state.backends[&"198.18.0.11".parse::<IpAddr>().unwrap()].healthy);
        let b = &state.backends[&b12];
        assert!(!b.healthy && !b.in_table());
        let entry = next.dataplane().backends[&b.index];
        assert_eq!(entry.flags & BACKEND_F_ACTIVE, 0);
        let (_, table) = live(&next, &id);
        assert!(!table.contains(&b.index) && !table.is_empty());

        // Without its old slot the mark does not apply.
        let mut fresh = Core::new(Recorder::default(), settings()).unwrap();
        fresh.inherit_down(down);
        fresh.add_vip(vip(&["198.18.0.12"])).unwrap();
        assert!(fresh.vip(&id).unwrap().backends[&b12].healthy);
    }

    /// A QUIC VIP's server IDs reach `QUIC_SERVERS` before the entry that turns their use
    /// on, follow slots and generations, and leave with their backend or VIP; an ID that
    /// does not fit or is taken is refused with nothing written.
    #[test]
    fn quic_server_ids_follow_their_backends_slots() {
        use lb_common::quic::{VipQuic, VIP_F_QUIC};
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let mut cfg = vip(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
        cfg.protocol = crate::config::Protocol::Udp;
        cfg.port = 443;
        cfg.quic = Some(crate::config::QuicConfig {
            server_id_bytes: 2,
            config_id: 3,
        });
        cfg.backends[0].quic_server_id = Some(7);
        cfg.backends[1].quic_server_id = Some(300);
        let id = cfg.id();
        core.add_vip(cfg).unwrap();
        let (info, _) = live(&core, &id);
        assert_ne!(info.flags & VIP_F_QUIC, 0);
        assert_eq!(
            VipQuic::from_flags(info.flags),
            Some(VipQuic {
                id_bytes: 2,
                config_id: 3
            })
        );
        let slot = |core: &Core<Recorder>, a: &str| {
            let b = &core.vip(&id).unwrap().backends[&a.parse::<IpAddr>().unwrap()];
            QuicServer {
                backend: b.index,
                generation: b.generation,
            }
        };
        let servers = |core: &Core<Recorder>| core.dataplane().quic_servers.clone();
        assert_eq!(
            servers(&core),
            [
                ((info.vip_id, 7), slot(&core, "198.18.0.11")),
                ((info.vip_id, 300), slot(&core, "198.18.0.12")),
            ]
            .into()
        );
        // Written before the VIP's entry.
        let w = &core.dataplane().writes;
        let last_server = w
            .iter()
            .rposition(|x| matches!(x, Write::QuicServer(..)))
            .unwrap();
        let vip_write = w
            .iter()
            .position(|x| matches!(x, Write::Vip(k, _) if *k == vip_key(&id)))
            .unwrap();
        assert!(last_server < vip_write, "{w:?}");

        // Refused: an ID another backend has, one too large for two octets, an ID on a VIP
        // without QUIC. Nothing written.
        let before = core.dataplane().writes.len();
        let with_id = |a: &str, sid| BackendConfig {
            quic_server_id: Some(sid),
            ..backend(a)
        };
        for (b, want) in [
            (with_id("198.18.0.14", 7), "another backend's"),
            (with_id("198.18.0.14", 65_536), "does not fit"),
        ] {
            let e = core.add_backend(&id, b).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let (mut tcp, tcp_id) = core_with(&["198.18.0.11"]);
        let e = tcp
            .add_backend(&tcp_id, with_id("198.18.0.14", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("without \"quic\""), "{e}");
        assert_eq!(core.dataplane().writes.len(), before);

        // Added: its ID goes in; removed: out, and a new holder of the slot gets none.
        core.add_backend(&id, with_id("198.18.0.14", 9)).unwrap();
        assert_eq!(
            servers(&core)[&(info.vip_id, 9)],
            slot(&core, "198.18.0.14")
        );
        let gone = slot(&core, "198.18.0.11");
        core.remove_backend(&id, "198.18.0.11".parse().unwrap())
            .unwrap();
        assert!(!servers(&core).contains_key(&(info.vip_id, 7)));
        core.add_backend(&id, backend("198.18.0.15")).unwrap();
        assert!(servers(&core).values().all(|s| *s != gone));
        // Down, a backend keeps its ID: the program skips it while it is inactive.
        core.set_health(&id, "198.18.0.12".parse().unwrap(), false)
            .unwrap();
        assert!(servers(&core).contains_key(&(info.vip_id, 300)));
        // The VIP removed: none left.
        core.remove_vip(&id).unwrap();
        assert!(servers(&core).is_empty());
    }

    /// A stateless VIP's entry carries the flag through table changes; a scheduler or slow
    /// start that would move its flows is refused with nothing changed.
    #[test]
    fn a_stateless_vip_keeps_its_flag_and_refuses_what_would_move_its_flows() {
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let mut v = vip(&["198.18.0.11", "198.18.0.12"]);
        v.stateless = true;
        let id = v.id();
        core.add_vip(v).unwrap();
        let flags = |core: &Core<Recorder>| live(core, &id).0.flags;
        assert_ne!(flags(&core) & VIP_F_STATELESS, 0);
        core.set_scheduler(&id, Scheduler::Sh).unwrap();
        assert_ne!(flags(&core) & VIP_F_STATELESS, 0);
        let e = core.set_scheduler(&id, Scheduler::Wrr).unwrap_err();
        assert!(e.to_string().contains("is stateless"), "{e}");
        let e = core.set_slow_start(&id, Some(30)).unwrap_err();
        assert!(e.to_string().contains("is stateless"), "{e}");
        let state = core.vip(&id).unwrap();
        assert_eq!(
            (state.config.scheduler, state.config.slow_start_s),
            (Scheduler::Sh, None)
        );
        // Others never carry it.
        let (core, other) = core_with(&["198.18.0.11"]);
        assert_eq!(live(&core, &other).0.flags & VIP_F_STATELESS, 0);
    }

    #[test]
    fn idle_timeouts_are_checked_and_touch_nothing_else() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        let writes = core.dataplane().writes.len();
        assert_eq!(core.vip(&id).unwrap().config.idle_timeout(), 900);
        core.set_idle_timeout(&id, Some(3600)).unwrap();
        assert_eq!(core.vip(&id).unwrap().config.idle_timeout(), 3600);
        for bad in [0, 29, 604_801] {
            let err = core.set_idle_timeout(&id, Some(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid", "{bad}: {err}");
        }
        assert_eq!(
            core.vip(&id).unwrap().config.idle_timeout(),
            3600,
            "refusals change nothing"
        );
        core.set_idle_timeout(&id, None).unwrap();
        assert_eq!(core.vip(&id).unwrap().config.idle_timeout(), 900);
        let other: VipId = "198.18.1.9:80/tcp".parse().unwrap();
        assert_eq!(
            core.set_idle_timeout(&other, Some(60)).unwrap_err().code(),
            "unknown_vip"
        );
        assert_eq!(
            core.dataplane().writes.len(),
            writes,
            "only the recount reads it"
        );
    }

    #[test]
    fn recounts_write_only_current_slots_of_counting_vips() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let (idx, generation) = {
            let b = &core.vip(&id).unwrap().backends[&a];
            (b.index, b.generation)
        };
        let counts = |core: &Core<Recorder>| {
            core.dataplane()
                .writes
                .iter()
                .filter(|w| matches!(w, Write::ActiveCount(..)))
                .count()
        };
        assert!(
            !core.set_active_count(idx, generation, 5).unwrap(),
            "maglev VIPs count nothing"
        );
        core.set_scheduler(&id, Scheduler::Lc).unwrap();
        assert!(core.set_active_count(idx, generation, 5).unwrap());
        assert!(matches!(
            core.dataplane().writes.last(),
            Some(Write::ActiveCount(i, 5)) if *i == idx
        ));
        assert!(
            !core.set_active_count(idx, generation + 1, 6).unwrap(),
            "another generation: the slot holds another backend"
        );
        core.remove_backend(&id, a).unwrap();
        assert!(!core.set_active_count(idx, generation, 7).unwrap());
        assert_eq!(counts(&core), 1);
    }

    #[test]
    fn drain_keeps_backend_active_but_out_of_table() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let a: IpAddr = "198.18.0.12".parse().unwrap();
        let idx = core.vip(&id).unwrap().backends[&a].index;
        core.set_drained(&id, a, true).unwrap();
        assert!(!live(&core, &id).1.contains(&idx));
        let flags = |core: &Core<Recorder>| core.dataplane().backends[&idx].flags;
        assert_ne!(
            flags(&core) & BACKEND_F_ACTIVE,
            0,
            "drained backends keep their flows"
        );
        assert_ne!(
            flags(&core) & BACKEND_F_NO_NEW,
            0,
            "and take no new connections"
        );
        core.set_drained(&id, a, false).unwrap();
        assert!(live(&core, &id).1.contains(&idx));
        assert_eq!(flags(&core) & BACKEND_F_NO_NEW, 0, "undrained");
    }

    #[test]
    fn backups_take_new_flows_only_while_no_other_backend_can() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "198.18.0.11".parse().unwrap(),
            "198.18.0.12".parse().unwrap(),
            "198.18.0.13".parse().unwrap(),
        );
        core.add_backend(
            &id,
            BackendConfig {
                max_conns: None,
                quic_server_id: None,
                backup: true,
                ..backend("198.18.0.13")
            },
        )
        .unwrap();
        let idx = |core: &Core<Recorder>, x: IpAddr| core.vip(&id).unwrap().backends[&x].index;
        let (ia, ib, ic) = (idx(&core, a), idx(&core, b), idx(&core, c));
        let entry = |core: &Core<Recorder>| core.dataplane().backends[&ic];
        let members = |core: &Core<Recorder>| {
            let mut m: Vec<u32> = live(core, &id).1;
            m.sort_unstable();
            m.dedup();
            m
        };
        // Standby: active (a client's recorded flow would go on), out of the table, and a
        // client reusing a recorded 5-tuple of it re-picks.
        assert_eq!(members(&core), [ia, ib]);
        assert_eq!(
            entry(&core).flags & (BACKEND_F_ACTIVE | BACKEND_F_NO_NEW),
            BACKEND_F_ACTIVE | BACKEND_F_NO_NEW
        );
        assert!(core.vip(&id).unwrap().backends[&c].standby);
        // From its first write on: a slot can be a running balancer's (pinned state).
        let first = core
            .dataplane()
            .writes
            .iter()
            .find_map(|x| match x {
                Write::Backend(i, e) if *i == ic => Some(e.flags),
                _ => None,
            })
            .expect("the backup's entry written");
        assert_ne!(first & BACKEND_F_NO_NEW, 0);

        // One regular backend left: the backup still waits.
        core.set_health(&id, a, false).unwrap();
        assert_eq!(members(&core), [ib]);
        // None left (down, or drained: what matters is that none takes new flows): the
        // backup's entry, a new cache epoch and no NO_NEW, is written before the table
        // naming it.
        let epoch = entry(&core).cache_epoch;
        let writes = core.dataplane().writes.len();
        core.set_drained(&id, b, true).unwrap();
        assert_eq!(members(&core), [ic]);
        assert_eq!(entry(&core).flags & BACKEND_F_NO_NEW, 0);
        assert_ne!(entry(&core).cache_epoch, epoch);
        let w = &core.dataplane().writes[writes..];
        let backup_written = w
            .iter()
            .position(|x| matches!(x, Write::Backend(i, e) if *i == ic && e.flags & BACKEND_F_NO_NEW == 0))
            .expect("the backup's entry written");
        let flipped = w
            .iter()
            .position(|x| matches!(x, Write::Vip(..)))
            .expect("the VIP flipped");
        assert!(backup_written < flipped, "{w:?}");
        assert!(!core.vip(&id).unwrap().backends[&c].standby);

        // A regular backend back: the table without the backup goes live first, then its
        // entry takes no new flows again; its recorded flows stay (still active).
        let writes = core.dataplane().writes.len();
        core.set_health(&id, a, true).unwrap();
        assert_eq!(members(&core), [ia]);
        assert_eq!(
            entry(&core).flags & (BACKEND_F_ACTIVE | BACKEND_F_NO_NEW),
            BACKEND_F_ACTIVE | BACKEND_F_NO_NEW
        );
        let w = &core.dataplane().writes[writes..];
        let flipped = w.iter().position(|x| matches!(x, Write::Vip(..))).unwrap();
        let held_back = w
            .iter()
            .rposition(|x| matches!(x, Write::Backend(i, _) if *i == ic))
            .unwrap();
        assert!(flipped < held_back, "{w:?}");

        // A backup made a regular backend joins at once; the last regular one removed
        // leaves a backup alone in the table.
        core.set_backup(&id, c, false).unwrap();
        assert_eq!(members(&core), [ia, ic]);
        core.set_backup(&id, a, true).unwrap();
        assert_eq!(members(&core), [ic]);
        core.remove_backend(&id, c).unwrap();
        assert_eq!(members(&core), [ia]);

        // A failed flip leaves the backups as they were, in the core and in the data plane.
        core.add_backend(&id, backend("198.18.0.13")).unwrap();
        let ic = idx(&core, c);
        assert_eq!(members(&core), [ic]);
        core.dataplane_mut().fail_table_after = Some(0);
        assert!(core.set_health(&id, c, false).is_err());
        assert!(core.vip(&id).unwrap().backends[&a].standby);
        assert_ne!(
            core.dataplane().backends[&ia].flags & BACKEND_F_NO_NEW,
            0,
            "a backup left in standby after a failed flip"
        );
        assert_eq!(members(&core), [ic]);
    }

    #[test]
    fn cache_epochs_change_on_reuse_and_on_every_return_to_the_table() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let a: IpAddr = "198.18.0.12".parse().unwrap();
        let idx = core.vip(&id).unwrap().backends[&a].index;
        let epoch = |core: &Core<Recorder>, i: u32| core.dataplane().backends[&i].cache_epoch;
        let mut last = epoch(&core, idx);
        // (change, whether the backend comes back into the table with it)
        type Change = fn(&mut Core<Recorder>, &VipId, IpAddr);
        let steps: [(&str, Change, bool); 7] = [
            (
                "weight 3",
                |c, id, a| c.set_weight(id, a, 3).unwrap(),
                false,
            ),
            (
                "drain",
                |c, id, a| c.set_drained(id, a, true).unwrap(),
                false,
            ),
            (
                "undrain",
                |c, id, a| c.set_drained(id, a, false).unwrap(),
                true,
            ),
            (
                "weight 0",
                |c, id, a| c.set_weight(id, a, 0).unwrap(),
                false,
            ),
            ("weight 1", |c, id, a| c.set_weight(id, a, 1).unwrap(), true),
            (
                "down",
                |c, id, a| assert!(c.set_health(id, a, false).unwrap()),
                false,
            ),
            (
                "up",
                |c, id, a| assert!(c.set_health(id, a, true).unwrap()),
                true,
            ),
        ];
        for (what, change, back) in steps {
            change(&mut core, &id, a);
            let now = epoch(&core, idx);
            assert_eq!(now != last, back, "{what}: epoch {last} → {now}");
            last = now;
        }
        // A slot's next holder. Slots are handed out oldest-freed first, so a freed slot
        // comes back only through an inherited claim: the other backend's, here.
        let other: IpAddr = "198.18.0.11".parse().unwrap();
        let other_idx = core.vip(&id).unwrap().backends[&other].index;
        let before = epoch(&core, other_idx);
        core.remove_backend(&id, other).unwrap();
        core.inherit_slots(&HashMap::from([(other_idx, (vip_tag(&id), other, 0))]));
        core.add_backend(&id, backend("198.18.0.11")).unwrap();
        assert_eq!(
            core.vip(&id).unwrap().backends[&other].index,
            other_idx,
            "same slot"
        );
        assert_ne!(epoch(&core, other_idx), before, "a new holder, a new epoch");
    }

    #[test]
    fn a_table_write_that_fails_half_way_leaves_no_stray_slot_behind() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let c: IpAddr = "198.18.0.13".parse().unwrap();
        let b: IpAddr = "198.18.0.12".parse().unwrap();
        let c_idx = core.vip(&id).unwrap().backends[&c].index;
        // Two changes: both halves of the VIP's table have been written and are shadowed.
        core.set_weight(&id, b, 2).unwrap();
        core.set_weight(&id, b, 1).unwrap();
        // A reweight whose table write stops after some slots (the map is written slot by
        // slot): refused, the old table stays live, and the half it wrote into is stale.
        core.dataplane_mut().fail_table_after = Some(4000);
        assert!(core.set_weight(&id, a, 3).is_err());
        // The next change rebuilds that half: every slot must be this change's.
        core.remove_backend(&id, c).unwrap();
        let (_, live) = live(&core, &id);
        let want = core.vip(&id).unwrap().table();
        let stray = live.iter().zip(want).filter(|(l, w)| l != w).count();
        assert_eq!(
            (live.len(), stray),
            (want.len(), 0),
            "slots differ from the core's table"
        );
        assert!(
            !live.contains(&c_idx),
            "a removed backend's slot stayed live"
        );
    }

    /// Every live table (every VIP entry the data plane holds, the core's or not) points
    /// only at active slots of its own VIP, and no slot serves two VIPs: what a packet can
    /// meet, whatever writes failed before.
    fn check_packets_meet_only_their_own_backends(core: &Core<Recorder>, ids: &[VipId]) {
        let dp = core.dataplane();
        let mut owner: HashMap<u32, VipId> = HashMap::new();
        for (key, info) in &dp.vips {
            if info.flags & VIP_F_ADDR_ONLY != 0 || info.table_size == 0 {
                continue;
            }
            let id = ids
                .iter()
                .find(|i| vip_key(i) == *key)
                .expect("a VIP entry the test never made");
            let table = &dp.tables[&info.table_id][..info.table_size as usize];
            for &idx in table.iter().filter(|&&i| i != 0) {
                let b = dp
                    .backends
                    .get(&idx)
                    .expect("a table names a slot never written");
                assert_ne!(
                    b.flags & BACKEND_F_ACTIVE,
                    0,
                    "{id}: slot {idx} is inactive"
                );
                assert_eq!(b.vip_tag, vip_tag(id), "{id}: slot {idx} is another VIP's");
                if let Some(other) = owner.insert(idx, *id) {
                    assert_eq!(other, *id, "slot {idx} serves two VIPs");
                }
            }
        }
    }

    #[test]
    fn failed_writes_never_let_a_packet_reach_another_vips_backend() {
        let ids: Vec<VipId> = [
            "198.18.1.1:80/tcp",
            "198.18.1.1:81/tcp",
            "198.18.1.2:80/tcp",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let addrs: Vec<IpAddr> = (11..=15)
            .map(|i| format!("198.18.0.{i}").parse().unwrap())
            .collect();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let mut rng = crate::testing::Lcg(0x6661_696c);
        let mut next = |n: usize| rng.below(n);
        let (mut failed, mut done) = (0, 0);
        let mut refusals: BTreeMap<&str, u32> = BTreeMap::new();
        for _ in 0..3000 {
            let id = ids[next(ids.len())];
            let addr = addrs[next(addrs.len())];
            match next(8) {
                0 => core.dataplane_mut().fail_next = true,
                1 => core.dataplane_mut().fail_table_after = Some(next(2000)),
                _ => {}
            }
            let result = match next(10) {
                0 => {
                    let mut v = vip(&[]);
                    v.address = id.address;
                    v.port = id.port;
                    v.table_size = Some(1009);
                    v.backends = addrs
                        .iter()
                        .filter_map(|a| {
                            let (take, backup) = (next(2) == 0, next(4) == 0);
                            take.then(|| BackendConfig {
                                max_conns: None,
                                quic_server_id: None,
                                backup,
                                ..backend(&a.to_string())
                            })
                        })
                        .collect();
                    core.add_vip(v)
                }
                1 => core.remove_vip(&id).map(drop),
                2 | 3 => core.add_backend(&id, backend(&addr.to_string())),
                4 => core.remove_backend(&id, addr),
                5 => core.set_weight(&id, addr, [0, 1, 3][next(3)]),
                6 => core.set_drained(&id, addr, next(2) == 0),
                7 => core.set_health(&id, addr, next(2) == 0).map(drop),
                8 => core.set_backup(&id, addr, next(2) == 0),
                _ => core.set_scheduler(&id, [Scheduler::Maglev, Scheduler::Wrr][next(2)]),
            };
            // A failure armed but not reached stays armed for a later op; disarm it so that
            // each op's outcome is its own.
            core.dataplane_mut().fail_next = false;
            core.dataplane_mut().fail_table_after = None;
            match result {
                Err(CoreError::Dataplane(_)) => failed += 1,
                Ok(()) => done += 1,
                Err(e) => *refusals.entry(e.code()).or_insert(0) += 1,
            }
            check_packets_meet_only_their_own_backends(&core, &ids);
        }
        assert!(
            failed > 100 && done > 500,
            "{failed} failed, {done} done, refused {refusals:?}"
        );
        // Nothing leaked: with every VIP removed, every index and slot is free again.
        for id in &ids {
            let _ = core.remove_vip(id);
        }
        assert!(
            core.dataplane().vips.is_empty(),
            "entries left: {:?}",
            core.dataplane().vips
        );
        assert_eq!(core.vip_ids.free.len() as u32, settings().max_vips);
        assert_eq!(core.backend_ids.free.len() as u32, MAX_BACKENDS - 1);
    }

    #[test]
    fn a_scheduler_change_that_cannot_be_written_is_not_kept() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let info = |core: &Core<Recorder>| core.dataplane().vips[&vip_key(&id)];
        let live = info(&core);
        core.dataplane_mut().fail_next = true;
        assert!(core.set_scheduler(&id, Scheduler::Wrr).is_err());
        assert_eq!(core.vip(&id).unwrap().config.scheduler, Scheduler::Maglev);
        assert_eq!(info(&core), live, "the data plane kept the old table");
        // Asked again, it is made again.
        core.set_scheduler(&id, Scheduler::Wrr).unwrap();
        assert_eq!(core.vip(&id).unwrap().config.scheduler, Scheduler::Wrr);
        assert_ne!(info(&core).flags, live.flags, "wrr's table is live");
    }

    #[test]
    fn leaving_agent_or_lrt_resets_what_only_they_set() {
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let share = |core: &Core<Recorder>, id: &VipId| {
            let v = core.vip(id).unwrap();
            let idx = v.backends[&a].index;
            v.table().iter().filter(|&&s| s == idx).count() as f64 / v.table().len() as f64
        };
        // An agent called .11 down and at 10 %: out of the table.
        let mut v = vip(&["198.18.0.11", "198.18.0.12"]);
        v.scheduler = Scheduler::Agent;
        v.agent = Some(crate::config::AgentConfig {
            port: 5555,
            interval_ms: 1000,
        });
        let id = v.id();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        core.add_vip(v).unwrap();
        let report = AgentReport {
            down: true,
            drain: true,
            pct: Some(10),
        };
        core.set_agent(&id, a, report).unwrap();
        assert_eq!(share(&core, &id), 0.0);
        let epoch = core.vip(&id).unwrap().backends[&a].cache_epoch;
        core.set_scheduler(&id, Scheduler::Maglev).unwrap();
        let b = &core.vip(&id).unwrap().backends[&a];
        assert!(b.in_table() && b.factor_pct == 100, "{b:?}");
        assert_ne!(b.cache_epoch, epoch, "back in the table: a new cache epoch");
        let entry = core.dataplane().backends[&b.index];
        assert!(entry.flags & BACKEND_F_ACTIVE != 0 && entry.cache_epoch == b.cache_epoch);
        assert!((share(&core, &id) - 0.5).abs() < 0.02);
        // Back to agent: the next report decides again.
        core.set_scheduler(&id, Scheduler::Agent).unwrap();
        assert!(core.vip(&id).unwrap().backends[&a].in_table());

        // lrt found .11 slow: 1 % of its weight, until the VIP leaves lrt.
        let mut v = vip(&["198.18.0.11", "198.18.0.12"]);
        v.scheduler = Scheduler::Lrt;
        let id = v.id();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        core.add_vip(v).unwrap();
        core.set_factor(&id, a, 1).unwrap();
        assert!(share(&core, &id) < 0.02);
        core.set_scheduler(&id, Scheduler::Wlc).unwrap();
        assert!((share(&core, &id) - 0.5).abs() < 0.02);
    }

    #[test]
    fn client_prefixes_are_written_before_the_entry_that_uses_them_and_taken_out_after() {
        let pfx = |s: &str| s.parse::<SourcePrefix>().unwrap();
        let mut v = vip(&["198.18.0.11"]);
        v.allowed_sources = vec![pfx("198.18.0.0/24"), pfx("198.19.7.1")];
        let id = v.id();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        core.add_vip(v).unwrap();
        let index = core.vip(&id).unwrap().id;
        let keys = |core: &Core<Recorder>| -> Vec<(u32, [u8; 4])> {
            core.dataplane()
                .source_ranges
                .iter()
                .map(|(len, r)| {
                    assert_eq!(r.vip_id, index);
                    (len - 32, r.addr[0].to_ne_bytes())
                })
                .collect()
        };
        assert_eq!(keys(&core), [(24, [198, 18, 0, 0]), (32, [198, 19, 7, 1])]);
        let flag = |core: &Core<Recorder>| {
            core.dataplane().vips[&vip_key(&id)].flags & VIP_F_SRC_RANGES != 0
        };
        assert!(flag(&core));
        let writes = &core.dataplane().writes;
        let last_range = writes
            .iter()
            .rposition(|w| matches!(w, Write::SourceRange(..)))
            .unwrap();
        let entry = writes
            .iter()
            .rposition(|w| matches!(w, Write::Vip(k, _) if *k == vip_key(&id)))
            .unwrap();
        assert!(last_range < entry, "prefixes before the entry: {writes:?}");

        // Changed: the new prefix in before the entry is rewritten, the old one out after.
        let n = core.dataplane().writes.len();
        core.set_sources(&id, vec![pfx("198.18.0.0/24"), pfx("198.20.0.0/16")])
            .unwrap();
        let new: Vec<&Write> = core.dataplane().writes[n..].iter().collect();
        let at = |f: &dyn Fn(&Write) -> bool| new.iter().position(|w| f(w)).unwrap();
        let (added, entry, removed) = (
            at(&|w| matches!(w, Write::SourceRange(..))),
            at(&|w| matches!(w, Write::Vip(..))),
            at(&|w| matches!(w, Write::RemoveSourceRange(..))),
        );
        assert!(added < entry && entry < removed, "{new:?}");
        assert_eq!(keys(&core), [(16, [198, 20, 0, 0]), (24, [198, 18, 0, 0])]);

        // Every client again: the flag goes first, then the prefixes.
        let n = core.dataplane().writes.len();
        core.set_sources(&id, Vec::new()).unwrap();
        assert!(!flag(&core) && keys(&core).is_empty());
        let new = &core.dataplane().writes[n..];
        assert!(
            matches!(new.last(), Some(Write::RemoveSourceRange(..))),
            "{new:?}"
        );

        // Refused: another family, nothing written; a failed write: the old list stays.
        core.set_sources(&id, vec![pfx("198.18.0.0/24")]).unwrap();
        let n = core.dataplane().writes.len();
        assert!(core.set_sources(&id, vec![pfx("fd00::/8")]).is_err());
        assert_eq!(core.dataplane().writes.len(), n);
        core.dataplane_mut().fail_next = true;
        assert!(core.set_sources(&id, vec![pfx("198.21.0.0/16")]).is_err());
        assert_eq!(
            core.vip(&id).unwrap().config.allowed_sources,
            [pfx("198.18.0.0/24")]
        );
        assert_eq!(keys(&core), [(24, [198, 18, 0, 0])]);
        assert!(flag(&core));

        // Removed, and its index reused by a VIP for every client: nothing left over.
        core.remove_vip(&id).unwrap();
        assert!(core.dataplane().source_ranges.is_empty());
        let mut v = vip(&["198.18.0.11"]);
        v.port = 81;
        core.add_vip(v).unwrap();
        assert!(core.dataplane().source_ranges.is_empty());
    }

    #[test]
    fn a_ramping_backend_gets_its_share_of_the_weight_from_its_first_table() {
        let (a, c): (IpAddr, IpAddr) = (
            "198.18.0.11".parse().unwrap(),
            "198.18.0.13".parse().unwrap(),
        );
        let share = |core: &Core<Recorder>, id: &VipId, addr: IpAddr| {
            let v = core.vip(id).unwrap();
            let idx = v.backends[&addr].index;
            v.table().iter().filter(|&&s| s == idx).count() as f64 / v.table().len() as f64
        };
        let mut v = vip(&["198.18.0.11", "198.18.0.12"]);
        v.slow_start_s = Some(60);
        let id = v.id();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        core.add_vip(v).unwrap();
        // 25 % of weight 1 against weight 1: a fifth of the table.
        assert!(core.set_ramp(&id, a, 25).unwrap());
        assert_eq!(core.vip(&id).unwrap().backends[&a].effective_weight(), 25);
        assert!(
            (share(&core, &id, a) - 0.2).abs() < 0.02,
            "{}",
            share(&core, &id, a)
        );
        let entry = core.dataplane().backends[&core.vip(&id).unwrap().backends[&a].index];
        assert_eq!(
            entry.weight, 25,
            "the data plane's weight (wlc) is ramped too"
        );
        assert!(core.set_ramp(&id, a, 100).unwrap());
        assert!((share(&core, &id, a) - 0.5).abs() < 0.02);
        // Added ramped: its first table already holds it at 1 %.
        let tables = core.dataplane().writes.len();
        core.add_backend_ramped(&id, backend("198.18.0.13"), 1)
            .unwrap();
        assert!(share(&core, &id, c) > 0.0 && share(&core, &id, c) < 0.01);
        assert!(core.dataplane().writes.len() > tables);
        // Never below one hundredth of a weight unit: 1 % of weight 1 still counts.
        let mut b = core.vip(&id).unwrap().backends[&c].clone();
        b.factor_pct = 1;
        assert_eq!(b.effective_weight(), 1);
        // A scheduler that ignores weights is refused while the VIP has a slow start, and
        // the slow start while the VIP has one.
        let e = core.set_scheduler(&id, Scheduler::Lc).unwrap_err();
        assert!(e.to_string().contains("slow start"), "{e}");
        core.set_slow_start(&id, None).unwrap();
        core.set_scheduler(&id, Scheduler::Rr).unwrap();
        let e = core.set_slow_start(&id, Some(30)).unwrap_err();
        assert!(e.to_string().contains("use wrr"), "{e}");
        assert_eq!(core.vip(&id).unwrap().config.slow_start_s, None);
    }

    #[test]
    fn agent_without_agent_settings_is_refused_and_a_failed_switch_keeps_the_states() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        let n = core.dataplane().writes.len();
        let e = core.set_scheduler(&id, Scheduler::Agent).unwrap_err();
        assert!(e.to_string().contains("agent"), "{e}");
        assert_eq!(core.vip(&id).unwrap().config.scheduler, Scheduler::Maglev);
        assert_eq!(core.dataplane().writes.len(), n, "nothing written");

        // lrt → maglev whose table write fails: lrt and its factor stay, entries too.
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let mut v = vip(&["198.18.0.11", "198.18.0.12"]);
        v.scheduler = Scheduler::Lrt;
        let id = v.id();
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        core.add_vip(v).unwrap();
        core.set_factor(&id, a, 5).unwrap();
        let idx = core.vip(&id).unwrap().backends[&a].index;
        let entry = core.dataplane().backends[&idx];
        core.dataplane_mut().fail_table_after = Some(10);
        assert!(core.set_scheduler(&id, Scheduler::Maglev).is_err());
        let v = core.vip(&id).unwrap();
        assert_eq!(
            (v.config.scheduler, v.backends[&a].factor_pct),
            (Scheduler::Lrt, 5)
        );
        assert_eq!(
            core.dataplane().backends[&idx],
            entry,
            "the entry went back"
        );
    }

    #[test]
    fn a_next_hop_on_another_interface_registers_its_port_first() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let hop = |ifindex| NextHop {
            ifindex,
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
        };
        let (a, b) = (
            "198.18.0.11".parse::<IpAddr>().unwrap(),
            "198.18.0.12".parse::<IpAddr>().unwrap(),
        );
        // The port's registration fails: the next hop is not recorded either.
        core.dataplane_mut().fail_next = true;
        assert!(core.set_nexthop(&id, a, Some(hop(7))).is_err());
        assert_eq!(core.vip(&id).unwrap().backends[&a].nexthop, None);
        let n = core.dataplane().writes.len();
        assert!(core.set_nexthop(&id, a, Some(hop(7))).unwrap());
        assert!(core.set_nexthop(&id, b, Some(hop(7))).unwrap());
        let idx = core.vip(&id).unwrap().backends[&a].index;
        let writes = &core.dataplane().writes[n..];
        assert!(
            matches!(writes, [Write::TxPort(7), Write::Backend(i, _), Write::Backend(..)] if *i == idx),
            "port once, before the entry that names it: {writes:?}"
        );
        // Registered early (an unresolved neighbour's egress): not registered again when
        // the next hop comes.
        let n = core.dataplane().writes.len();
        core.add_tx_port(9).unwrap();
        core.add_tx_port(9).unwrap();
        core.set_nexthop(&id, a, Some(hop(9))).unwrap();
        let writes = &core.dataplane().writes[n..];
        assert!(
            matches!(writes, [Write::TxPort(9), Write::Backend(..)]),
            "port once: {writes:?}"
        );
    }

    #[test]
    fn an_mtu_too_small_for_ipv6_s_minimum_in_the_tunnel_is_refused() {
        let core_at = |mtu| {
            let s = Settings {
                src_v6: Some("fd00::2".parse().unwrap()),
                mtu,
                ..settings()
            };
            Core::new(Recorder::default(), s).unwrap()
        };
        let v6 = |backends: &[&str]| VipConfig {
            address: "fd00::1:1".parse().unwrap(),
            ..vip(backends)
        };
        // 1280 + 40 through an IPv6 tunnel, + 20 through an IPv4 one.
        for (mtu, addr, ok) in [
            (1319, "fd00::11", false),
            (1320, "fd00::11", true),
            (1299, "198.18.0.11", false),
            (1300, "198.18.0.11", true),
        ] {
            let mut core = core_at(mtu);
            let r = core.add_vip(v6(&[addr]));
            assert_eq!(r.is_ok(), ok, "mtu {mtu}, backend {addr}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("1280"), "{e}");
                assert!(core.vips().next().is_none(), "nothing added");
            }
            // Added later, to a VIP without backends: refused the same way.
            let mut core = core_at(mtu);
            core.add_vip(v6(&[])).unwrap();
            let id = v6(&[]).id();
            assert_eq!(core.add_backend(&id, backend(addr)).is_ok(), ok);
        }
        // IPv4 VIPs have no such floor.
        core_at(600).add_vip(vip(&["198.18.0.11"])).unwrap();
    }

    #[test]
    fn all_down_gives_an_empty_table() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        core.set_health(&id, "198.18.0.11".parse().unwrap(), false)
            .unwrap();
        assert_eq!(live(&core, &id).0.table_size, 0);
    }

    #[test]
    fn refused_requests_change_nothing() {
        let (mut core, id) = core_with(&["198.18.0.11"]);
        let n = core.dataplane().writes.len();
        let other: VipId = "198.18.9.9:80/tcp".parse().unwrap();
        let b = |a: &str, w| BackendConfig {
            max_conns: None,
            quic_server_id: None,
            address: a.parse().unwrap(),
            weight: w,
            drained: false,
            backup: false,
        };
        let errs = [
            core.add_vip(vip(&["198.18.0.11"])).unwrap_err().code(),
            core.add_backend(&id, b("198.18.0.11", 1))
                .unwrap_err()
                .code(),
            core.add_backend(&id, b("198.18.0.12", 99_999))
                .unwrap_err()
                .code(),
            core.add_backend(&id, b("fd00::12", 1)).unwrap_err().code(),
            core.add_backend(&other, b("198.18.0.12", 1))
                .unwrap_err()
                .code(),
            core.remove_backend(&id, "198.18.0.99".parse().unwrap())
                .unwrap_err()
                .code(),
            core.set_weight(&id, "198.18.0.11".parse().unwrap(), 10_001)
                .unwrap_err()
                .code(),
            core.remove_vip(&other).unwrap_err().code(),
        ];
        assert_eq!(
            errs,
            [
                "exists",
                "exists",
                "invalid",
                "no_source",
                "unknown_vip",
                "unknown_backend",
                "invalid",
                "unknown_vip"
            ]
        );
        assert_eq!(
            core.dataplane().writes.len(),
            n,
            "a refused request wrote to the data plane"
        );
    }

    #[test]
    fn capacity_limits_are_refused_cleanly() {
        let mut core = Core::new(
            Recorder::default(),
            Settings {
                max_vips: 1,
                ..settings()
            },
        )
        .unwrap();
        core.add_vip(vip(&[])).unwrap();
        let mut second = vip(&[]);
        second.port = 81;
        assert_eq!(core.add_vip(second).unwrap_err().code(), "capacity");
    }

    #[test]
    fn a_vips_traffic_keeps_what_removed_backends_carried() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let a: IpAddr = "198.18.0.11".parse().unwrap();
        let b: IpAddr = "198.18.0.12".parse().unwrap();
        let ia = core.vip(&id).unwrap().backends[&a].index;
        let ib = core.vip(&id).unwrap().backends[&b].index;
        let t = |p: u64| TrafficStats {
            packets: p,
            bytes: p * 100,
            new_flows: p / 10,
        };
        core.dataplane_mut().traffic.insert(ia, t(10));
        core.dataplane_mut().traffic.insert(ib, t(20));
        let vip = core.vip(&id).unwrap();
        assert_eq!(vip.traffic(core.dataplane()), t(30));

        core.remove_backend(&id, a).unwrap();
        // The slot goes back to the pool; its last figures stay with the VIP.
        let vip = core.vip(&id).unwrap();
        assert_eq!(vip.traffic(core.dataplane()), t(30));
        core.dataplane_mut().traffic.insert(ib, t(25));
        let vip = core.vip(&id).unwrap();
        assert_eq!(vip.traffic(core.dataplane()), t(35));

        // A new backend starts from a cleared slot: the VIP's figures do not move.
        core.add_backend(&id, backend("198.18.0.13")).unwrap();
        let vip = core.vip(&id).unwrap();
        assert_eq!(vip.traffic(core.dataplane()), t(35));

        // The removed backend's share is recorded for a next daemon, and its slot no longer
        // holds it (a next daemon would count it twice).
        assert_eq!(core.dataplane().retired.get(&vip_key(&id)), Some(&t(10)));
        assert_eq!(core.dataplane().backend(ia), TrafficStats::default());
        // A removed VIP takes its record with it.
        core.remove_vip(&id).unwrap();
        assert!(core.dataplane().retired.is_empty());
    }

    #[test]
    fn a_restart_keeps_every_share_of_a_vips_traffic() {
        let t = |p: u64| TrafficStats {
            packets: p,
            bytes: p * 100,
            new_flows: p / 10,
        };
        // The last daemon: web over .11, .12, .13, then .13 removed (its share recorded).
        let (mut last, id) = core_with(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
        let addr = |a: &str| a.parse::<IpAddr>().unwrap();
        let index =
            |core: &Core<Recorder>, a: &str| core.vip(&id).unwrap().backends[&addr(a)].index;
        let (i11, i12, i13) = (
            index(&last, "198.18.0.11"),
            index(&last, "198.18.0.12"),
            index(&last, "198.18.0.13"),
        );
        for (i, p) in [(i11, 20), (i12, 5), (i13, 10)] {
            last.dataplane_mut().traffic.insert(i, t(p));
        }
        last.remove_backend(&id, addr("198.18.0.13")).unwrap();
        assert_eq!(last.vip(&id).unwrap().traffic(last.dataplane()), t(35));

        // What outlives it: the slots, their traffic, the record; and a record of a VIP
        // that the next config drops.
        let gone = VipConfig {
            port: 81,
            ..vip(&[])
        };
        let mut dp = Recorder {
            traffic: last.dataplane().traffic.clone(),
            retired: last.dataplane().retired.clone(),
            ..Recorder::default()
        };
        dp.retired.insert(vip_key(&gone.id()), t(7));
        let slots: HashMap<u32, (u32, IpAddr, u32)> = last
            .dataplane()
            .backends
            .iter()
            .map(|(&i, b)| {
                let a = lb_common::addr::from_words(b.addr, b.family).unwrap();
                (i, (b.vip_tag, a, b.generation))
            })
            .collect();

        // The next daemon's config drops .12 as well.
        let mut next = Core::new(dp, settings()).unwrap();
        next.inherit_slots(&slots);
        next.add_vip(vip(&["198.18.0.11"])).unwrap();
        assert_eq!(index(&next, "198.18.0.11"), i11, "kept its slot");
        next.retire_inherited_slots();
        assert_eq!(
            next.vip(&id).unwrap().traffic(next.dataplane()),
            t(35),
            "the VIP's figures went down across the restart"
        );
        assert_eq!(next.dataplane().retired.get(&vip_key(&id)), Some(&t(15)));
        assert_eq!(next.dataplane().backend(i12), TrafficStats::default());
        assert!(
            !next.dataplane().retired.contains_key(&vip_key(&gone.id())),
            "a VIP no longer configured keeps its record"
        );

        // .12 back: its old slot, cleared, so its share is not counted twice.
        next.add_backend(&id, backend("198.18.0.12")).unwrap();
        assert_eq!(index(&next, "198.18.0.12"), i12);
        assert_eq!(next.vip(&id).unwrap().traffic(next.dataplane()), t(35));
    }

    #[test]
    fn the_all_ports_flag_is_set_before_the_first_all_ports_vip_and_cleared_after_the_last() {
        let (mut core, _) = core_with(&["198.18.0.11"]);
        let flags = |core: &Core<Recorder>| -> Vec<u32> {
            core.dataplane()
                .writes
                .iter()
                .filter_map(|w| match w {
                    Write::Config(c) => Some(c.flags & CFG_F_ALL_PORTS),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            flags(&core),
            [0],
            "written once, at start, without the flag"
        );
        let all = |addr: &str| {
            let mut v = vip(&["198.18.0.12"]);
            v.address = addr.parse().unwrap();
            v.port = 0;
            v.health_check = Some(HealthCheckConfig {
                kind: crate::health::CheckKind::Icmp,
                ..HealthCheckConfig::default()
            });
            v
        };
        let (a, b) = (all("198.18.1.2"), all("198.18.1.3"));
        let (a_id, b_id) = (a.id(), b.id());
        core.dataplane_mut().writes.clear();
        core.add_vip(a).unwrap();
        // The flag before the VIP's entry: its first flows must find it.
        let writes = &core.dataplane().writes;
        let config_at = writes.iter().position(|w| matches!(w, Write::Config(_)));
        let vip_at = writes
            .iter()
            .position(|w| matches!(w, Write::Vip(k, _) if *k == vip_key(&a_id)));
        assert!(config_at.unwrap() < vip_at.unwrap(), "{writes:?}");
        assert_eq!(flags(&core), [CFG_F_ALL_PORTS]);
        // Only changes are written, and the other settings stay.
        core.add_vip(b).unwrap();
        core.remove_vip(&a_id).unwrap();
        assert_eq!(flags(&core), [CFG_F_ALL_PORTS]);
        core.remove_vip(&b_id).unwrap();
        assert_eq!(flags(&core), [CFG_F_ALL_PORTS, 0]);
        let last = core.dataplane().writes.iter().rev().find_map(|w| match w {
            Write::Config(c) => Some(*c),
            _ => None,
        });
        assert_eq!(last, Some(lb_config(&settings())));
        // One whose table write fails after the flag was set leaves no flag behind.
        core.dataplane_mut().fail_table_after = Some(0);
        assert!(core.add_vip(all("198.18.1.4")).is_err());
        assert_eq!(flags(&core), [CFG_F_ALL_PORTS, 0, CFG_F_ALL_PORTS, 0]);
    }

    #[test]
    fn remove_vip_frees_slots_fifo_and_marker() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12"]);
        let used: Vec<u32> = core
            .vip(&id)
            .unwrap()
            .backends
            .values()
            .map(|b| b.index)
            .collect();
        let cfg = core.remove_vip(&id).unwrap();
        assert_eq!(cfg.backends.len(), 2);
        assert!(!core.dataplane().vips.contains_key(&vip_key(&id)));
        assert!(!core.dataplane().vips.contains_key(&marker_key(id.address)));
        for i in &used {
            assert_eq!(core.dataplane().backends[i].flags & BACKEND_F_ACTIVE, 0);
        }
        // Freed indices go to the back of the queue.
        core.add_vip(vip(&["198.18.0.13"])).unwrap();
        let fresh = core
            .vip(&id)
            .unwrap()
            .backends
            .values()
            .next()
            .unwrap()
            .index;
        assert!(!used.contains(&fresh));
    }

    #[test]
    fn flows_on_healthy_backends_keep_their_slots_when_another_leaves() {
        let (mut core, id) =
            core_with(&["198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"]);
        let (_, before) = live(&core, &id);
        let gone: IpAddr = "198.18.0.14".parse().unwrap();
        let gone_idx = core.vip(&id).unwrap().backends[&gone].index;
        core.set_health(&id, gone, false).unwrap();
        let (_, after) = live(&core, &id);
        let moved_live = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != gone_idx && b != a)
            .count();
        assert!(
            (moved_live as f64) < 0.02 * before.len() as f64,
            "{moved_live} slots of healthy backends moved"
        );
    }

    #[test]
    fn settings_become_lb_config() {
        let s = Settings {
            hashed_v4: Some(("198.19.0.0".parse().unwrap(), 0xffff)),
            record_rate_limit: 7,
            icmp_rate_limit: 9,
            gue_port: 9999,
            ..settings()
        };
        let c = lb_config(&s);
        assert_eq!(c.record_rate_limit, 7);
        assert_eq!(c.icmp_rate_limit, 9);
        assert_eq!(c.src_v4.to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(c.hashed_src_v4.to_ne_bytes(), [198, 19, 0, 0]);
        assert_eq!(c.hashed_src_v4_hostmask, 0xffff);
        assert_eq!(c.flags & CFG_F_ICMP_TOO_BIG, CFG_F_ICMP_TOO_BIG);
        assert_eq!(c.flags & CFG_F_ICMP_ECHO, 0, "off in these settings");
        assert_eq!(
            lb_config(&Settings {
                icmp_echo: true,
                ..s
            })
            .flags
                & CFG_F_ICMP_ECHO,
            CFG_F_ICMP_ECHO
        );
        assert_eq!(c.mtu, 1500);
        assert_eq!(u16::from_be(c.gue_port_be), 9999);
    }

    /// A VIP's new-flow limit reaches `VIP_FLOW_LIMITS` before the entry that flags it;
    /// lifted, the flag goes; 0 and unknown VIPs are refused with nothing written.
    #[test]
    fn new_flow_rate_limits_are_written_before_the_flag_and_lifted_with_it() {
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let mut cfg = vip(&["198.18.0.11"]);
        cfg.new_flow_rate_limit = Some(250);
        let id = cfg.id();
        core.add_vip(cfg).unwrap();
        let (info, _) = live(&core, &id);
        assert_ne!(info.flags & VIP_F_FLOW_LIMIT, 0);
        let only_vip = |vip| FlowLimits { vip, client: 0 };
        assert_eq!(core.dataplane().flow_limits[&info.vip_id], only_vip(250));
        let w = &core.dataplane().writes;
        let limit = w
            .iter()
            .position(|x| matches!(x, Write::FlowLimit(_, l) if *l == only_vip(250)))
            .unwrap();
        let vip_write = w
            .iter()
            .position(|x| matches!(x, Write::Vip(k, _) if *k == vip_key(&id)))
            .unwrap();
        assert!(limit < vip_write, "{w:?}");
        // The slot's turned-away counts start from zero: an earlier VIP's are not its.
        let cleared = w
            .iter()
            .position(|x| matches!(x, Write::ClearLimited(i) if *i == info.vip_id))
            .unwrap();
        assert!(cleared < vip_write, "{w:?}");

        let before = core.dataplane().writes.len();
        let e = core.set_new_flow_rate_limit(&id, Some(0)).unwrap_err();
        assert!(e.to_string().contains("no new flow"), "{e}");
        let other: VipId = "198.18.1.9:80/tcp".parse().unwrap();
        assert!(core.set_new_flow_rate_limit(&other, Some(5)).is_err());
        assert_eq!(core.dataplane().writes.len(), before);

        core.set_new_flow_rate_limit(&id, Some(10)).unwrap();
        assert_eq!(core.dataplane().flow_limits[&info.vip_id], only_vip(10));
        assert_ne!(live(&core, &id).0.flags & VIP_F_FLOW_LIMIT, 0);
        // The per-client limit beside it: both in the one entry, each with its flag.
        core.set_client_flow_rate_limit(&id, Some(3)).unwrap();
        assert_eq!(
            core.dataplane().flow_limits[&info.vip_id],
            FlowLimits { vip: 10, client: 3 }
        );
        let flags = live(&core, &id).0.flags;
        assert_ne!(flags & VIP_F_CLIENT_LIMIT, 0);
        assert_ne!(flags & VIP_F_FLOW_LIMIT, 0);
        let e = core.set_client_flow_rate_limit(&id, Some(0)).unwrap_err();
        assert!(e.to_string().contains("client_flow_rate_limit"), "{e}");
        core.set_client_flow_rate_limit(&id, None).unwrap();
        assert_eq!(live(&core, &id).0.flags & VIP_F_CLIENT_LIMIT, 0);
        core.set_new_flow_rate_limit(&id, None).unwrap();
        assert_eq!(live(&core, &id).0.flags & VIP_F_FLOW_LIMIT, 0);
        assert_eq!(
            core.vip(&id).unwrap().running_config().new_flow_rate_limit,
            None
        );
        // A failed write keeps what ran.
        core.dataplane_mut().fail_next = true;
        assert!(core.set_new_flow_rate_limit(&id, Some(7)).is_err());
        assert_eq!(core.vip(&id).unwrap().config.new_flow_rate_limit, None);
        assert_eq!(live(&core, &id).0.flags & VIP_F_FLOW_LIMIT, 0);
    }

    /// A GUE VIP's backends are written GUE from their first write; an IP-in-IP VIP's
    /// beside it, on the same address, are not.
    #[test]
    fn a_gue_vips_backends_carry_the_flag_from_their_first_write() {
        let mut core = Core::new(Recorder::default(), settings()).unwrap();
        let mut gue = vip(&["198.18.0.11", "198.18.0.12"]);
        gue.encap = Encap::Gue;
        let gue_id = gue.id();
        core.add_vip(gue).unwrap();
        core.add_backend(&gue_id, backend("198.18.0.13")).unwrap();
        let mut plain = vip(&["198.18.0.11"]);
        plain.port = 81;
        let plain_id = plain.id();
        core.add_vip(plain).unwrap();
        let slots = |id: &VipId| -> Vec<u32> {
            core.vip(id)
                .unwrap()
                .backends
                .values()
                .map(|b| b.index)
                .collect()
        };
        for w in &core.dataplane().writes {
            if let Write::Backend(idx, b) = w {
                let want = slots(&gue_id).contains(idx);
                assert_eq!(b.flags & BACKEND_F_GUE != 0, want, "slot {idx}: {b:?}");
            }
        }
        assert_eq!(slots(&gue_id).len(), 3);
        assert_eq!(slots(&plain_id).len(), 1);
    }

    #[test]
    fn refreshing_flow_caches_writes_new_epochs_for_the_named_slots_only() {
        let (mut core, id) = core_with(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
        let b =
            |core: &Core<Recorder>, a: &str| core.backend(&id, a.parse().unwrap()).unwrap().clone();
        let (b11, b12, b13) = (
            b(&core, "198.18.0.11"),
            b(&core, "198.18.0.12"),
            b(&core, "198.18.0.13"),
        );
        let n = core.dataplane().writes.len();
        let before = core.dataplane().backends[&b11.index];
        // .11 at its generation, .12 at an earlier one (its slot's flows were a former
        // holder's), and a slot nobody holds.
        let slots = BTreeSet::from([
            (b11.index, b11.generation),
            (b12.index, b12.generation.wrapping_sub(1)),
            (99, 1),
        ]);
        assert_eq!(core.refresh_flow_caches(&slots).unwrap(), 1);
        let writes = &core.dataplane().writes[n..];
        let [Write::Backend(index, entry)] = writes else {
            panic!("one backend written: {writes:?}");
        };
        assert_eq!(*index, b11.index);
        assert_ne!(entry.cache_epoch, b11.cache_epoch);
        // Nothing else in the entry changed, and the core keeps the new epoch.
        assert_eq!(
            Backend {
                cache_epoch: b11.cache_epoch,
                ..*entry
            },
            Backend {
                cache_epoch: b11.cache_epoch,
                ..before
            }
        );
        assert_eq!(b(&core, "198.18.0.11").cache_epoch, entry.cache_epoch);
        assert_eq!(b(&core, "198.18.0.12").cache_epoch, b12.cache_epoch);
        assert_eq!(b(&core, "198.18.0.13").cache_epoch, b13.cache_epoch);
    }
}
