//! `xlb decap`: the backend side. Attaches the decap program to an interface, tells it which
//! local addresses tunnels may be addressed to, and prints its counters when stopped.
//!
//! Its counters are served as Prometheus metrics with `--metrics`, and a rise of
//! `tunnel_not_local` (tunnels this host passes to a stack that cannot strip them) is
//! logged every [`WATCH`].
//!
//! Without `--address`, those are the interface's and `lo`'s addresses, read again every
//! [`REFRESH`]: a decap started before the network is configured (a service manager that
//! starts it early, an address that arrives by DHCP or after IPv6 duplicate address
//! detection, a backend address added later) would otherwise pass every tunnel to a stack
//! that cannot strip it, and the backend would take no traffic while its health checks
//! pass.
//!
//! With `--clamp-mss`, the object's TC egress program (`xlb_mss_clamp`) also lowers the MSS
//! of SYN-ACKs sent from `lo`'s addresses (the VIPs) to what fits the interface's MTU once
//! tunnelled (`lb_common::mss`); the VIPs and the MTU are followed like the addresses.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::XdpMode,
};
use lb_common::{
    addr::to_words,
    counters::{Counters, Pass},
    maps::{DecapAddr, MAP_CLAMP_SOURCES, MAP_DECAP_ADDRS, MAP_GUE_PORT, MAP_MSS_CLAMP, MAP_STATS},
    mss::{self, MssClamp},
};
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    daemon::state::counter_summary,
    dataplane::sum_reasons,
    loader, netdev,
    prometheus::{self, reason_counters, section},
};

/// How often the local addresses are read again (without `--address`).
pub const REFRESH: Duration = Duration::from_secs(1);
/// How often the counters are looked at for tunnels to addresses this host does not accept.
pub const WATCH: Duration = Duration::from_secs(10);

/// The decap program's metrics: its counters and how many addresses it accepts tunnels to.
pub fn render_metrics(reasons: &[u64], accepted: usize) -> String {
    let mut out = String::new();
    reason_counters(&mut out, "xlb_decap", "the decap program", reasons);
    section(
        &mut out,
        "xlb_decap_accepted_addresses",
        "gauge",
        "Local addresses the decap program accepts tunnels to.",
        &format!("xlb_decap_accepted_addresses {accepted}\n"),
    );
    out
}

/// What to say when `tunnel_not_local` went from `before` to `now` in one [`WATCH`].
fn not_local_warning(before: u64, now: u64) -> Option<String> {
    let n = now.checked_sub(before).filter(|&n| n > 0)?;
    Some(format!(
        "{n} tunnel packet{} in the last {} s to addresses this host does not accept \
         (tunnel_not_local): passed to the stack, which cannot strip them. Is the balancer \
         sending to an address this backend lost? `--log-level debug` names them",
        if n == 1 { "" } else { "s" },
        WATCH.as_secs()
    ))
}

/// The addresses tunnels to this host may be addressed to: `iface`'s and `lo`'s (VIPs
/// live on `lo` in DSR, the tunnel's outer destination on the interface).
fn local_addresses(iface: &str) -> Result<BTreeSet<IpAddr>> {
    let mut local: BTreeSet<IpAddr> = netdev::addresses(iface)?.into_iter().collect();
    local.extend(vips());
    Ok(local)
}

/// `lo`'s addresses but the loopback ones: the VIPs of a DSR backend.
fn vips() -> BTreeSet<IpAddr> {
    netdev::addresses("lo")
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.is_loopback())
        .collect()
}

/// What to add to and remove from `installed` to make it `wanted`.
fn changes(installed: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
    (
        wanted.difference(installed).copied().collect(),
        installed.difference(wanted).copied().collect(),
    )
}

/// A map of addresses (`DECAP_ADDRS`, `CLAMP_SOURCES`) and what it holds.
struct AddressMap {
    map: HashMap<MapData, DecapAddr, u32>,
    installed: BTreeSet<IpAddr>,
    /// What an address in the map means, and what its removal does, for the logs.
    added: fn(IpAddr) -> String,
    removed: fn(IpAddr) -> String,
}

