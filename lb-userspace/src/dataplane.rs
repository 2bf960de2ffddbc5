//! The seam between the pure core and the kernel: every write the core makes to the data
//! plane goes through [`Dataplane`]. [`AyaDataplane`] writes the balancer's BPF maps;
//! [`Recorder`] records the writes so the core is tested without root or BPF.

use std::{collections::HashMap as StdHashMap, sync::Arc};

use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, DevMapHash, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues,
    },
    Ebpf,
};
use lb_common::{
    addr::FAMILY_V4,
    counters::COUNTER_SLOTS,
    flow::{FlowKey, FlowKeyV4},
    lookup,
    maps::{
        Backend, ConnEntry, FlowLimits, LbConfig, LimitedFlows, SourceRange, TrafficStats, VipInfo,
        VipKey, MAP_BACKENDS, MAP_BACKEND_ACTIVE, MAP_BACKEND_STATS, MAP_CONFIG, MAP_CONNS,
        MAP_CONNS_V4, MAP_LOOKUP, MAP_SOURCE_RANGES, MAP_STATS, MAP_TX_PORTS, MAP_VIPS,
        MAP_VIP_FLOW_LIMITS, MAP_VIP_LIMITED, MAP_VIP_RETIRED, MAX_TABLE_SIZE,
    },
    quic::{QuicServer, QuicServerKey, MAP_QUIC_SERVERS},
};

use crate::conntable::ConnTables;

/// A data-plane write failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel refused a map operation.
    #[error("{op} on map {map} failed: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// What we tried.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: aya::maps::MapError,
    },
    /// The devmap refused an interface.
    #[error("cannot register ifindex {ifindex} for XDP_REDIRECT: {message}")]
    TxPort {
        /// The interface.
        ifindex: u32,
        /// The kernel's answer.
        message: String,
    },
    /// The number of CPUs could not be read.
    #[error("cannot read the number of CPUs: {0}")]
    Cpus(String),
    /// The object lacks a map (wrong object embedded).
    #[error("the balancer object has no map {0}")]
    MissingMap(&'static str),
    /// The connection tables cannot be scanned.
    #[error(transparent)]
    Scan(#[from] crate::conntable::ScanError),
}

/// Writes the core makes, in the order it makes them.
pub trait Dataplane: Send {
    /// Balancer-wide settings.
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError>;
    /// Writes backend slot `idx`.
    fn set_backend(&mut self, idx: u32, backend: &Backend) -> Result<(), DataplaneError>;
    /// Writes `(slot, backend index)` pairs into lookup table `table_id`.
    fn write_table(&mut self, table_id: u32, changes: &[(u32, u32)]) -> Result<(), DataplaneError>;
    /// Inserts or replaces a VIP entry (one atomic map update).
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), DataplaneError>;
    /// Removes a VIP entry.
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
    /// Zeroes a backend slot's counters (traffic, active flows) before the slot is reused.
    fn clear_backend(&mut self, idx: u32) -> Result<(), DataplaneError>;
    /// New flows VIP `vip_id`'s limits turned away (summed over CPUs).
    fn limited(&self, vip_id: u32) -> LimitedFlows;
    /// Zeroes VIP slot `vip_id`'s limited-flow counts before a new VIP takes the slot.
    fn clear_limited(&mut self, vip_id: u32) -> Result<(), DataplaneError>;
    /// Overwrites a backend slot's active-flow count (the daemon's recount).
    fn set_active_count(&mut self, idx: u32, value: u64) -> Result<(), DataplaneError>;
    /// Traffic of backend slot `idx` (summed over CPUs). The core adds a removed backend's
    /// last figures to its VIP's, since a VIP's traffic is its backends' added up.
    fn backend(&self, idx: u32) -> TrafficStats;
    /// What the removed backends of VIP `key` carried, as last recorded (zero if nothing
    /// is): a daemon that inherits the counters (`--state-dir`) goes on from it.
    fn retired(&self, key: &VipKey) -> TrafficStats;
    /// Records what the removed backends of VIP `key` carried.
    fn set_retired(&mut self, key: &VipKey, traffic: &TrafficStats) -> Result<(), DataplaneError>;
    /// Forgets VIP `key`'s record (the VIP is gone).
    fn remove_retired(&mut self, key: &VipKey) -> Result<(), DataplaneError>;
    /// The VIPs with a record.
    fn retired_vips(&self) -> Vec<VipKey>;
    /// Lets the program `XDP_REDIRECT` to `ifindex` (`TX_PORTS`): next hops on other
    /// interfaces than the one the balancer is attached to.
    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError>;
    /// Admits a client prefix of a VIP (`SOURCE_RANGES`): `prefix_len` bits of `range`.
    fn add_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError>;
    /// Takes a client prefix of a VIP back.
    fn remove_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError>;
    /// Names the backend a QUIC server ID of a VIP routes to (`QUIC_SERVERS`).
    fn set_quic_server(
        &mut self,
        key: &QuicServerKey,
        server: &QuicServer,
    ) -> Result<(), DataplaneError>;
    /// Takes a QUIC server ID of a VIP back.
    fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), DataplaneError>;
    /// Sets the new flows each CPU admits per second to VIP index `vip_id`
    /// (`VIP_FLOW_LIMITS`; read while its entry has `VIP_F_FLOW_LIMIT`).
    fn set_flow_limit(&mut self, vip_id: u32, limits: FlowLimits) -> Result<(), DataplaneError>;
}

