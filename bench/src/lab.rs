//! A balancer loaded for measuring: VIPs and backends programmed through the real core
//! (config → `Core` → BPF maps), every backend given a fixed next hop (no FIB lookup on the
//! packet path, as `xlb run` does once neighbours are resolved), plus the handles the bench
//! needs beyond the core: the `CONFIG` flags, the connection table, the VIP map.

use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use aya::{maps::HashMap as BpfHashMap, programs::Xdp, Ebpf};
use lb_common::{
    flow::{FlowKey, FlowKeyV4},
    hash::flow_hash,
    maps::{ConnEntry, LbConfig, VipInfo, VipKey, MAP_CONFIG, MAP_CONNS_V4, MAP_VIPS},
};
use xlb::{
    config::{Config, VipId},
    core::{Core, NextHop, Settings},
    dataplane::{AyaDataplane, Counters},
    loader::{self, LoadOptions},
};
use xlb_tests::fixtures::prog_map;

/// The outer IPv4 source of tunnels in every bench config.
pub const LB_V4: &str = "198.18.0.2";
/// The outer IPv6 source.
pub const LB_V6: &str = "fd00::2";

/// One VIP of a bench config.
pub struct VipSpec {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// Backend addresses.
    pub backends: Vec<IpAddr>,
    /// What else the VIP is.
    pub kind: VipKind,
}

/// A bench VIP's options beyond its address and backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipKind {
    /// Maglev, IP-in-IP, flows recorded.
    Plain,
    /// `stateless`: no flow recorded.
    Stateless,
    /// `"encap": "gue"`.
    Gue,
    /// `quic` (2-octet server IDs), backend `i` (from 0) with server ID `i + 1`.
    Quic,
}

impl VipSpec {
    fn json(&self) -> String {
        let b: Vec<String> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, a)| match self.kind {
                VipKind::Quic => format!(r#"{{"address": "{a}", "quic_server_id": {}}}"#, i + 1),
                _ => format!(r#"{{"address": "{a}"}}"#),
            })
            .collect();
        let kind = match self.kind {
            VipKind::Plain => "",
            VipKind::Stateless => r#""stateless": true,"#,
            VipKind::Gue => r#""encap": "gue","#,
            VipKind::Quic => r#""quic": {"server_id_bytes": 2},"#,
        };
        format!(
            r#"{{"address": "{}", "port": {}, "protocol": "{}", {kind} "backends": [{}]}}"#,
            self.addr,
            self.port,
            self.proto,
            b.join(", ")
        )
    }
}

/// `n` backend addresses of one family inside the test ranges: 198.18.8.0/21 (v4; up to
/// 2048) or fd00:8::/64 (v6).
pub fn backend_addrs(n: usize, v6: bool) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            if v6 {
                IpAddr::V6(format!("fd00:8::{:x}", i + 1).parse().expect("v6 backend"))
            } else {
                let i = i + 1;
                IpAddr::V4(
                    format!("198.18.{}.{}", 8 + i / 256, i % 256)
                        .parse()
                        .expect("v4 backend"),
                )
            }
        })
        .collect()
}

/// A loaded, programmed balancer.
pub struct BenchLab {
    /// The loaded object (owns the program).
    pub ebpf: Ebpf,
    /// The core that programmed the maps.
    pub core: Core<AyaDataplane>,
}

/// The options bench labs load with: a few VIPs, `max_conns` flows per family.
pub fn load_options(max_conns: u32, flow_cache: bool) -> LoadOptions {
    LoadOptions {
        max_vips: 4,
        max_conns,
        flow_cache,
    }
}

impl BenchLab {
    /// Loads `object` (a build of the balancer) with `opts`, applies `vips` through the core
    /// and gives every backend the next hop `hop`.
    pub fn with_object(
        object: &[u8],
        vips: &[VipSpec],
        opts: LoadOptions,
        hop: NextHop,
    ) -> Result<BenchLab> {
        let body: Vec<String> = vips.iter().map(VipSpec::json).collect();
        let text = format!(
            r#"{{"outer_source": {{"v4": "{LB_V4}", "v6": "{LB_V6}"}}, "vips": [{}]}}"#,
            body.join(", ")
        );
        let mut cfg = Config::from_json(&text).map_err(|e| anyhow!("bench config: {e}"))?;
        // The new-flow runs record up to a million flows a second on one CPU: no limit
        // unless a run sets one (`BenchLab::set_record_rate_limit`).
        cfg.record_rate_limit = Some(0);
        let mut ebpf = loader::load_balancer_object(object, opts)?;
        // Builds from before client allow-lists lack their map: the A/B runs load them too.
        let dp = if ebpf.map(lb_common::maps::MAP_SOURCE_RANGES).is_some() {
            AyaDataplane::new(&mut ebpf)
        } else {
            AyaDataplane::for_older_build(&mut ebpf)
        }
        .context("balancer maps")?;
        let settings = Settings::resolve(&cfg, &[], 1500, opts.max_vips);
        let mut core = Core::new(dp, settings).map_err(|e| anyhow!("core: {e}"))?;
        core.apply(&cfg)
            .map_err(|e| anyhow!("applying the bench config: {e}"))?;
        for (vip, addr) in core.backend_pairs() {
            core.set_nexthop(&vip, addr, Some(hop))
                .map_err(|e| anyhow!("next hop: {e}"))?;
        }
        Ok(BenchLab { ebpf, core })
    }