impl AddressMap {
    /// Makes the map hold `wanted`: new addresses first, so that none a packet may still
    /// use is missing meanwhile. An address that cannot be written is logged and tried
    /// again at the next sync (the map holds 256).
    fn sync(&mut self, wanted: &BTreeSet<IpAddr>) {
        let (add, remove) = changes(&self.installed, wanted);
        for a in add {
            match self.map.insert(key(a), 1, 0) {
                Ok(()) => {
                    log::info!("{}", (self.added)(a));
                    self.installed.insert(a);
                }
                Err(e) => log::warn!("{}: {e}", (self.added)(a)),
            }
        }
        for a in remove {
            match self.map.remove(&key(a)) {
                Ok(()) => {
                    log::info!("{}", (self.removed)(a));
                    self.installed.remove(&a);
                }
                Err(e) => log::warn!("{}: {e}", (self.removed)(a)),
            }
        }
    }
}

fn key(a: IpAddr) -> DecapAddr {
    let (addr, family) = to_words(a);
    DecapAddr {
        addr,
        family: u32::from(family),
    }
}

/// A GUE tunnel's UDP header, behind the outer IP header.
const GUE_UDP_HEADER: u32 = 8;

/// Which tunnel header `--clamp-mss` leaves room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TunnelHeader {
    /// IPv6's (40 bytes) if this host accepts tunnels to a global IPv6 address (the
    /// balancer may reach it over IPv6), else IPv4's (20).
    Auto,
    /// IPv4's: the balancer reaches this host at an IPv4 address.
    Ipv4,
    /// IPv6's: the balancer reaches this host at an IPv6 address.
    Ipv6,
}

impl TunnelHeader {
    /// Its length, for a host accepting tunnels to `accepted`, and GUE tunnels too if `gue`
    /// (their UDP header behind the IP header).
    fn bytes(self, accepted: &BTreeSet<IpAddr>, gue: bool) -> u32 {
        let global_v6 = |a: &IpAddr| match a {
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
            IpAddr::V4(_) => false,
        };
        let ip = match self {
            TunnelHeader::Ipv4 => mss::TUNNEL_V4,
            TunnelHeader::Ipv6 => mss::TUNNEL_V6,
            TunnelHeader::Auto if accepted.iter().any(global_v6) => mss::TUNNEL_V6,
            TunnelHeader::Auto => mss::TUNNEL_V4,
        };
        ip + if gue { GUE_UDP_HEADER } else { 0 }
    }
}

/// `--clamp-mss`: the SYN-ACKs' sources and the MSS they may carry.
struct Clamp {
    sources: AddressMap,
    limits: Array<MapData, MssClamp>,
    header: TunnelHeader,
    /// GUE tunnels are taken too (`--gue-port`): room for their UDP header as well.
    gue: bool,
    /// What was last written: `None` before the first write; `Some(None)` when the MTU
    /// left no sane MSS (the map then holds zeros: nothing clamped).
    current: Option<Option<MssClamp>>,
}

impl Clamp {
    /// Follows the VIPs, and the MSS `iface`'s MTU leaves for a host accepting tunnels to
    /// `accepted`.
    fn sync(&mut self, iface: &str, accepted: &BTreeSet<IpAddr>) {
        self.sources.sync(&vips());
        let header = self.header.bytes(accepted, self.gue);
        let mtu = match netdev::mtu(iface) {
            Ok(mtu) => mtu,
            Err(e) => {
                log::warn!("reading the MTU of {iface}: {e:#}");
                return;
            }
        };
        let wanted = mss::clamp_for(mtu, header);
        if self.current == Some(wanted) {
            return;
        }
        // No sane MSS fits: clamp nothing rather than advertise a tiny one.
        let value = wanted.unwrap_or_default();
        if let Err(e) = self.limits.set(0, value, 0) {
            log::warn!("setting the MSS clamp: {e}");
            return;
        }
        self.current = Some(wanted);
        match wanted {
            Some(c) => log::info!(
                "SYN-ACKs from the VIPs advertise at most MSS {} (IPv4) / {} (IPv6): {iface}'s \
                 MTU {mtu} less a {header}-byte tunnel header",
                c.ipv4,
                c.ipv6
            ),
            None => log::warn!(
                "{iface}'s MTU {mtu} leaves no usable MSS behind a {header}-byte tunnel header: \
                 SYN-ACKs are not clamped"
            ),
        }
    }
}