/// Reads the data plane's counters (summed over CPUs).
pub trait Counters {
    /// Every `STATS` slot.
    fn reasons(&self) -> Vec<u64>;
}

/// The real data plane: the balancer's maps.
pub struct AyaDataplane {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    lookup: Array<MapData, u64>,
    config: Array<MapData, LbConfig>,
    stats: PerCpuArray<MapData, lb_common::counters::Counters>,
    backend_stats: PerCpuArray<MapData, TrafficStats>,
    conns: aya::maps::HashMap<MapData, FlowKey, ConnEntry>,
    conns_v4: aya::maps::HashMap<MapData, FlowKeyV4, ConnEntry>,
    tx_ports: DevMapHash<MapData>,
    active: Array<MapData, u64>,
    retired: HashMap<MapData, VipKey, TrafficStats>,
    /// `None` only for an older build of the object opened by [`AyaDataplane::for_older_build`].
    source_ranges: Option<LpmTrie<MapData, SourceRange, u32>>,
    quic_servers: Option<HashMap<MapData, QuicServerKey, QuicServer>>,
    flow_limits: Option<Array<MapData, FlowLimits>>,
    limited: Option<PerCpuArray<MapData, LimitedFlows>>,
    tables: Arc<ConnTables>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map {
        map: name,
        op: "open",
        source,
    })
}

impl AyaDataplane {
    /// Takes the balancer's maps out of a loaded object.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut dp = Self::for_older_build(ebpf)?;
        dp.source_ranges = Some(take(ebpf, MAP_SOURCE_RANGES)?);
        dp.quic_servers = Some(take(ebpf, MAP_QUIC_SERVERS)?);
        dp.flow_limits = Some(take(ebpf, MAP_VIP_FLOW_LIMITS)?);
        dp.limited = Some(take(ebpf, MAP_VIP_LIMITED)?);
        Ok(dp)
    }

    /// As [`AyaDataplane::new`] for a build of the balancer from before client allow-lists
    /// QUIC routing and VIP flow limits (no `SOURCE_RANGES`, `QUIC_SERVERS`,
    /// `VIP_FLOW_LIMITS`): the bench's A/B runs compare such builds with the current one.
    /// Writing a prefix, a server ID or a limit to it fails (`MissingMap`).
    pub fn for_older_build(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let conns: HashMap<MapData, FlowKey, ConnEntry> = take(ebpf, MAP_CONNS)?;
        let conns_v4: HashMap<MapData, FlowKeyV4, ConnEntry> = take(ebpf, MAP_CONNS_V4)?;
        let tables = Arc::new(ConnTables::new(conns_v4.map(), conns.map())?);
        Ok(Self {
            vips: take(ebpf, MAP_VIPS)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            lookup: take(ebpf, MAP_LOOKUP)?,
            config: take(ebpf, MAP_CONFIG)?,
            stats: take(ebpf, MAP_STATS)?,
            backend_stats: take(ebpf, MAP_BACKEND_STATS)?,
            conns,
            conns_v4,
            tx_ports: take(ebpf, MAP_TX_PORTS)?,
            active: take(ebpf, MAP_BACKEND_ACTIVE)?,
            retired: take(ebpf, MAP_VIP_RETIRED)?,
            source_ranges: None,
            quic_servers: None,
            flow_limits: None,
            limited: None,
            tables,
        })
    }

    /// `SOURCE_RANGES`, missing only from an older build (see `for_older_build`).
    fn source_ranges(&mut self) -> Result<&mut LpmTrie<MapData, SourceRange, u32>, DataplaneError> {
        self.source_ranges
            .as_mut()
            .ok_or(DataplaneError::MissingMap(MAP_SOURCE_RANGES))
    }

    /// Active-flow estimate of a backend index (least-connection VIPs).
    pub fn active_flows(&self, idx: u32) -> u64 {
        let v = self.active_counter(idx);
        if v > 1 << 62 {
            0
        } else {
            v
        }
    }

    /// `BACKEND_ACTIVE[idx]` as stored: the data plane may take it below zero (wrapped).
    pub fn active_counter(&self, idx: u32) -> u64 {
        self.active.get(&idx, 0).unwrap_or(0)
    }

    /// Both connection tables, for scans that need not hold the daemon's lock.
    pub fn conn_tables(&self) -> Arc<ConnTables> {
        self.tables.clone()
    }

    /// Looks up one flow in the connection table (for `explain` and tests).
    pub fn conn(&self, key: &FlowKey) -> Option<ConnEntry> {
        if key.family == FAMILY_V4 {
            self.conns_v4.get(&FlowKeyV4::of(key), 0).ok()
        } else {
            self.conns.get(key, 0).ok()
        }
    }
}

fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}

impl Dataplane for AyaDataplane {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(MAP_CONFIG, "set"))
    }

    fn set_backend(&mut self, idx: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(idx, backend, 0)
            .map_err(map_err(MAP_BACKENDS, "set"))
    }

    fn write_table(&mut self, table_id: u32, changes: &[(u32, u32)]) -> Result<(), DataplaneError> {
        // Four slots to an entry (lb_common::lookup): each entry read once, its changed
        // slots set, written once. Changes come in slot order, so an entry's are adjacent.
        let mut i = 0;
        while i < changes.len() {
            let at = lookup::entry(table_id, changes[i].0);
            let mut word = self
                .lookup
                .get(&at, 0)
                .map_err(map_err(MAP_LOOKUP, "get"))?;
            while let Some(&(slot, value)) = changes.get(i) {
                if lookup::entry(table_id, slot) != at {
                    break;
                }
                word = lookup::with_slot(word, slot, value);
                i += 1;
            }
            self.lookup
                .set(at, word, 0)
                .map_err(map_err(MAP_LOOKUP, "set"))?;
        }
        Ok(())
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), DataplaneError> {
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(MAP_VIPS, "insert"))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.vips.remove(key).map_err(map_err(MAP_VIPS, "remove"))
    }

    fn add_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError> {
        self.source_ranges()?
            .insert(&LpmKey::new(prefix_len, *range), 1, 0)
            .map_err(map_err(MAP_SOURCE_RANGES, "insert"))
    }

    fn remove_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError> {
        self.source_ranges()?
            .remove(&LpmKey::new(prefix_len, *range))
            .map_err(map_err(MAP_SOURCE_RANGES, "remove"))
    }

    fn set_quic_server(
        &mut self,
        key: &QuicServerKey,
        server: &QuicServer,
    ) -> Result<(), DataplaneError> {
        self.quic_servers
            .as_mut()
            .ok_or(DataplaneError::MissingMap(MAP_QUIC_SERVERS))?
            .insert(key, server, 0)
            .map_err(map_err(MAP_QUIC_SERVERS, "insert"))
    }

    fn set_flow_limit(&mut self, vip_id: u32, limits: FlowLimits) -> Result<(), DataplaneError> {
        self.flow_limits
            .as_mut()
            .ok_or(DataplaneError::MissingMap(MAP_VIP_FLOW_LIMITS))?
            .set(vip_id, limits, 0)
            .map_err(map_err(MAP_VIP_FLOW_LIMITS, "set"))
    }

    fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), DataplaneError> {
        self.quic_servers
            .as_mut()
            .ok_or(DataplaneError::MissingMap(MAP_QUIC_SERVERS))?
            .remove(key)
            .map_err(map_err(MAP_QUIC_SERVERS, "remove"))
    }

    fn backend(&self, idx: u32) -> TrafficStats {
        self.backend_stats
            .get(&idx, 0)
            .map(sum_traffic)
            .unwrap_or_default()
    }

    fn set_active_count(&mut self, idx: u32, value: u64) -> Result<(), DataplaneError> {
        self.active
            .set(idx, value, 0)
            .map_err(map_err(MAP_BACKEND_ACTIVE, "set"))
    }

    fn clear_backend(&mut self, idx: u32) -> Result<(), DataplaneError> {
        self.set_active_count(idx, 0)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![TrafficStats::default(); cpus])
            .map_err(|e| DataplaneError::Cpus(e.to_string()))?;
        self.backend_stats
            .set(idx, zeros, 0)
            .map_err(map_err(MAP_BACKEND_STATS, "set"))
    }

    fn retired(&self, key: &VipKey) -> TrafficStats {
        self.retired.get(key, 0).unwrap_or_default()
    }

    fn limited(&self, vip_id: u32) -> LimitedFlows {
        self.limited
            .as_ref()
            .and_then(|m| m.get(&vip_id, 0).ok())
            .map(|per_cpu| per_cpu.iter().fold(LimitedFlows::default(), |a, b| a + *b))
            .unwrap_or_default()
    }

    fn clear_limited(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        // An older build has no counts to clear.
        let Some(m) = self.limited.as_mut() else {
            return Ok(());
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![LimitedFlows::default(); cpus])
            .map_err(|e| DataplaneError::Cpus(e.to_string()))?;
        m.set(vip_id, zeros, 0)
            .map_err(map_err(MAP_VIP_LIMITED, "set"))
    }

    fn set_retired(&mut self, key: &VipKey, traffic: &TrafficStats) -> Result<(), DataplaneError> {
        self.retired
            .insert(key, traffic, 0)
            .map_err(map_err(MAP_VIP_RETIRED, "insert"))
    }

    fn remove_retired(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        match self.retired.remove(key) {
            // Nothing recorded: nothing to forget.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            r => r.map_err(map_err(MAP_VIP_RETIRED, "remove")),
        }
    }

    fn retired_vips(&self) -> Vec<VipKey> {
        self.retired.keys().filter_map(Result::ok).collect()
    }

    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::TxPort {
                ifindex,
                message: e.to_string(),
            })
    }
}