    /// The balancer program.
    pub fn prog(&mut self) -> &mut Xdp {
        loader::xdp(&mut self.ebpf, loader::BALANCER_PROG)
            .expect("the balancer object has its program")
    }

    /// Summed `STATS` counters by slot.
    pub fn counters(&self) -> Vec<u64> {
        self.core.dataplane().reasons()
    }

    /// Sets or clears `CONFIG` flag bits behind the core's back (bench-only flags).
    pub fn set_config_flag(&mut self, flag: u32, on: bool) -> Result<()> {
        let mut config: aya::maps::Array<_, LbConfig> =
            aya::maps::Array::try_from(prog_map(self.prog(), MAP_CONFIG))?;
        let mut c = config.get(&0, 0)?;
        if on {
            c.flags |= flag;
        } else {
            c.flags &= !flag;
        }
        config.set(0, c, 0)?;
        Ok(())
    }

    /// Sets `LbConfig::record_rate_limit` behind the core's back (0: no limit).
    pub fn set_record_rate_limit(&mut self, limit: u32) -> Result<()> {
        let mut config: aya::maps::Array<_, LbConfig> =
            aya::maps::Array::try_from(prog_map(self.prog(), MAP_CONFIG))?;
        let mut c = config.get(&0, 0)?;
        c.record_rate_limit = limit;
        config.set(0, c, 0)?;
        Ok(())
    }

    /// The IPv4 connection table.
    pub fn conns_v4(&mut self) -> Result<BpfHashMap<aya::maps::MapData, FlowKeyV4, ConnEntry>> {
        Ok(BpfHashMap::try_from(prog_map(self.prog(), MAP_CONNS_V4))?)
    }

    /// The VIP map.
    pub fn vips_map(&mut self) -> Result<BpfHashMap<aya::maps::MapData, VipKey, VipInfo>> {
        Ok(BpfHashMap::try_from(prog_map(self.prog(), MAP_VIPS))?)
    }

    /// The backend index the core gave `addr` on `vip`.
    pub fn backend_index(&self, vip: &VipId, addr: IpAddr) -> Result<u32> {
        let v = self.core.vip(vip).map_err(|e| anyhow!("{e}"))?;
        v.backends
            .get(&addr)
            .map(|b| b.index)
            .context("backend not on the VIP")
    }

    /// Adds IPv4 connection-table entries for synthetic clients `from..to` (198.19.0.0/16
    /// addresses × source ports) towards `vip`, all pinned to `backend`; returns how many
    /// inserts the kernel refused. Bounded by `to - from` map updates.
    pub fn fill_conns(&mut self, vip: &VipId, backend: IpAddr, from: u32, to: u32) -> Result<u64> {
        let idx = self.backend_index(vip, backend)?;
        let mut conns = self.conns_v4()?;
        let mut refused = 0;
        for i in from..to {
            let key = synthetic_flow(vip, i);
            let entry = ConnEntry {
                backend: idx,
                hash: flow_hash(&key),
                ..Default::default()
            };
            if conns.insert(FlowKeyV4::of(&key), entry, 0).is_err() {
                refused += 1;
            }
        }
        Ok(refused)
    }
}

/// Synthetic client `i` of a pre-filled connection table: source 198.19.x.y (65 536
/// addresses), source port 1024 + i / 65 536.
pub fn synthetic_flow(vip: &VipId, i: u32) -> FlowKey {
    let src = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8));
    flow_key(
        src,
        1024 + (i >> 16) as u16,
        vip.address,
        vip.port,
        vip.protocol.number(),
    )
}

/// The connection-table key of a client → VIP packet (the fixtures' own helper).
pub use xlb_tests::fixtures::flow as flow_key;