/// Loads, fills and attaches `xlb_mss_clamp` on `iface`'s egress.
fn start_clamp(
    ebpf: &mut aya::Ebpf,
    iface: &str,
    header: TunnelHeader,
    gue: bool,
    accepted: &BTreeSet<IpAddr>,
) -> Result<Clamp> {
    let sources = ebpf
        .take_map(MAP_CLAMP_SOURCES)
        .context("decap object has no CLAMP_SOURCES")?;
    let limits = ebpf
        .take_map(MAP_MSS_CLAMP)
        .context("decap object has no MSS_CLAMP")?;
    let mut clamp = Clamp {
        sources: AddressMap {
            map: HashMap::try_from(sources)?,
            installed: BTreeSet::new(),
            added: |a| format!("clamping the MSS of SYN-ACKs from {a}"),
            removed: |a| format!("{a} left lo: its SYN-ACKs are no longer clamped"),
        },
        limits: Array::try_from(limits)?,
        header,
        gue,
        current: None,
    };
    clamp.sync(iface, accepted);
    loader::attach_egress(ebpf, loader::MSS_CLAMP_PROG, iface)?;
    Ok(clamp)
}

/// Runs the decap program on `iface` until SIGINT / SIGTERM, serving its metrics on
/// `metrics` if given. `addresses` empty means every address of the interface and of
/// `lo`, followed as they change. `gue_port`: also strip GUE tunnels to that UDP port.
/// `clamp_mss`: also clamp the VIPs' SYN-ACKs, leaving room for that tunnel header (and a
/// UDP header with GUE).
pub async fn run(
    iface: &str,
    mode: XdpMode,
    addresses: &[IpAddr],
    metrics: Option<SocketAddr>,
    gue_port: Option<u16>,
    clamp_mss: Option<TunnelHeader>,
) -> Result<()> {
    netdev::ifindex(iface)?;
    let listener = match metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?,
        ),
        None => None,
    };
    let fixed = !addresses.is_empty();
    let wanted: BTreeSet<IpAddr> = if fixed {
        addresses.iter().copied().collect()
    } else {
        local_addresses(iface)?
    };
    if wanted.is_empty() {
        log::warn!(
            "{iface} and lo have no addresses yet: tunnels are passed to the stack until they \
             have (new addresses are picked up within {} s)",
            REFRESH.as_secs()
        );
    }
    let mut ebpf = loader::load_decap_logging(log::max_level())?;
    let _bpf_log = loader::spawn_bpf_logger(&mut ebpf)?;
    let map = ebpf
        .take_map(MAP_DECAP_ADDRS)
        .context("decap object has no DECAP_ADDRS")?;
    let mut addrs = AddressMap {
        map: HashMap::try_from(map)?,
        installed: BTreeSet::new(),
        added: |a| format!("accepting tunnels to {a}"),
        removed: |a| format!("{a} is no longer local: tunnels to it are passed to the stack"),
    };
    addrs.sync(&wanted);
    if let Some(port) = gue_port {
        let map = ebpf
            .take_map(MAP_GUE_PORT)
            .context("decap object has no GUE_PORT")?;
        Array::<MapData, u32>::try_from(map)?
            .set(0, u32::from(port), 0)
            .with_context(|| format!("setting the GUE port {port}"))?;
        log::info!("accepting GUE tunnels on UDP port {port}");
    }
    let stats: Arc<PerCpuArray<MapData, Counters>> = Arc::new(PerCpuArray::try_from(
        ebpf.take_map(MAP_STATS)
            .context("decap object has no STATS")?,
    )?);
    let accepted = Arc::new(AtomicUsize::new(addrs.installed.len()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics_task = listener.map(|l| {
        let (stats, accepted) = (stats.clone(), accepted.clone());
        let render = move || render_metrics(&sum_reasons(&stats), accepted.load(Ordering::Relaxed));
        tokio::spawn(prometheus::serve(l, Arc::new(render), None, shutdown_rx))
    });
    // The clamp first: once tunnels are stripped, every SYN-ACK they draw is clamped. A
    // clamp that cannot start leaves the decap running without it (uploads then depend on
    // the balancer's ICMP again): a backend whose decap stopped would pass its `tcp` checks
    // and take tunnels it cannot strip.
    let gue = gue_port.is_some();
    let mut clamp = match clamp_mss.map(|h| start_clamp(&mut ebpf, iface, h, gue, &addrs.installed))
    {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            log::error!("--clamp-mss: {e:#}; decapsulating without it");
            None
        }
        None => None,
    };
    loader::attach(&mut ebpf, loader::DECAP_PROG, iface, mode)?;
    log::info!(
        "xlb_decap attached to {iface}; accepting tunnels to {:?}",
        addrs.installed
    );
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let not_local = |stats: &PerCpuArray<MapData, Counters>| {
        sum_reasons(stats)[Pass::TunnelNotLocal.slot() as usize]
    };
    let mut last_not_local = not_local(&stats);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = refresh.tick() => {
                if !fixed {
                    match local_addresses(iface) {
                        Ok(wanted) => {
                            addrs.sync(&wanted);
                            accepted.store(addrs.installed.len(), Ordering::Relaxed);
                        }
                        Err(e) => log::warn!("reading the addresses of {iface}: {e:#}"),
                    }
                }
                if let Some(clamp) = &mut clamp {
                    clamp.sync(iface, &addrs.installed);
                }
            },
            _ = watch.tick() => {
                let now = not_local(&stats);
                if let Some(w) = not_local_warning(last_not_local, now) {
                    log::warn!("{w}");
                }
                last_not_local = now;
            }
        }
    }
    let _ = shutdown_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let reasons = sum_reasons(&stats);
    drop(ebpf);
    println!("xlb decap: detached from {iface}; counters:");
    for (kind, name, v) in counter_summary(&reasons) {
        println!("  {kind:5} {name:24} {v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_add_the_new_and_remove_the_gone() {
        let set =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        let installed = set(&["198.18.0.11", "fd00::11"]);
        let (add, remove) = changes(&installed, &set(&["198.18.0.11", "198.18.0.21"]));
        assert_eq!(
            (add, remove),
            (vec![ip("198.18.0.21")], vec![ip("fd00::11")])
        );
        assert_eq!(changes(&installed, &installed), (vec![], vec![]));
    }

    #[test]
    fn the_clamp_leaves_room_for_the_tunnels_this_host_accepts() {
        let set =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|a| a.parse().unwrap()).collect() };
        let v4_only = set(&["198.18.0.11", "198.18.1.1", "fe80::1"]);
        let dual = set(&["198.18.0.11", "fd00::11"]);
        assert_eq!(TunnelHeader::Auto.bytes(&v4_only, false), mss::TUNNEL_V4);
        assert_eq!(TunnelHeader::Auto.bytes(&dual, false), mss::TUNNEL_V6);
        assert_eq!(TunnelHeader::Ipv4.bytes(&dual, false), mss::TUNNEL_V4);
        assert_eq!(TunnelHeader::Ipv6.bytes(&v4_only, false), mss::TUNNEL_V6);
        // With GUE, its UDP header too.
        assert_eq!(TunnelHeader::Auto.bytes(&v4_only, true), 28);
        assert_eq!(TunnelHeader::Ipv6.bytes(&v4_only, true), 48);
    }

    #[test]
    fn a_rise_of_tunnels_to_foreign_addresses_is_told_once_per_look() {
        assert_eq!(not_local_warning(5, 5), None);
        assert_eq!(not_local_warning(0, 0), None);
        let w = not_local_warning(5, 6).unwrap();
        assert!(w.starts_with("1 tunnel packet in the last 10 s"), "{w}");
        assert!(not_local_warning(5, 105)
            .unwrap()
            .starts_with("100 tunnel packets"));
    }

    #[test]
    fn metrics_name_every_reason_and_the_addresses() {
        let mut reasons = vec![0u64; lb_common::counters::COUNTER_SLOTS as usize];
        reasons[lb_common::counters::Event::Decapsulated.slot() as usize] = 42;
        reasons[Pass::TunnelNotLocal.slot() as usize] = 7;
        let text = render_metrics(&reasons, 3);
        for line in [
            "xlb_decap_events_total{event=\"decapsulated\"} 42",
            "xlb_decap_passed_packets_total{reason=\"tunnel_not_local\"} 7",
            "xlb_decap_dropped_packets_total{reason=\"tunnel_bad_checksum\"} 0",
            "# TYPE xlb_decap_accepted_addresses gauge",
            "xlb_decap_accepted_addresses 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