fn sum_traffic(values: PerCpuValues<TrafficStats>) -> TrafficStats {
    values
        .iter()
        .fold(TrafficStats::default(), |acc, v| TrafficStats {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
            new_flows: acc.new_flows + v.new_flows,
        })
}

/// Every slot of a program's `STATS` map (balancer or decap: one value per CPU holding
/// every slot), summed over CPUs.
pub fn sum_reasons<T: std::borrow::Borrow<MapData>>(
    stats: &PerCpuArray<T, lb_common::counters::Counters>,
) -> Vec<u64> {
    let mut sum = vec![0u64; COUNTER_SLOTS as usize];
    if let Ok(per_cpu) = stats.get(&0, 0) {
        for cpu in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(cpu.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
    }
    sum
}

impl Counters for AyaDataplane {
    fn reasons(&self) -> Vec<u64> {
        sum_reasons(&self.stats)
    }
}

/// One recorded write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// `set_config`.
    Config(LbConfig),
    /// `set_backend`.
    Backend(u32, Backend),
    /// `write_table`: table id and changed slots.
    Table(u32, Vec<(u32, u32)>),
    /// `set_vip`.
    Vip(VipKey, VipInfo),
    /// `remove_vip`.
    RemoveVip(VipKey),
    /// `clear_backend`.
    Clear(u32),
    /// `set_active_count`.
    ActiveCount(u32, u64),
    /// `set_retired`.
    Retired(VipKey, TrafficStats),
    /// `remove_retired`.
    RemoveRetired(VipKey),
    /// `add_tx_port`.
    TxPort(u32),
    /// `add_source_range`.
    SourceRange(u32, SourceRange),
    /// `remove_source_range`.
    RemoveSourceRange(u32, SourceRange),
    /// `set_quic_server`.
    QuicServer(QuicServerKey, QuicServer),
    /// `remove_quic_server`.
    RemoveQuicServer(QuicServerKey),
    /// `set_flow_limit`.
    FlowLimit(u32, FlowLimits),
    /// `clear_limited`.
    ClearLimited(u32),
}

