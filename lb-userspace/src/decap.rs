//! `xlb decap`: the backend side. Attaches the decap program to an interface, tells it which
//! local addresses tunnels may be addressed to, and prints its counters when stopped.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, PerCpuArray},
    programs::XdpMode,
};
use lb_common::{
    addr::to_words,
    maps::{DecapAddr, MAP_DECAP_ADDRS, MAP_STATS},
};
use tokio::signal::unix::SignalKind;

use crate::{daemon::state::counter_summary, loader, netdev};

/// Runs the decap program on `iface` until SIGINT / SIGTERM. `addresses` empty means every
/// address of the interface and of `lo` (VIPs live on `lo` in DSR, the tunnel's outer
/// destination on the interface).
pub async fn run(iface: &str, mode: XdpMode, addresses: &[IpAddr]) -> Result<()> {
    netdev::ifindex(iface)?;
    let mut local: Vec<IpAddr> = addresses.to_vec();
    if local.is_empty() {
        local = netdev::addresses(iface)?;
        local.extend(
            netdev::addresses("lo")
                .unwrap_or_default()
                .into_iter()
                .filter(|a| !a.is_loopback()),
        );
    }
    if local.is_empty() {
        anyhow::bail!("{iface} has no addresses: give --address, or add one with `ip addr add`");
    }
    let mut ebpf = loader::load_decap_logging(log::max_level())?;
    let _bpf_log = loader::spawn_bpf_logger(&mut ebpf)?;
    {
        let mut map: HashMap<_, DecapAddr, u32> = HashMap::try_from(
            ebpf.map_mut(MAP_DECAP_ADDRS)
                .context("decap object has no DECAP_ADDRS")?,
        )?;
        for a in &local {
            let (addr, family) = to_words(*a);
            map.insert(
                DecapAddr {
                    addr,
                    family: u32::from(family),
                },
                1,
                0,
            )
            .with_context(|| format!("adding {a}"))?;
        }
    }
    loader::attach(&mut ebpf, loader::DECAP_PROG, iface, mode)?;
    log::info!("xlb_decap attached to {iface}; accepting tunnels to {local:?}");
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
