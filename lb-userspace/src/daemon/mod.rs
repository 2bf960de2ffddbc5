//! `xlb run`: the balancer daemon.
//!
//! Order of start-up, so that a mistake is reported before anything is attached: read and
//! validate the config → find the interface → load and verify the programs → program the
//! maps → bind the control socket (refusing a second daemon) → attach XDP → start health
//! checks, next-hop refreshes, the control socket and metrics. SIGINT/SIGTERM detach,
//! remove the socket and print the counters. With `--state-dir` (see `state_dir`) the
//! program is loaded with the last daemon's connection tables, replaces the last daemon's
//! program in one step instead of attaching, and stays attached when the daemon stops.
//!
//! Layout: `state` (the daemon's state and operations), `handler` (control-socket requests
//! → operations), `config_file` (reloads, on SIGHUP or a request), `neighbour` (next hops),
//! `metrics` (Prometheus).

pub mod config_file;
pub mod handler;
pub mod metrics;
pub mod neighbour;
pub mod state;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use lb_common::maps::MAP_BACKENDS;
use tokio::{
    signal::unix::SignalKind,
    sync::{mpsc, watch},
};

use crate::{
    config::Config,
    control,
    core::{Core, Settings},
    dataplane::{AyaDataplane, Counters, Dataplane},
    drops::{DropLog, DropSampler},
    health::HealthChecker,
    loader::{self, LoadOptions},
    netdev,
    state_dir::{Inherited, StateDir},
};
use config_file::ConfigFile;
use state::{counter_summary, Daemon, NEXTHOP_REFRESH};

/// Options of `xlb run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Interface to attach to.
    pub iface: String,
    /// XDP attach mode.
    pub mode: XdpMode,
    /// Config file, if any.
    pub config: Option<PathBuf>,
    /// Control socket path; `None` = no control socket.
    pub socket: Option<PathBuf>,
    /// Prometheus listen address.
    pub metrics: Option<SocketAddr>,
    /// Map sizes.
    pub load: LoadOptions,
    /// `--state-dir`: what outlives the daemon (see `state_dir`).
    pub state_dir: Option<PathBuf>,
    /// `--shutdown-grace`: how long a stopping daemon stays unready but forwarding.
    pub shutdown_grace: std::time::Duration,
}

