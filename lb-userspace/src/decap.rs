//! `xlb decap`: the backend side. Attaches the decap program to an interface, tells it which
//! local addresses tunnels may be addressed to, and prints its counters when stopped.
//!
//! Without `--address`, those are the interface's and `lo`'s addresses, read again every
//! [`REFRESH`]: a decap started before the network is configured (a service manager that
//! starts it early, an address that arrives by DHCP or after IPv6 duplicate address
//! detection, a backend address added later) would otherwise pass every tunnel to a stack
//! that cannot strip it, and the backend would take no traffic while its health checks
//! pass.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::XdpMode,
};
use lb_common::{
    addr::to_words,
    maps::{DecapAddr, MAP_DECAP_ADDRS, MAP_STATS},
};
use tokio::signal::unix::SignalKind;

use crate::{daemon::state::counter_summary, loader, netdev};

/// How often the local addresses are read again (without `--address`).
pub const REFRESH: Duration = Duration::from_secs(1);

/// The addresses tunnels to this host may be addressed to: `iface`'s and `lo`'s (VIPs
/// live on `lo` in DSR, the tunnel's outer destination on the interface).
fn local_addresses(iface: &str) -> Result<BTreeSet<IpAddr>> {
    let mut local: BTreeSet<IpAddr> = netdev::addresses(iface)?.into_iter().collect();
    local.extend(
        netdev::addresses("lo")
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !a.is_loopback()),
    );
    Ok(local)
}

/// What to add to and remove from `installed` to make it `wanted`.
fn changes(installed: &BTreeSet<IpAddr>, wanted: &BTreeSet<IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
    (
        wanted.difference(installed).copied().collect(),
        installed.difference(wanted).copied().collect(),
    )
}

/// The decap program's address map and what it holds.
struct DecapAddrs {
    map: HashMap<MapData, DecapAddr, u32>,
    installed: BTreeSet<IpAddr>,
}

impl DecapAddrs {
    /// Makes the map hold `wanted`: new addresses first, so that none a tunnel may still
    /// use is missing meanwhile. An address that cannot be written is logged and tried
    /// again at the next sync (the map holds 256).
    fn sync(&mut self, wanted: &BTreeSet<IpAddr>) {
        let (add, remove) = changes(&self.installed, wanted);
        for a in add {
            match self.map.insert(key(a), 1, 0) {
                Ok(()) => {
                    log::info!("accepting tunnels to {a}");
                    self.installed.insert(a);
                }
                Err(e) => log::warn!("accepting tunnels to {a}: {e}"),
            }
        }
        for a in remove {
            match self.map.remove(&key(a)) {
                Ok(()) => {
                    log::info!("{a} is no longer local: tunnels to it are passed to the stack");
                    self.installed.remove(&a);
                }
                Err(e) => log::warn!("no longer accepting tunnels to {a}: {e}"),
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

/// Runs the decap program on `iface` until SIGINT / SIGTERM. `addresses` empty means every
/// address of the interface and of `lo`, followed as they change.
pub async fn run(iface: &str, mode: XdpMode, addresses: &[IpAddr]) -> Result<()> {
    netdev::ifindex(iface)?;
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
    let mut addrs = DecapAddrs {
        map: HashMap::try_from(map)?,
        installed: BTreeSet::new(),
    };
    addrs.sync(&wanted);
    loader::attach(&mut ebpf, loader::DECAP_PROG, iface, mode)?;
    log::info!(
        "xlb_decap attached to {iface}; accepting tunnels to {:?}",
        addrs.installed
    );
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = refresh.tick(), if !fixed => match local_addresses(iface) {
                Ok(wanted) => addrs.sync(&wanted),
                Err(e) => log::warn!("reading the addresses of {iface}: {e:#}"),
            },
        }
    }
    let stats: PerCpuArray<_, lb_common::counters::Counters> =
        PerCpuArray::try_from(ebpf.map(MAP_STATS).context("decap object has no STATS")?)?;
    let reasons = crate::dataplane::sum_reasons(&stats);
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
}