/// Test data plane: records writes and keeps the resulting state, and can be told to fail.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every write in order.
    pub writes: Vec<Write>,
    /// Current VIP entries.
    pub vips: StdHashMap<VipKey, VipInfo>,
    /// Current backend slots.
    pub backends: StdHashMap<u32, Backend>,
    /// Current lookup-table contents by table id.
    pub tables: StdHashMap<u32, Vec<u32>>,
    /// When set, the next write fails (tests of error paths).
    pub fail_next: bool,
    /// When set, the next table write stores this many of its changes, then fails, as the
    /// real map (written slot by slot) can.
    pub fail_table_after: Option<usize>,
    /// Traffic per backend slot, as tests set it (the real data plane's is the program's).
    pub traffic: StdHashMap<u32, TrafficStats>,
    /// Current records of removed backends' traffic per VIP (tests may stage a last
    /// daemon's).
    pub retired: StdHashMap<VipKey, TrafficStats>,
    /// Current client prefixes (prefix length, key data).
    pub source_ranges: std::collections::BTreeSet<(u32, SourceRange)>,
    /// Current QUIC server IDs (VIP id, server ID) → backend.
    pub quic_servers: std::collections::BTreeMap<(u32, u32), QuicServer>,
    /// Current per-CPU new-flow limits by VIP id.
    pub flow_limits: StdHashMap<u32, FlowLimits>,
    /// Limited-flow counts by VIP id (tests set them).
    pub limited: StdHashMap<u32, LimitedFlows>,
}

impl Recorder {
    fn check(&mut self) -> Result<(), DataplaneError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(DataplaneError::MissingMap("recorder told to fail"));
        }
        Ok(())
    }
}

impl Dataplane for Recorder {
    fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::Config(*cfg));
        Ok(())
    }

    fn set_backend(&mut self, idx: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::Backend(idx, *backend));
        self.backends.insert(idx, *backend);
        Ok(())
    }

    fn write_table(&mut self, table_id: u32, changes: &[(u32, u32)]) -> Result<(), DataplaneError> {
        self.check()?;
        let stored = self.fail_table_after.take();
        let n = stored.unwrap_or(changes.len()).min(changes.len());
        self.writes
            .push(Write::Table(table_id, changes[..n].to_vec()));
        let t = self
            .tables
            .entry(table_id)
            .or_insert_with(|| vec![0; MAX_TABLE_SIZE as usize]);
        for &(slot, v) in &changes[..n] {
            t[slot as usize] = v;
        }
        match stored {
            Some(_) => Err(DataplaneError::MissingMap(
                "recorder told to fail mid-table",
            )),
            None => Ok(()),
        }
    }

    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::Vip(*key, *info));
        self.vips.insert(*key, *info);
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::RemoveVip(*key));
        self.vips.remove(key);
        Ok(())
    }

    fn clear_backend(&mut self, idx: u32) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::Clear(idx));
        self.traffic.remove(&idx);
        Ok(())
    }

    fn set_active_count(&mut self, idx: u32, value: u64) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::ActiveCount(idx, value));
        Ok(())
    }

    fn limited(&self, vip_id: u32) -> LimitedFlows {
        self.limited.get(&vip_id).copied().unwrap_or_default()
    }

    fn clear_limited(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::ClearLimited(vip_id));
        self.limited.remove(&vip_id);
        Ok(())
    }

    fn backend(&self, idx: u32) -> TrafficStats {
        self.traffic.get(&idx).copied().unwrap_or_default()
    }

    fn retired(&self, key: &VipKey) -> TrafficStats {
        self.retired.get(key).copied().unwrap_or_default()
    }

    fn set_retired(&mut self, key: &VipKey, traffic: &TrafficStats) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::Retired(*key, *traffic));
        self.retired.insert(*key, *traffic);
        Ok(())
    }

    fn remove_retired(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::RemoveRetired(*key));
        self.retired.remove(key);
        Ok(())
    }

    fn retired_vips(&self) -> Vec<VipKey> {
        self.retired.keys().copied().collect()
    }

    fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::TxPort(ifindex));
        Ok(())
    }

    fn add_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::SourceRange(prefix_len, *range));
        self.source_ranges.insert((prefix_len, *range));
        Ok(())
    }

    fn remove_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes
            .push(Write::RemoveSourceRange(prefix_len, *range));
        self.source_ranges.remove(&(prefix_len, *range));
        Ok(())
    }

    fn set_quic_server(
        &mut self,
        key: &QuicServerKey,
        server: &QuicServer,
    ) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::QuicServer(*key, *server));
        self.quic_servers
            .insert((key.vip_id, key.server_id), *server);
        Ok(())
    }

    fn set_flow_limit(&mut self, vip_id: u32, limits: FlowLimits) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::FlowLimit(vip_id, limits));
        self.flow_limits.insert(vip_id, limits);
        Ok(())
    }

    fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), DataplaneError> {
        self.check()?;
        self.writes.push(Write::RemoveQuicServer(*key));
        self.quic_servers.remove(&(key.vip_id, key.server_id));
        Ok(())
    }
}