/// Runs the daemon until SIGINT / SIGTERM.
pub async fn run(opts: RunOptions) -> Result<()> {
    let cfg = match &opts.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            Config::from_json(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    let ifindex = netdev::ifindex(&opts.iface)?;
    let addrs = netdev::addresses(&opts.iface)?;
    let mtu = netdev::mtu(&opts.iface)?;
    for w in netdev::forwarding_warnings(
        &opts.iface,
        netdev::forwarding(&opts.iface, "ipv4"),
        netdev::forwarding(&opts.iface, "ipv6"),
    ) {
        log::warn!("{w}");
    }
    if unsafe { libc::geteuid() } != 0 {
        log::warn!("not running as root: loading BPF programs will likely fail (run with sudo)");
    }

    let state = opts
        .state_dir
        .as_deref()
        .map(|dir| StateDir::open(dir, ifindex))
        .transpose()?;
    let inherited = match &state {
        Some(s) => s.inherit(opts.load.max_conns)?,
        None => Inherited::default(),
    };
    let mut ebpf = match &state {
        Some(s) => loader::load_balancer_pinned(opts.load, &s.map_pins())?,
        None => loader::load_balancer(opts.load)?,
    };
    if let Some(s) = &state {
        let backends = ebpf
            .map(MAP_BACKENDS)
            .context("the balancer object has no backend slots")?;
        s.stage_backends(backends)?;
    }
    let mut dp = AyaDataplane::new(&mut ebpf).context("opening the balancer's maps")?;
    let drop_sampler = DropSampler::open(&mut ebpf, cfg.drop_samples())
        .context("opening the balancer's drop samples")?;
    let drop_log = Arc::new(Mutex::new(DropLog::new(cfg.drop_samples())));
    dp.add_tx_port(ifindex)
        .context("registering the interface for XDP_REDIRECT")?;
    let settings = Settings::resolve(&cfg, &addrs, mtu, opts.load.max_vips);
    log::info!(
        "outer sources: v4 {:?}, v6 {:?}; mtu {}; per CPU and second: new flows recorded {}, ICMP errors sent {}, drops sampled {}; {} VIPs in the config",
        settings.src_v4,
        settings.src_v6,
        settings.mtu,
        per_second(settings.record_rate_limit),
        per_second(settings.icmp_rate_limit),
        cfg.drop_samples(),
        cfg.vips.len()
    );
    let mut core = Core::new(dp, settings.clone()).context("writing the balancer settings")?;
    if inherited.tables {
        log::info!(
            "keeping the connection tables of the last daemon ({} backend slots)",
            inherited.slots.len()
        );
        core.inherit_slots(&inherited.slots);
        core.inherit_down(inherited.down.clone());
    }
    core.apply(&cfg)
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let config_file = ConfigFile::new(opts.config.clone());

    let socket = match &opts.socket {
        Some(path) => Some(control::server::bind(path)?),
        None => None,
    };
    let metrics_listener = match opts.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?,
        ),
        None => None,
    };

    match &state {
        Some(s) => {
            // The program may be swapped in while traffic flows: with its next hops known
            // already, its first packets need no FIB lookup (the last daemon's program
            // keeps forwarding while they are resolved).
            resolve_nexthops_now(&mut core);
            let prog = loader::xdp(&mut ebpf, loader::BALANCER_PROG)?;
            let replaced = s.attach(prog, ifindex, opts.mode)?;
            s.commit_backends()?;
            // The last daemon's program counted into its slots until the swap just now.
            core.retire_inherited_slots();
            log::info!(
                "xlb_balancer {} on {} (ifindex {ifindex}), link pinned in {}",
                if replaced {
                    "took over from the last daemon's program"
                } else {
                    "attached"
                },
                opts.iface,
                s.path().display()
            );
        }
        None => {
            loader::attach(&mut ebpf, loader::BALANCER_PROG, &opts.iface, opts.mode)?;
            log::info!(
                "xlb_balancer attached to {} (ifindex {ifindex}, {:?} mode)",
                opts.iface,
                opts.mode
            );
        }
    }

    let (events_tx, mut events_rx) = mpsc::channel(256);
    // A tunnel check across families (an IPv6 VIP on IPv4 backends) sends its SYN from the
    // balancer's outer source of the VIP's family: an address of ours the backend reaches.
    let checker = HealthChecker {
        source_v4: None,
        source_v6: None,
        tunnel_source_v4: settings.src_v4,
        tunnel_source_v6: settings.src_v6,
    };
    let daemon = Daemon::new(core, checker, events_tx)
        .with_globals(&cfg, mtu)
        .with_drop_log(drop_log.clone());
    let daemon = Arc::new(Mutex::new(daemon));
    lock(&daemon)?
        .start_all_checks()
        .map_err(|e| anyhow::anyhow!("starting health checks: {e}"))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let health_task = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            while let Some(ev) = events_rx.recv().await {
                if let Ok(mut d) = daemon.lock() {
                    d.on_health_event(&ev);
                }
            }
        })
    };
    let nexthop_task = {
        let daemon = daemon.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                refresh_nexthops(&daemon).await;
                tokio::select! {
                    _ = tokio::time::sleep(NEXTHOP_REFRESH) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let dynamic_task = {
        let daemon = daemon.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut last_poll: std::collections::HashMap<
                (crate::config::VipId, std::net::IpAddr),
                tokio::time::Instant,
            > = Default::default();
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(DYNAMIC_TICK) => {}
                    _ = shutdown.changed() => return,
                }
                ticks += 1;
                poll_agents(&daemon, &mut last_poll).await;
                if ticks.is_multiple_of(4) {
                    if let Ok(mut d) = daemon.lock() {
                        d.refresh_lrt();
                        d.refresh_ramps(std::time::Instant::now());
                    }
                }
            }
        })
    };
    let removal_task = {
        let daemon = daemon.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(crate::graceful::POLL) => {}
                    _ = shutdown.changed() => return,
                }
                if let Ok(mut d) = daemon.lock() {
                    d.advance_removals(std::time::Instant::now());
                }
            }
        })
    };
    // Rung by `flows.forget` when it deleted flows that held least-connection counts.
    let recount_now = Arc::new(tokio::sync::Notify::new());
    let recount_task = {
        let daemon = daemon.clone();
        let mut shutdown = shutdown_rx.clone();
        let tables = lock(&daemon)?.core().dataplane().conn_tables();
        let recount_now = recount_now.clone();
        tokio::spawn(async move {
            // At once first: tables kept from the last daemon hold flows that the new
            // counters have not seen.
            loop {
                recount_active_flows(&daemon, &tables).await;
                tokio::select! {
                    _ = tokio::time::sleep(RECOUNT_INTERVAL) => {}
                    _ = recount_now.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let drops_task = tokio::spawn(drop_sampler.run(drop_log.clone(), shutdown_rx.clone()));
    let control_task = socket.map(|s| {
        let handler = Arc::new(
            handler::DaemonHandler::new(daemon.clone())
                .with_config_file(config_file.clone())
                .with_drop_log(drop_log.clone())
                .with_recount(recount_now.clone()),
        );
        tokio::spawn(s.serve(handler, shutdown_rx.clone()))
    });
    let metrics_task = metrics_listener
        .map(|l| tokio::spawn(metrics::serve(l, daemon.clone(), shutdown_rx.clone())));

    let signal = |kind: SignalKind, name: &str| {
        tokio::signal::unix::signal(kind).with_context(|| format!("installing {name} handler"))
    };
    let mut term = signal(SignalKind::terminate(), "SIGTERM")?;
    let mut int = signal(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = signal(SignalKind::hangup(), "SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload_config(&daemon, &config_file),
        }
    }
    if !opts.shutdown_grace.is_zero() {
        lock(&daemon)?.set_stopping();
        log::info!(
            "stopping in {} s: /ready answers 503 so that the VIPs' routes are withdrawn, and \
             the balancer forwards meanwhile (a second SIGTERM or SIGINT stops at once)",
            opts.shutdown_grace.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(opts.shutdown_grace) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    log::info!("shutting down");
    let _ = shutdown_tx.send(true);
    if let Some(t) = control_task {
        match t.await {
            Ok(Err(e)) => log::warn!("control socket: {e:#}"),
            Err(e) => log::warn!("control socket task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    nexthop_task.abort();
    dynamic_task.abort();
    removal_task.abort();
    recount_task.abort();
    drops_task.abort();
    health_task.abort();
    let summary = counter_summary(&lock(&daemon)?.core().dataplane().reasons());
    // Detach before printing: dropping the object detaches the program, unless its link
    // is pinned in the state directory.
    drop(ebpf);
    match &state {
        Some(s) => println!(
            "xlb: left attached to {} with its state in {} (the next `xlb run --state-dir` \
             there takes over; removing the directory detaches); counters:",
            opts.iface,
            s.path().display()
        ),
        None => println!("xlb: detached from {}; counters:", opts.iface),
    }
    for (kind, name, v) in summary {
        println!("  {kind:5} {name:24} {v}");
    }
    Ok(())
}

fn lock(d: &Arc<Mutex<Daemon>>) -> Result<std::sync::MutexGuard<'_, Daemon>> {
    d.lock()
        .map_err(|_| anyhow::anyhow!("daemon state poisoned by a panic"))
}

/// A per-second limit as the log shows it.
fn per_second(limit: u32) -> String {
    match limit {
        0 => "no limit".to_string(),
        n => n.to_string(),
    }
}

/// How often the least-connection counts are recounted from the connection tables.
const RECOUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Recounts the active flows of every counting VIP's backends from the connection tables
/// (`conntable`): the data plane's +1/−1 cannot see the kernel evicting an open flow's
/// entry, and without this such flows would stay counted for good. The scan runs without
/// the daemon's lock.
async fn recount_active_flows(
    daemon: &Arc<Mutex<Daemon>>,
    tables: &Arc<crate::conntable::ConnTables>,
) {
    let slots = match daemon.lock() {
        Ok(d) => d.counted_slots(),
        Err(_) => return,
    };
    if slots.is_empty() {
        return;
    }
    let scan = {
        let tables = tables.clone();
        let idle_s = state::idle_timeouts(&slots);
        tokio::task::spawn_blocking(move || tables.open_counted(&idle_s)).await
    };
    let tally = match scan {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            log::warn!("recounting active flows: {e}");
            return;
        }
        Err(e) => {
            log::warn!("recounting active flows: {e}");
            return;
        }
    };
    if let Ok(mut d) = daemon.lock() {
        let (written, drift) = d.apply_recount(&slots, &tally);
        if written > 0 {
            log::debug!("active-flow recount: {written} backend counts corrected, drift {drift}");
        }
    }
}

/// How often agent polls and `lrt` factors are considered.
const DYNAMIC_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Polls every agent whose interval has passed, concurrently and without the state lock.
async fn poll_agents(
    daemon: &Arc<Mutex<Daemon>>,
    last: &mut std::collections::HashMap<
        (crate::config::VipId, std::net::IpAddr),
        tokio::time::Instant,
    >,
) {
    let targets = match daemon.lock() {
        Ok(d) => d.agent_targets(),
        Err(_) => return,
    };
    let now = tokio::time::Instant::now();
    let due: Vec<_> = targets
        .into_iter()
        .filter(|(vip, addr, _, every)| {
            last.get(&(*vip, *addr))
                .is_none_or(|t| now.duration_since(*t) >= *every)
        })
        .collect();
    let mut polls = Vec::new();
    for (vip, addr, sock, _) in due {
        last.insert((vip, addr), now);
        polls.push((
            vip,
            addr,
            tokio::spawn(crate::agent::poll(
                sock,
                std::time::Duration::from_millis(500),
            )),
        ));
    }
    for (vip, addr, task) in polls {
        let report = task
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("agent poll task: {e}")));
        if let Ok(mut d) = daemon.lock() {
            d.apply_agent(&vip, addr, &report);
        }
    }
}

/// Resolves every backend's next hop without holding the state lock during `ip` calls.
async fn refresh_nexthops(daemon: &Arc<Mutex<Daemon>>) {
    let pairs = match daemon.lock() {
        Ok(d) => d.backends(),
        Err(_) => return,
    };
    let mut unique: Vec<std::net::IpAddr> = pairs.iter().map(|(_, a)| *a).collect();
    unique.sort();
    unique.dedup();
    let resolved = tokio::task::spawn_blocking(move || {
        unique
            .into_iter()
            .map(|a| (a, neighbour::resolve(a)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let Ok(mut d) = daemon.lock() else { return };
    for (vip, addr) in pairs {
        if let Some((_, r)) = resolved.iter().find(|(a, _)| *a == addr) {
            match r {
                Ok(hop) => d.set_nexthop(&vip, addr, Some(*hop)),
                Err(e) => {
                    log::debug!("next hop of {addr}: {e}");
                    if let neighbour::NeighbourError::Unresolved { ifindex, .. } = e {
                        d.add_tx_port(*ifindex);
                    }
                    d.set_nexthop(&vip, addr, None);
                }
            }
        }
    }
}

/// [`refresh_nexthops`] on the core itself, before the daemon runs: a second pass after
/// 200 ms for the neighbours the first one asked the kernel to resolve (backends the last
/// daemon did not have).
fn resolve_nexthops_now(core: &mut Core<AyaDataplane>) {
    let mut pending = core.backend_pairs();
    for pass in 0..2 {
        if pass > 0 && !pending.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        pending.retain(|(vip, addr)| match neighbour::resolve(*addr) {
            Ok(hop) => {
                state::record_nexthop(core, vip, *addr, Some(hop));
                false
            }
            Err(e) => {
                log::debug!("next hop of {addr}: {e}");
                if let neighbour::NeighbourError::Unresolved { ifindex, .. } = e {
                    state::add_tx_port(core, ifindex);
                }
                true
            }
        });
    }
}

/// SIGHUP: reads the config file again and makes the running VIPs its VIPs, logging each
/// change, or why nothing changed.
fn reload_config(daemon: &Mutex<Daemon>, file: &ConfigFile) {
    file.record(daemon, "SIGHUP", &file.reload(daemon, false));
}
