//! `xlb vip …`, `xlb backend …`, `xlb status`, `xlb stats`: subcommands that talk to a
//! running daemon over the control socket.
//!
//! Each command is one request. `--json` prints the daemon's `result` as it came; otherwise
//! a short confirmation or a table. The tables are rendered from the JSON generically (a
//! missing field shows as `-`), so a daemon that reports more than this client knows about
//! still prints. A refused request ends in a [`Refused`] error whose text is
//! `error (<code>): <message>`.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use lb_common::counters::Drop;
use serde_json::{json, Value};

use super::rate;
use crate::{
    config::{
        check_idle_timeout, check_weight, parse_json, AgentConfig, BackendConfig, Encap,
        QuicConfig, Scheduler, SourceMode, SourcePrefix, VipConfig, VipId,
    },
    control::{
        client,
        protocol::{
            BackendAdd, BackendBackup, BackendMaxConns, BackendRef, BackendRemove, BackendWeight,
            ControlError, Empty, FlowRef, FlowsQuery, ReloadRequest, Request, VipAdd,
            VipClientFlowLimit, VipFlowLimit, VipHealthCheck, VipIdleTimeout, VipRef, VipScheduler,
            VipSources,
        },
        DEFAULT_SOCKET,
    },
    graceful,
    health::HealthCheckConfig,
};

/// `xlb vip …`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum VipCmd {
    /// Add a VIP (and, optionally, its backends).
    Add {
        /// ADDRESS:PORT[/PROTO], e.g. 198.18.1.1:80/tcp or [fd00::1]:53/udp; PORT `*` serves
        /// every port the address has no VIP of its own on (its health check needs a port,
        /// or kind icmp or none).
        vip: VipId,
        /// Scheduler: maglev (default), sh, rr, wrr, lc, wlc, lrt or agent (docs/config.md).
        #[arg(long, value_parser = parse_scheduler)]
        scheduler: Option<Scheduler>,
        /// Maglev table size, a prime in 3..=65537 (default 65537).
        #[arg(long)]
        table_size: Option<u32>,
        /// A backend as ADDR[:WEIGHT] (IPv6 with a weight: [ADDR]:WEIGHT); repeatable.
        #[arg(long = "backend", value_parser = parse_backend)]
        backends: Vec<BackendConfig>,
        /// A label for people and metrics.
        #[arg(long)]
        name: Option<String>,
        /// Health check as JSON, e.g. '{"kind":"http","path":"/healthz"}' (default: TCP
        /// connect to the VIP's port).
        #[arg(long, value_parser = parse_health_check)]
        health_check: Option<HealthCheckConfig>,
        /// TCP port of the backends' agent (scheduler agent; polled every second).
        #[arg(long)]
        agent_port: Option<u16>,
        /// Seconds without a packet after which a flow stops counting as active for
        /// lc, wlc and lrt (default 900 for TCP, 300 for UDP).
        #[arg(long)]
        idle_timeout_s: Option<u32>,
        /// Slow start: seconds over which a backend coming into service (up again, added,
        /// undrained) grows from 1 % of its weight to all of it (1..=3600).
        #[arg(long)]
        slow_start_s: Option<u32>,
        /// Admit new flows only from this client prefix (repeat for several; none: every
        /// client), e.g. 198.18.0.0/15.
        #[arg(long = "allow", value_name = "PREFIX")]
        allow: Vec<SourcePrefix>,
        /// Record no flow: each packet goes where its hash points (maglev, sh; for UDP
        /// request/response services such as DNS).
        #[arg(long)]
        stateless: bool,
        /// Route QUIC by the server ID in connection IDs (UDP VIPs): the ID's octets after
        /// the first, 1..=4 (QUIC-LB plaintext IDs, configuration 0). Give backends their
        /// IDs with `xlb backend add --quic-server-id`.
        #[arg(long, value_name = "OCTETS")]
        quic_id_bytes: Option<u32>,
        /// Admit at most N new flows per second on each CPU (beyond, they are dropped and
        /// their clients retry); recorded flows are never limited.
        #[arg(long, value_name = "N")]
        new_flow_rate_limit: Option<u32>,
        /// Admit at most N new flows per second from one client (all CPUs together; an IPv4
        /// address, an IPv6 /64).
        #[arg(long, value_name = "N")]
        client_flow_rate_limit: Option<u32>,
        /// Tunnel: ipip (default) or gue (the backends' decap needs --gue-port).
        #[arg(long, value_parser = parse_encap)]
        encap: Option<Encap>,
        /// Outer source: lb (default, the balancer's address) or flow_hash (one of the
        /// config's hashed_source prefix, from the flow hash).
        #[arg(long, value_parser = parse_source_mode)]
        source: Option<SourceMode>,
    },
    /// Remove a VIP and its backends.
    Remove {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
    },
    /// Switch a VIP's scheduler.
    Scheduler {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
        /// maglev, sh, rr, wrr, lc, wlc, lrt or agent.
        #[arg(value_parser = parse_scheduler)]
        scheduler: Scheduler,
    },
    /// Set how long a flow may stay silent before it stops counting as active (lc, wlc,
    /// lrt).
    IdleTimeout {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
        /// Seconds, 30..=604800, or `default` (900 for TCP, 300 for UDP).
        #[arg(value_parser = parse_idle_timeout)]
        seconds: IdleTimeout,
    },
    /// Admit at most N new flows of a VIP per second on each CPU (beyond, they are dropped
    /// and their clients retry), or with `none` any number; recorded flows are never
    /// limited. With --per-client, N a second from each client (an IPv4 address, an IPv6
    /// /64), all CPUs together.
    FlowLimit {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
        /// New flows a second on each CPU (1 or more), or `none`.
        #[arg(value_parser = parse_flow_limit)]
        limit: FlowLimitArg,
        /// The limit on each client's new flows (`client_flow_rate_limit`) rather than on
        /// the VIP's.
        #[arg(long)]
        per_client: bool,
    },
    /// Admit new flows to a VIP only from these client prefixes (recorded flows stay), or
    /// with --any from every client.
    Sources {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
        /// Client prefixes, e.g. 198.18.0.0/15 fd00::/8, or bare addresses.
        #[arg(value_name = "PREFIX", required_unless_present = "any")]
        prefixes: Vec<SourcePrefix>,
        /// Every client (no list).
        #[arg(long, conflicts_with = "prefixes")]
        any: bool,
        /// Also forget the VIP's recorded flows of clients outside the new list: their
        /// open connections stop too (by default only new connections are refused).
        #[arg(long, conflicts_with = "any")]
        cut: bool,
    },
    /// Set a VIP's health check; its backends' checks restart from their verdicts.
    HealthCheck {
        /// ADDRESS:PORT[/PROTO].
        vip: VipId,
        /// The check as JSON, e.g. '{"kind":"http","path":"/healthz"}', or `default` (TCP
        /// connect to the VIP's port).
        #[arg(value_parser = parse_health_check_or_default)]
        check: HealthCheckArg,
    },
    /// List VIPs, one line each.
    List,
}

/// `xlb backend …`
#[derive(Clone, Debug, clap::Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address (the tunnel destination).
        address: IpAddr,
        /// Relative weight, 0..=10000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Add it drained: no new flows until `xlb backend undrain`.
        #[arg(long)]
        drained: bool,
        /// Add it as a backup: new flows only while none of the VIP's other backends
        /// takes them (all down, drained or of weight 0).
        #[arg(long)]
        backup: bool,
        /// At most N active flows: at N, a least-connection VIP (lc, wlc) gives it no new
        /// ones (HAProxy's maxconn).
        #[arg(long, value_name = "N")]
        max_conns: Option<u32>,
        /// The server ID it writes into its QUIC connection IDs (VIPs with QUIC routing).
        #[arg(long, value_name = "ID")]
        quic_server_id: Option<u32>,
    },
    /// Remove a backend from a VIP: at once (its flows stop), or with --drain gracefully.
    Remove {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
        /// Drain it first, and remove it once it has carried no packet for --quiet seconds
        /// (its clients are done), or after SECS at most (1..=86400). The daemon runs the
        /// removal; this command waits for it (Ctrl-C stops the wait, not the removal;
        /// `xlb backend undrain` cancels it).
        #[arg(long, value_name = "SECS", value_parser = graceful::parse_secs)]
        drain: Option<Duration>,
        /// With --drain: how long without a packet counts as done (default 5 s).
        #[arg(long, value_name = "SECS", value_parser = graceful::parse_secs,
              default_value = "5", requires = "drain")]
        quiet: Duration,
        /// With --drain: return once the daemon has started the removal (`xlb status`
        /// shows it), without waiting for its end.
        #[arg(long, requires = "drain")]
        no_wait: bool,
    },
    /// Stop sending new flows to a backend; its existing flows stay.
    Drain {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
        /// Return once it has carried no packet for --quiet seconds (its clients are
        /// done), or after SECS at most (1..=86400): drain, wait, upgrade, undrain.
        #[arg(long, value_name = "SECS", value_parser = graceful::parse_secs)]
        wait: Option<Duration>,
        /// With --wait: how long without a packet counts as done (default 5 s).
        #[arg(long, value_name = "SECS", value_parser = graceful::parse_secs,
              default_value = "5", requires = "wait")]
        quiet: Duration,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
    },
    /// Make a backend a backup (new flows only while none of the VIP's other backends takes
    /// them), or with --off a regular one again. No flow moves.
    Backup {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
        /// Make it a regular backend again.
        #[arg(long)]
        off: bool,
    },
    /// Change a backend's weight (0 takes no new flows).
    Weight {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
        /// Relative weight, 0..=10000.
        weight: u32,
    },
    /// Cap a backend's active flows under a least-connection VIP (lc, wlc): at N it takes
    /// no new ones. `none` lifts the cap. Flows already on it stay.
    MaxConns {
        /// ADDRESS:PORT[/PROTO] of the VIP.
        vip: VipId,
        /// The backend's address.
        address: IpAddr,
        /// The most active flows, 1 or more, or `none`.
        #[arg(value_parser = parse_max_conns)]
        max_conns: MaxConnsArg,
    },
}

/// `xlb backend max-conns`' argument: a limit, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxConnsArg(pub Option<u32>);

fn parse_max_conns(s: &str) -> Result<MaxConnsArg, String> {
    limit_or_none(s, "active flows").map(MaxConnsArg)
}

/// A limit argument: 1 or more `what`, or `none` for no limit.
fn limit_or_none(s: &str, what: &str) -> Result<Option<u32>, String> {
    if s == "none" {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("{s:?}: give 1 or more {what}, or none")),
        Ok(n) => Ok(Some(n)),
    }
}

/// Options every control command shares.
#[derive(Clone, Debug)]
pub struct CtlOpts {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Print the daemon's raw JSON result instead of tables.
    pub json: bool,
}

impl Default for CtlOpts {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            json: false,
        }
    }
}

/// The daemon refused the request; `Display` is the line the CLI prints.
#[derive(Debug, thiserror::Error)]
#[error("error ({}): {}", .0.code, .0.message)]
pub struct Refused(pub ControlError);

/// Turns a command's outcome into the process exit code, printing the error: a refusal
/// as `error (<code>): <message>`, anything else as `xlb: <cause chain>`.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<Refused>() {
                Some(r) => eprintln!("{r}"),
                None => eprintln!("xlb: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs `xlb vip …`.
pub fn run_vip(cmd: VipCmd, opts: &CtlOpts) -> anyhow::Result<()> {
    let (req, done) = match cmd {
        VipCmd::Add {
            vip,
            scheduler,
            table_size,
            backends,
            name,
            health_check,
            agent_port,
            idle_timeout_s,
            slow_start_s,
            allow,
            stateless,
            quic_id_bytes,
            new_flow_rate_limit,
            client_flow_rate_limit,
            encap,
            source,
        } => {
            let n = backends.len();
            let config = VipConfig {
                name,
                address: vip.address,
                port: vip.port,
                protocol: vip.protocol,
                scheduler: scheduler.unwrap_or_default(),
                table_size,
                encap: encap.unwrap_or_default(),
                source: source.unwrap_or_default(),
                health_check,
                agent: agent_port.map(|port| AgentConfig {
                    port,
                    interval_ms: 1000,
                }),
                idle_timeout_s,
                slow_start_s,
                allowed_sources: allow,
                stateless,
                quic: quic_id_bytes.map(|server_id_bytes| QuicConfig {
                    server_id_bytes,
                    config_id: 0,
                }),
                new_flow_rate_limit,
                client_flow_rate_limit,
                backends,
            };
            (
                Request::VipAdd(VipAdd { vip: config }),
                format!("added VIP {vip} with {n} backend{}", plural(n)),
            )
        }
        VipCmd::Remove { vip } => (
            Request::VipRemove(VipRef { vip }),
            format!("removed VIP {vip}"),
        ),
        VipCmd::Scheduler { vip, scheduler } => (
            Request::VipScheduler(VipScheduler { vip, scheduler }),
            format!("VIP {vip} now uses {}", scheduler.name()),
        ),
        VipCmd::FlowLimit {
            vip,
            limit,
            per_client: true,
        } => {
            let body = VipClientFlowLimit {
                vip,
                client_flow_rate_limit: limit.0,
            };
            let done = body.done();
            (Request::VipClientFlowLimit(body), done)
        }
        VipCmd::FlowLimit { vip, limit, .. } => {
            let body = VipFlowLimit {
                vip,
                new_flow_rate_limit: limit.0,
            };
            let done = body.done();
            (Request::VipFlowLimit(body), done)
        }
        VipCmd::IdleTimeout { vip, seconds } => (
            Request::VipIdleTimeout(VipIdleTimeout {
                vip,
                idle_timeout_s: seconds.0,
            }),
            match seconds.0 {
                Some(s) => format!("VIP {vip}: idle flows stop counting after {s} s"),
                None => format!("VIP {vip}: idle flows stop counting after the protocol's default"),
            },
        ),
        VipCmd::Sources {
            vip, prefixes, cut, ..
        } => {
            let listed: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
            (
                Request::VipSources(VipSources {
                    vip,
                    allowed_sources: prefixes,
                    cut,
                }),
                if listed.is_empty() {
                    format!("VIP {vip} admits new flows from every client")
                } else {
                    format!("VIP {vip} admits new flows from {}", listed.join(", "))
                },
            )
        }
        VipCmd::HealthCheck { vip, check } => (
            Request::VipHealthCheck(VipHealthCheck {
                vip,
                health_check: check.0,
            }),
            format!("VIP {vip}: health checks restarted"),
        ),
        VipCmd::List => {
            let result = call(&opts.socket, &Request::Status(Empty {}))?;
            return print_result(opts, &result, render_vip_list);
        }
    };
    let result = call(&opts.socket, &req)?;
    print_result(opts, &result, |r| confirmation(r, done))
}

/// Runs `xlb backend …`.
pub fn run_backend(cmd: BackendCmd, opts: &CtlOpts) -> anyhow::Result<()> {
    let (req, done) = match cmd {
        BackendCmd::Add {
            vip,
            address,
            weight,
            drained,
            backup,
            max_conns,
            quic_server_id,
        } => (
            Request::BackendAdd(BackendAdd {
                vip,
                backend: BackendConfig {
                    max_conns,
                    quic_server_id,
                    address,
                    weight,
                    drained,
                    backup,
                },
            }),
            format!(
                "added {} {address} to {vip} (weight {weight}{}{})",
                if backup { "backup" } else { "backend" },
                if drained { ", drained" } else { "" },
                max_conns
                    .map(|n| format!(", at most {n} active flows"))
                    .unwrap_or_default()
                    + &quic_server_id
                        .map(|id| format!(", QUIC server ID {id}"))
                        .unwrap_or_default()
            ),
        ),
        BackendCmd::Remove {
            vip,
            address,
            drain: Some(deadline),
            quiet,
            no_wait,
        } => {
            let backend = BackendRef { vip, address };
            return remove_gracefully(backend, deadline, quiet, !no_wait, opts);
        }
        BackendCmd::Remove {
            vip,
            address,
            drain: None,
            ..
        } => (
            Request::BackendRemove(BackendRemove {
                vip,
                address,
                drain_s: None,
                quiet_s: None,
            }),
            format!("removed backend {address} from {vip}"),
        ),
        BackendCmd::Drain {
            vip,
            address,
            wait: Some(deadline),
            quiet,
        } => return drain_waiting(BackendRef { vip, address }, deadline, quiet, opts),
        BackendCmd::Drain {
            vip,
            address,
            wait: None,
            ..
        } => (
            Request::BackendDrain(BackendRef { vip, address }),
            format!("drained backend {address} of {vip}: no new flows, existing flows stay"),
        ),
        BackendCmd::Undrain { vip, address } => (
            Request::BackendUndrain(BackendRef { vip, address }),
            format!("backend {address} of {vip} takes new flows again"),
        ),
        BackendCmd::Backup { vip, address, off } => (
            Request::BackendBackup(BackendBackup {
                vip,
                address,
                backup: !off,
            }),
            if off {
                format!("backend {address} of {vip} is no longer a backup")
            } else {
                format!("backend {address} of {vip} is a backup")
            },
        ),
        BackendCmd::Weight {
            vip,
            address,
            weight,
        } => (
            Request::BackendWeight(BackendWeight {
                vip,
                address,
                weight,
            }),
            format!("backend {address} of {vip} now has weight {weight}"),
        ),
        BackendCmd::MaxConns {
            vip,
            address,
            max_conns: MaxConnsArg(max_conns),
        } => (
            Request::BackendMaxConns(BackendMaxConns {
                vip,
                address,
                max_conns,
            }),
            match max_conns {
                Some(n) => format!("backend {address} of {vip} takes at most {n} active flows"),
                None => format!("backend {address} of {vip} has no flow limit"),
            },
        ),
    };
    let result = call(&opts.socket, &req)?;
    print_result(opts, &result, |r| confirmation(r, done))
}

/// Drains the backend and follows its packet counter (`stats`, which scans no table) until
/// it goes quiet or `deadline` passes: whether it went quiet, and after how long. Run by the
/// CLI: a drain that waits removes nothing, so nothing is left half-done if it stops.
fn drain_and_wait(
    backend: &BackendRef,
    deadline: Duration,
    quiet: Duration,
    opts: &CtlOpts,
) -> anyhow::Result<(bool, f64)> {
    let (vip, address) = (backend.vip, backend.address);
    call(&opts.socket, &Request::BackendDrain(backend.clone()))?;
    let mut watch = graceful::QuietWatch::new(quiet, deadline);
    let start = Instant::now();
    let verdict = loop {
        let stats = call(&opts.socket, &Request::Stats(Empty {}))?;
        let packets = list(&stats, "vips")
            .iter()
            .find(|v| v.get("vip").and_then(Value::as_str) == Some(&vip.to_string()))
            .and_then(|v| {
                list(v, "backends").iter().find(|b| {
                    b.get("address").and_then(Value::as_str) == Some(&address.to_string())
                })
            })
            .and_then(|b| b.get("packets").and_then(Value::as_u64));
        match watch.observe(start.elapsed(), packets) {
            graceful::Verdict::Busy => std::thread::sleep(graceful::POLL),
            v => break v,
        }
    };
    if verdict == graceful::Verdict::Gone {
        anyhow::bail!(
            "backend {address} of {vip} went away while draining (removed, or removed and \
             added again, by someone else)"
        );
    }
    Ok((
        verdict == graceful::Verdict::Quiet,
        start.elapsed().as_secs_f64(),
    ))
}

/// How a drain ended, for people: `what` happened to the backend.
fn drain_outcome(
    what: String,
    went_quiet: bool,
    drained_s: f64,
    quiet: Duration,
    deadline: Duration,
) -> String {
    if went_quiet {
        format!(
            "{what}: no packet for {} s, after {drained_s:.1} s of draining",
            quiet.as_secs()
        )
    } else {
        format!(
            "{what} at the end of its {} s drain; it still carried traffic",
            deadline.as_secs()
        )
    }
}

/// `xlb backend remove --drain`: asks the daemon for a graceful removal and, with `wait`,
/// waits for its end.
fn remove_gracefully(
    backend: BackendRef,
    deadline: Duration,
    quiet: Duration,
    wait: bool,
    opts: &CtlOpts,
) -> anyhow::Result<()> {
    let asked = Instant::now();
    let req = Request::BackendRemove(BackendRemove {
        vip: backend.vip,
        address: backend.address,
        drain_s: Some(deadline.as_secs()),
        quiet_s: Some(quiet.as_secs()),
    });
    let started = call(&opts.socket, &req)?;
    if !wait {
        let ours = format!("draining backend {} of {}", backend.address, backend.vip);
        return print_result(opts, &started, |r| confirmation(r, ours));
    }
    let (outcome, drained_s) = wait_for_removal(&backend, deadline, asked, opts)?;
    let went_quiet = outcome == "quiet";
    let what = format!("removed backend {} from {}", backend.address, backend.vip);
    let done = drain_outcome(what, went_quiet, drained_s, quiet, deadline);
    let result = json!({"done": done, "drained_s": drained_s, "went_quiet": went_quiet});
    print_result(opts, &result, |r| confirmation(r, done.clone()))
}

/// How long past its deadline a graceful removal may take before the wait gives up (the
/// daemon checks every [`graceful::POLL`]; a busy daemon may answer late).
const REMOVAL_GRACE: Duration = Duration::from_secs(30);

/// Follows the daemon's graceful removal of `backend`, asked for at `asked`, in `stats`
/// (which scans no table) until it ends: how (`quiet` or `deadline`) and after how many
/// seconds of draining. An error if it was cancelled, failed, or the backend went another
/// way.
fn wait_for_removal(
    backend: &BackendRef,
    deadline: Duration,
    asked: Instant,
    opts: &CtlOpts,
) -> anyhow::Result<(String, f64)> {
    let (vip, address) = (backend.vip.to_string(), backend.address.to_string());
    loop {
        let stats = call(&opts.socket, &Request::Stats(Empty {}))?;
        let waited = asked.elapsed();
        let ended = list(&stats, "ended_removals").iter().rev().find(|e| {
            e.get("vip").and_then(Value::as_str) == Some(&vip)
                && e.get("address").and_then(Value::as_str) == Some(&address)
                && e.get("ago_s")
                    .and_then(Value::as_f64)
                    .is_some_and(|ago| ago <= waited.as_secs_f64())
        });
        if let Some(e) = ended {
            let outcome = e.get("outcome").and_then(Value::as_str).unwrap_or("-");
            let drained_s = e.get("drained_s").and_then(Value::as_f64).unwrap_or(0.0);
            if outcome == "failed" {
                anyhow::bail!(
                    "the daemon could not remove backend {address} of {vip} after its drain \
                     (its log says why); the backend stays, drained"
                );
            }
            return Ok((outcome.to_owned(), drained_s));
        }
        let entry = list(&stats, "vips")
            .iter()
            .find(|v| v.get("vip").and_then(Value::as_str) == Some(&vip))
            .and_then(|v| {
                list(v, "backends")
                    .iter()
                    .find(|b| b.get("address").and_then(Value::as_str) == Some(&address))
            });
        match entry {
            None => anyhow::bail!(
                "backend {address} of {vip} went away while draining: removed by other means \
                 (xlb backend remove, a reload) rather than by its drain"
            ),
            Some(b) if b.get("removal").is_none_or(Value::is_null) => anyhow::bail!(
                "the graceful removal of backend {address} of {vip} was cancelled (undrained, \
                 or a reload of a config that lists it); the backend stays"
            ),
            Some(_) if waited > deadline + REMOVAL_GRACE => anyhow::bail!(
                "backend {address} of {vip} is still being removed {} s after its {} s \
                 deadline; xlb status shows where it stands",
                REMOVAL_GRACE.as_secs(),
                deadline.as_secs()
            ),
            Some(_) => std::thread::sleep(graceful::POLL),
        }
    }
}

/// `xlb backend drain --wait`: drains the backend and returns once it has gone quiet (or at
/// the deadline), for a rolling upgrade: drain and wait, upgrade, undrain.
fn drain_waiting(
    backend: BackendRef,
    deadline: Duration,
    quiet: Duration,
    opts: &CtlOpts,
) -> anyhow::Result<()> {
    let (went_quiet, drained_s) = drain_and_wait(&backend, deadline, quiet, opts)?;
    let what = format!("drained backend {} of {}", backend.address, backend.vip);
    let done = drain_outcome(what, went_quiet, drained_s, quiet, deadline);
    let result = json!({"done": done, "drained_s": drained_s, "went_quiet": went_quiet});
    print_result(opts, &result, |r| confirmation(r, done.clone()))
}

/// Runs `xlb status`; with `rate`, traffic per second over that interval instead of totals.
pub fn run_status(
    opts: &CtlOpts,
    rate: Option<Duration>,
    vip: Option<VipId>,
) -> anyhow::Result<()> {
    let req = Request::Status(Empty {});
    match rate {
        None => print_result(
            opts,
            &only_vip(call(&opts.socket, &req)?, vip.as_ref())?,
            render_status,
        ),
        Some(interval) => {
            let (before, after, elapsed) = sample_twice(&opts.socket, &req, interval)?;
            let rates = rate::status_rates(&before, &after, elapsed);
            print_result(
                opts,
                &only_vip(rates, vip.as_ref())?,
                rate::render_status_rates,
            )
        }
    }
}

/// `result` with only `vip` (if one is named) left in its `vips`; an error naming the VIPs
/// there are when it has none such.
fn only_vip(mut result: Value, vip: Option<&VipId>) -> anyhow::Result<Value> {
    let Some(vip) = vip else {
        return Ok(result);
    };
    let want = vip.to_string();
    let Some(Value::Array(vips)) = result.get_mut("vips") else {
        return Ok(result);
    };
    let names: Vec<String> = vips.iter().map(|v| field(v, "vip")).collect();
    vips.retain(|v| v.get("vip").and_then(Value::as_str) == Some(want.as_str()));
    if vips.is_empty() {
        anyhow::bail!(
            "no VIP {want}; the balancer has {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(result)
}

/// Runs `xlb stats`; with `rate`, counters per second over that interval instead of totals.
pub fn run_stats(opts: &CtlOpts, rate: Option<Duration>, vip: Option<VipId>) -> anyhow::Result<()> {
    let req = Request::Stats(Empty {});
    match rate {
        None => print_result(
            opts,
            &only_vip(call(&opts.socket, &req)?, vip.as_ref())?,
            render_stats,
        ),
        Some(interval) => {
            let (before, after, elapsed) = sample_twice(&opts.socket, &req, interval)?;
            let rates = rate::stats_rates(&before, &after, elapsed);
            print_result(
                opts,
                &only_vip(rates, vip.as_ref())?,
                rate::render_stats_rates,
            )
        }
    }
}

/// `req`'s answer now and `interval` later, and the time between the two answers (the
/// daemon reads its counters when it answers).
fn sample_twice(
    socket: &Path,
    req: &Request,
    interval: Duration,
) -> anyhow::Result<(Value, Value, Duration)> {
    let before = call(socket, req)?;
    let t0 = Instant::now();
    std::thread::sleep(interval);
    let after = call(socket, req)?;
    Ok((before, after, t0.elapsed()))
}

/// Runs `xlb flow`.
pub fn run_flow(vip: VipId, client: SocketAddr, opts: &CtlOpts) -> anyhow::Result<()> {
    let result = call(&opts.socket, &Request::Flow(FlowRef { vip, client }))?;
    print_result(opts, &result, render_flow)
}

/// `xlb flow`'s answer for people: the entry, then where the next packet goes and why.
fn render_flow(r: &Value) -> String {
    // A port of an all-ports VIP names the VIP that serves it.
    let served_by = match (r.get("service").and_then(Value::as_str), r.get("vip")) {
        (Some(service), Some(Value::String(vip))) if service != vip => {
            format!(", served by {service}")
        }
        _ => String::new(),
    };
    let mut out = format!(
        "flow {} -> {} ({}{served_by})\n",
        field(r, "client"),
        field(r, "vip"),
        field(r, "scheduler")
    );
    let recorded = r.get("recorded").filter(|v| !v.is_null());
    let stateless = r.get("stateless") == Some(&Value::Bool(true));
    let _ = match recorded {
        None if stateless => writeln!(
            out,
            "recorded:    no (a stateless VIP: every packet goes by its hash)"
        ),
        None => writeln!(out, "recorded:    no (a new flow for the scheduler)"),
        Some(e) => {
            let backend = match e.get("backend") {
                Some(Value::String(a)) => a.clone(),
                _ => "a backend since removed".to_owned(),
            };
            let notes = entry_notes(e);
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            writeln!(out, "recorded:    on {backend}{notes}")
        }
    };
    let next = r.get("next").cloned().unwrap_or(Value::Null);
    let backend = field(&next, "backend");
    let candidates: Vec<String> = list(&next, "candidates")
        .iter()
        .map(|c| cell(Some(c)))
        .collect();
    let why = match next.get("how").and_then(Value::as_str) {
        Some("recorded") => format!("{backend} (its recorded backend)"),
        Some("hash") => format!("{backend} (the VIP's table at the flow's hash)"),
        Some("less_loaded") if candidates.len() > 1 => format!(
            "{backend} (of {}, the one with fewer active flows per weight now)",
            candidates.join(" and ")
        ),
        Some("less_loaded") => format!("{backend} (the only candidate)"),
        Some("round_robin") => "the VIP's round-robin cursor decides".to_owned(),
        Some("no_backend") => {
            "nowhere: no backend takes new flows (dropped, no_backend)".to_owned()
        }
        Some("source_denied") => {
            "nowhere: the client is outside the VIP's allowed sources (dropped, source_denied)"
                .to_owned()
        }
        Some("backends_full") => {
            "nowhere now: every backend the scheduler reaches is at its max_conns (dropped, \
             backends_full; the client's retry finds room once flows close)"
                .to_owned()
        }
        _ => backend,
    };
    let _ = writeln!(out, "next packet: {why}");
    out
}

/// What a connection-table entry (`flow`'s `recorded`, a `flows` line) says beyond its
/// backend: least connection's count, the client's close, the time since its last packet.
fn entry_notes(e: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    if e.get("counted") == Some(&Value::Bool(true)) {
        notes.push("counted".to_owned());
    }
    if e.get("closed") == Some(&Value::Bool(true)) {
        notes.push("closed by the client".to_owned());
    }
    if let Some(s) = e.get("idle_s").and_then(Value::as_u64) {
        notes.push(format!("last seen {s} s ago"));
    }
    notes
}

/// `status`' `conn_tables` for people: entries against capacity per family, and a warning
/// when a table is nearly full (the kernel then evicts the least recently used flows,
/// which may be live ones, to record new ones).
fn conn_tables_line(t: &Value) -> String {
    let mut full = false;
    let parts: Vec<String> = [("v4", "IPv4"), ("v6", "IPv6")]
        .iter()
        .map(|(key, name)| {
            let f = t.get(*key).cloned().unwrap_or(Value::Null);
            let n = f.get("entries").and_then(Value::as_u64).unwrap_or(0);
            let cap = f.get("capacity").and_then(Value::as_u64).unwrap_or(0);
            full |= cap > 0 && n * 10 >= cap * 9;
            format!("{n} of {cap} {name}")
        })
        .collect();
    let mut line = format!("\nconnection tables: {} flows", parts.join(", "));
    if full {
        line.push_str(
            " (nearly full: the oldest flows are evicted for new ones; `xlb run --max-conns` \
             sizes them)",
        );
    }
    line.push('\n');
    line
}

/// Runs `xlb dump-config`: the daemon's answer is the file, printed as JSON whatever
/// `--json` says.
pub fn run_dump_config(socket: &Path) -> anyhow::Result<()> {
    let config = call(socket, &Request::Config(Empty {}))?;
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

/// Runs `xlb reload`.
pub fn run_reload(dry_run: bool, cut: bool, opts: &CtlOpts) -> anyhow::Result<()> {
    let result = call(
        &opts.socket,
        &Request::Reload(ReloadRequest { dry_run, cut }),
    )?;
    print_result(opts, &result, render_reload)
}

/// `xlb reload`'s answer for people: the changes, one per line, then the daemon's summary.
fn render_reload(r: &Value) -> String {
    let mut out = String::new();
    for change in list(r, "changes") {
        let _ = writeln!(out, "  {}", cell(Some(change)));
    }
    out + &confirmation(r, "reloaded".to_owned())
}

/// Runs `xlb flows --forget`.
pub fn run_flows_forget(query: FlowsQuery, opts: &CtlOpts) -> anyhow::Result<()> {
    let result = call(&opts.socket, &Request::FlowsForget(query))?;
    print_result(opts, &result, |r| {
        confirmation(r, "flows forgotten".to_owned())
    })
}

/// Runs `xlb flows`.
pub fn run_flows(query: FlowsQuery, opts: &CtlOpts) -> anyhow::Result<()> {
    let result = call(&opts.socket, &Request::Flows(query))?;
    print_result(opts, &result, render_flows)
}

/// `xlb flows`' answer for people: one line per flow, then how many there are.
fn render_flows(r: &Value) -> String {
    let flows = list(r, "flows");
    let mut out = String::new();
    if !flows.is_empty() {
        let mut t = Table::new(&[
            ("VIP", false),
            ("CLIENT", false),
            ("BACKEND", false),
            ("NOTES", false),
        ]);
        for f in flows {
            let mut notes = Vec::new();
            match f.get("service") {
                Some(Value::String(s))
                    if Some(s.as_str()) != f.get("vip").and_then(Value::as_str) =>
                {
                    notes.push(format!("served by {s}"));
                }
                Some(Value::Null) => notes.push("its VIP was removed".to_owned()),
                _ => {}
            }
            notes.extend(entry_notes(f));
            let backend = match f.get("backend") {
                Some(Value::String(a)) => a.clone(),
                _ => "- (removed)".to_owned(),
            };
            t.row(vec![
                field(f, "vip"),
                field(f, "client"),
                backend,
                notes.join(", "),
            ]);
        }
        t.render("", &mut out);
    }
    let matched = r.get("matched").and_then(Value::as_u64).unwrap_or(0);
    let scanned = field(r, "scanned");
    let _ = if r.get("truncated") == Some(&Value::Bool(true)) {
        writeln!(
            out,
            "{} of {matched} matching flows shown, the first by VIP and client (--limit shows \
             more); {scanned} entries in the connection tables",
            flows.len()
        )
    } else {
        writeln!(
            out,
            "{matched} flow{} ({scanned} entries in the connection tables)",
            plural(matched as usize)
        )
    };
    out
}

/// One request; a refusal becomes [`Refused`].
pub(crate) fn call(socket: &Path, req: &Request) -> anyhow::Result<Value> {
    match client::request(socket, req)?.result {
        Ok(v) => Ok(v),
        Err(e) => Err(Refused(e).into()),
    }
}

fn print_result(
    opts: &CtlOpts,
    result: &Value,
    render: impl FnOnce(&Value) -> String,
) -> anyhow::Result<()> {
    if opts.json {
        println!("{}", serde_json::to_string_pretty(result)?);
    } else {
        print!("{}", render(result));
    }
    Ok(())
}

/// The daemon's own words (`{"done": "…"}`) if it sent some, else ours.
fn confirmation(result: &Value, ours: String) -> String {
    let text = result
        .get("done")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or(ours);
    format!("{text}\n")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `xlb vip flow-limit`'s argument: new flows a second on each CPU, or `None` for no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimitArg(pub Option<u32>);

fn parse_flow_limit(s: &str) -> Result<FlowLimitArg, String> {
    limit_or_none(s, "new flows a second").map(FlowLimitArg)
}

/// `xlb vip idle-timeout`'s argument: seconds, or `None` for the protocol's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeout(pub Option<u32>);

fn parse_idle_timeout(s: &str) -> Result<IdleTimeout, String> {
    if s == "default" {
        return Ok(IdleTimeout(None));
    }
    let secs: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds or `default`"))?;
    check_idle_timeout(secs)?;
    Ok(IdleTimeout(Some(secs)))
}

/// Scheduler names, the same as in the config file.
fn parse_encap(s: &str) -> Result<Encap, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("unknown tunnel {s:?}: use ipip or gue"))
}

fn parse_source_mode(s: &str) -> Result<SourceMode, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("unknown outer source {s:?}: use lb or flow_hash"))
}

fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("unknown scheduler {s:?}: use one of {}", Scheduler::NAMES))
}

/// `ADDR`, `ADDR:WEIGHT` (IPv4) or `[ADDR]:WEIGHT` (IPv6). A bare IPv6 address is taken
/// whole: `fd00::1:3` is an address, not `fd00::1` with weight 3.
fn parse_backend(s: &str) -> Result<BackendConfig, String> {
    let usage =
        || format!("{s:?} is not ADDR[:WEIGHT], e.g. 198.18.0.11, 198.18.0.11:3 or [fd00::11]:3");
    if let Ok(address) = s.parse::<IpAddr>() {
        return Ok(BackendConfig {
            max_conns: None,
            quic_server_id: None,
            address,
            weight: 1,
            drained: false,
            backup: false,
        });
    }
    let (addr, weight) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(usage)?,
        None => s.rsplit_once(':').ok_or_else(usage)?,
    };
    let address: IpAddr = addr.parse().map_err(|_| usage())?;
    let weight: u32 = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} in {s:?} is not a number"))?;
    check_weight(weight).map_err(|m| format!("weight in {s:?}: {m}"))?;
    Ok(BackendConfig {
        max_conns: None,
        quic_server_id: None,
        address,
        weight,
        drained: false,
        backup: false,
    })
}

/// `xlb vip health-check`'s argument: a check, or `None` for the default.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckArg(pub Option<HealthCheckConfig>);

fn parse_health_check_or_default(s: &str) -> Result<HealthCheckArg, String> {
    if s == "default" {
        return Ok(HealthCheckArg(None));
    }
    parse_health_check(s).map(|hc| HealthCheckArg(Some(hc)))
}

fn parse_health_check(s: &str) -> Result<HealthCheckConfig, String> {
    let hc: HealthCheckConfig = parse_json(s).map_err(|e| e.to_string())?;
    hc.validate().map_err(|e| e.to_string())?;
    Ok(hc)
}

/// A value for a table cell: strings without quotes, `-` for null or missing.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub(super) fn field(v: &Value, key: &str) -> String {
    cell(v.get(key))
}

pub(super) fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A text table: columns sized to their widest cell; numeric columns right-aligned.
pub(crate) struct Table {
    head: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns as (heading, is numeric).
    pub(crate) fn new(cols: &[(&'static str, bool)]) -> Self {
        Self {
            head: cols.iter().map(|c| c.0).collect(),
            numeric: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, indent: &str, out: &mut String) {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let head: Vec<String> = self.head.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&head).chain(&self.rows) {
            let mut line = String::from(indent);
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                if self.numeric[i] {
                    let _ = write!(line, "{c:>w$}");
                } else {
                    let _ = write!(line, "{c:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

fn health(h: Option<&Value>) -> String {
    let Some(h) = h.filter(|h| h.is_object()) else {
        return "-".to_owned();
    };
    let mut s = format!(
        "{} ok {} failed {}",
        field(h, "kind"),
        field(h, "checks_ok"),
        field(h, "checks_failed")
    );
    if let Some(ms) = h.get("latency_ms").and_then(Value::as_f64) {
        let _ = write!(s, " {ms:.1} ms");
    }
    if let Some(err) = h.get("last_error").filter(|e| !e.is_null()) {
        let _ = write!(s, " (last error: {})", cell(Some(err)));
    }
    s
}

/// A backend's state, and whether it is a backup (a waiting one's state says so already).
pub(super) fn state_cell(b: &Value) -> String {
    let mut state = field(b, "state");
    if b.get("backup") == Some(&Value::Bool(true)) && state != "standby" {
        state.push_str(", backup");
    }
    if let Some(pct) = b
        .get("slow_start_pct")
        .and_then(Value::as_u64)
        .filter(|&p| p < 100)
    {
        let _ = write!(state, ", slow start {pct}%");
    }
    // `max_conns` against the least-connection count it holds back (status has both).
    if let Some(max) = b.get("max_conns").and_then(Value::as_u64) {
        match b.get("active_estimate").and_then(Value::as_u64) {
            Some(now) if now >= max => {
                let _ = write!(state, ", full ({now} of max {max})");
            }
            _ => {
                let _ = write!(state, ", max {max}");
            }
        }
    }
    state
}

/// One block per VIP of `vips`, apart by an empty line: `VIP id (name)`, what `head` says
/// of it on the same line, then what `body` writes.
pub(super) fn vip_blocks(
    vips: &[Value],
    head: impl Fn(&Value) -> String,
    body: impl Fn(&Value, &mut String),
) -> String {
    if vips.is_empty() {
        return "no VIPs; add one with `xlb vip add` or in the config file\n".to_owned();
    }
    let mut out = String::new();
    for (i, vip) in vips.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "VIP {}", field(vip, "vip"));
        if let Some(name) = vip.get("name").and_then(Value::as_str) {
            let _ = write!(out, " ({name})");
        }
        let _ = writeln!(out, "  {}", head(vip));
        body(vip, &mut out);
    }
    out
}

fn render_status(status: &Value) -> String {
    let head = |vip: &Value| {
        let mut h = format!(
            "scheduler {}  table {}",
            field(vip, "scheduler"),
            field(vip, "table_size")
        );
        if vip.get("stateless") == Some(&Value::Bool(true)) {
            h.push_str("  stateless (no flow recorded)");
        }
        if vip.get("encap").and_then(Value::as_str) == Some("gue") {
            h.push_str("  gue tunnels");
        }
        if let Some(n) = vip["quic"]["server_id_bytes"].as_u64() {
            let _ = write!(h, "  quic (server IDs of {n} octets)");
        }
        if let Some(n) = vip["new_flow_rate_limit"].as_u64() {
            let _ = write!(h, "  at most {n} new flows/s per CPU");
        }
        if let Some(n) = vip["client_flow_rate_limit"].as_u64() {
            let _ = write!(h, "  at most {n} new flows/s from one client");
        }
        h
    };
    let mut out = vip_blocks(list(status, "vips"), head, |vip, out| {
        let _ = writeln!(
            out,
            "  traffic: {} packets, {} bytes, {} new flows",
            field(vip, "packets"),
            field(vip, "bytes"),
            field(vip, "new_flows")
        );
        // Only where a limit turned flows away: the figure an operator then looks for.
        let limited = |k: &str| vip["new_flows_limited"][k].as_u64().unwrap_or(0);
        if limited("vip") + limited("client") > 0 {
            let _ = writeln!(
                out,
                "  turned away: {} new flows by the VIP's limit, {} by the per-client limit",
                limited("vip"),
                limited("client")
            );
        }
        let backends = list(vip, "backends");
        if backends.is_empty() {
            out.push_str("  no backends: new flows are dropped; `xlb backend add` adds one\n");
            return;
        }
        let backup_serves = |b: &Value| {
            b.get("backup") == Some(&Value::Bool(true))
                && b.get("state").and_then(Value::as_str) == Some("up")
        };
        if backends.iter().any(backup_serves) {
            out.push_str("  on backups: no regular backend takes new flows\n");
        }
        let mut t = Table::new(&[
            ("BACKEND", false),
            ("WEIGHT", true),
            ("STATE", false),
            ("FLOWS", true),
            ("PACKETS", true),
            ("BYTES", true),
            ("NEW FLOWS", true),
            ("NEXT HOP", false),
            ("HEALTH", false),
        ]);
        for b in backends {
            let address = match b["quic_server_id"].as_u64() {
                Some(id) => format!("{} (quic {id})", field(b, "address")),
                None => field(b, "address"),
            };
            t.row(vec![
                address,
                field(b, "weight"),
                state_cell(b),
                field(b, "active_flows"),
                field(b, "packets"),
                field(b, "bytes"),
                field(b, "new_flows"),
                field(b, "next_hop"),
                health(b.get("health")),
            ]);
        }
        t.render("  ", out);
        for b in backends {
            if let Some(r) = b.get("removal").filter(|r| r.is_object()) {
                let _ = writeln!(
                    out,
                    "  removing {}: {} s without a packet of the {} s that end it; {} s of its {} s drain",
                    field(b, "address"),
                    field(r, "idle_s"),
                    field(r, "quiet_s"),
                    field(r, "draining_s"),
                    field(r, "deadline_s")
                );
            }
        }
    });
    if let Some(t) = status.get("conn_tables").filter(|t| !t.is_null()) {
        out.push_str(&conn_tables_line(t));
    }
    // A reload that did not apply is otherwise only in the daemon's log.
    let last = status.get("config").and_then(|c| c.get("last_reload"));
    if let Some(l) = last.filter(|l| l.get("result").is_some_and(|r| r != "applied")) {
        let ago = l
            .get("at_unix_s")
            .and_then(Value::as_f64)
            .map(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                format!(", {:.0} s ago", (now - at).max(0.0))
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nthe last config reload ({}{ago}) was {}: {}",
            field(l, "by"),
            field(l, "result"),
            field(l, "error")
        );
    }
    let ended = list(status, "ended_removals");
    if !ended.is_empty() {
        out.push_str("\nremoved gracefully, lately:\n");
        for e in ended {
            let how = match e.get("outcome").and_then(Value::as_str) {
                Some("quiet") => "its clients done",
                Some("deadline") => "at its deadline, still busy",
                Some("failed") => "FAILED: still there, drained (see the daemon's log)",
                _ => "-",
            };
            let _ = writeln!(
                out,
                "  {} of {}: {how}, after {:.1} s of draining, {:.0} s ago",
                field(e, "address"),
                field(e, "vip"),
                e.get("drained_s").and_then(Value::as_f64).unwrap_or(0.0),
                e.get("ago_s").and_then(Value::as_f64).unwrap_or(0.0)
            );
        }
    }
    out
}

fn render_vip_list(status: &Value) -> String {
    let vips = list(status, "vips");
    if vips.is_empty() {
        return "no VIPs\n".to_owned();
    }
    let mut t = Table::new(&[
        ("VIP", false),
        ("NAME", false),
        ("SCHEDULER", false),
        ("BACKENDS UP", true),
        ("PACKETS", true),
        ("BYTES", true),
    ]);
    for vip in vips {
        let backends = list(vip, "backends");
        // Healthy: a backup waiting its turn is as up as any.
        let up = backends
            .iter()
            .filter(|b| {
                matches!(
                    b.get("state").and_then(Value::as_str),
                    Some("up" | "standby")
                )
            })
            .count();
        t.row(vec![
            field(vip, "vip"),
            field(vip, "name"),
            field(vip, "scheduler"),
            format!("{up}/{}", backends.len()),
            field(vip, "packets"),
            field(vip, "bytes"),
        ]);
    }
    let mut out = String::new();
    t.render("", &mut out);
    out
}

fn render_stats(stats: &Value) -> String {
    let mut out = String::new();
    let mut reasons: Vec<(&String, &Value)> = stats
        .get("reasons")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    // By name, so two runs line up whatever order the daemon used.
    reasons.sort_by(|a, b| a.0.cmp(b.0));
    let mut t = Table::new(&[("COUNTER", false), ("PACKETS", true)]);
    for (name, v) in &reasons {
        t.row(vec![(*name).clone(), cell(Some(v))]);
    }
    t.render("", &mut out);
    // The packets behind the largest drop counter are a command away.
    let largest_drop = reasons
        .iter()
        .filter(|(name, _)| Drop::ALL.iter().any(|d| d.name() == name.as_str()))
        .filter_map(|(name, v)| Some((v.as_u64().filter(|&n| n > 0)?, *name)))
        .max();
    if let Some((_, name)) = largest_drop {
        let _ = writeln!(
            out,
            "(`xlb drops --reason {name}` shows the packets behind a drop counter)"
        );
    }
    let vips = list(stats, "vips");
    if !vips.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            ("VIP", false),
            ("PACKETS", true),
            ("BYTES", true),
            ("NEW FLOWS", true),
        ]);
        for vip in vips {
            t.row(vec![
                field(vip, "vip"),
                field(vip, "packets"),
                field(vip, "bytes"),
                field(vip, "new_flows"),
            ]);
        }
        t.render("", &mut out);
    }
    // Whatever else the daemon reports (health transitions, …), compactly; the ended
    // graceful removals are `xlb status`'s to tell (it words them).
    if let Some(obj) = stats.as_object() {
        let mut first = true;
        for (k, v) in obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "reasons" | "vips" | "ended_removals"))
        {
            if first {
                out.push('\n');
                first = false;
            }
            let _ = writeln!(out, "{k}: {v}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    // Parsed once per assertion: its size does not matter.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, clap::Subcommand)]
    enum Top {
        #[command(subcommand)]
        Vip(VipCmd),
        #[command(subcommand)]
        Backend(BackendCmd),
    }

    #[track_caller]
    fn parse(args: &[&str]) -> Top {
        match Cli::try_parse_from(std::iter::once("xlb").chain(args.iter().copied())) {
            Ok(c) => c.cmd,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn vip_add_parses_everything() {
        let Top::Vip(VipCmd::Add {
            vip,
            scheduler,
            table_size,
            backends,
            name,
            health_check,
            agent_port,
            idle_timeout_s,
            slow_start_s,
            allow,
            stateless,
            quic_id_bytes,
            new_flow_rate_limit,
            client_flow_rate_limit,
            encap,
            source,
        }) = parse(&[
            "vip",
            "add",
            "198.18.1.1:80/tcp",
            "--scheduler",
            "sh",
            "--table-size",
            "251",
            "--backend",
            "198.18.0.11",
            "--backend",
            "198.18.0.12:3",
            "--backend",
            "[fd00::13]:2",
            "--backend",
            "fd00::1:4",
            "--name",
            "web",
            "--health-check",
            r#"{"kind":"http","path":"/healthz"}"#,
            "--agent-port",
            "5555",
            "--idle-timeout-s",
            "3600",
            "--slow-start-s",
            "60",
            "--allow",
            "198.18.0.0/15",
            "--allow",
            "198.19.7.1",
            "--stateless",
            "--quic-id-bytes",
            "3",
            "--new-flow-rate-limit",
            "500",
            "--client-flow-rate-limit",
            "20",
            "--encap",
            "gue",
            "--source",
            "flow_hash",
        ])
        else {
            panic!("not vip add")
        };
        assert!(stateless);
        assert_eq!(quic_id_bytes, Some(3));
        assert_eq!(new_flow_rate_limit, Some(500));
        assert_eq!(client_flow_rate_limit, Some(20));
        assert_eq!(
            (encap, source),
            (Some(Encap::Gue), Some(SourceMode::FlowHash))
        );
        let argv = ["xlb", "vip", "add", "198.18.1.1:80", "--encap", "gre"];
        assert!(Cli::try_parse_from(argv).is_err(), "gre accepted");
        assert_eq!(vip.to_string(), "198.18.1.1:80/tcp");
        assert_eq!(scheduler, Some(Scheduler::Sh));
        assert_eq!(table_size, Some(251));
        let got: Vec<(String, u32)> = backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.0.11".into(), 1),
                ("198.18.0.12".into(), 3),
                ("fd00::13".into(), 2),
                ("fd00::1:4".into(), 1)
            ]
        );
        assert_eq!(name.as_deref(), Some("web"));
        assert_eq!(slow_start_s, Some(60));
        let allowed: Vec<String> = allow.iter().map(ToString::to_string).collect();
        assert_eq!(allowed, ["198.18.0.0/15", "198.19.7.1/32"]);
        assert_eq!(health_check.map(|h| h.path), Some("/healthz".to_owned()));
        assert_eq!(agent_port, Some(5555));
        assert_eq!(idle_timeout_s, Some(3600));
    }

    #[test]
    fn bad_arguments_are_refused_by_clap() {
        for args in [
            &["vip", "add", "198.18.1.1:80/sctp"][..],
            &["vip", "add", "198.18.1.1:80", "--backend", "198.18.0.11:x"],
            &[
                "vip",
                "add",
                "198.18.1.1:80",
                "--backend",
                "198.18.0.11:10001",
            ],
            &["vip", "add", "198.18.1.1:80", "--scheduler", "random"],
            &[
                "vip",
                "add",
                "198.18.1.1:80",
                "--health-check",
                r#"{"kind":"tcp","bogus":1}"#,
            ],
            &[
                "vip",
                "add",
                "198.18.1.1:80",
                "--health-check",
                r#"{"rise":0}"#,
            ],
            &["backend", "add", "198.18.1.1:80", "not-an-ip"],
            &["vip", "idle-timeout", "198.18.1.1:80", "10"],
            &["vip", "idle-timeout", "198.18.1.1:80", "an-hour"],
            &["vip", "health-check", "198.18.1.1:80", r#"{"rise":0}"#],
            // Every client must be said, not implied by a missing list.
            &["vip", "sources", "198.18.1.1:80"],
            &["vip", "sources", "198.18.1.1:80", "198.18.0.0/15", "--any"],
            &["vip", "sources", "198.18.1.1:80", "198.18.0.1/15"],
            // Nothing to cut when every client is admitted.
            &["vip", "sources", "198.18.1.1:80", "--any", "--cut"],
        ] {
            let argv = std::iter::once("xlb").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?} accepted");
        }
        let Top::Vip(VipCmd::Sources { prefixes, any, .. }) = parse(&[
            "vip",
            "sources",
            "198.18.1.1:80",
            "198.18.0.0/15",
            "198.19.7.1",
        ]) else {
            panic!("not vip sources")
        };
        assert_eq!((prefixes.len(), any), (2, false));
        let Top::Vip(VipCmd::Sources { prefixes, any, .. }) =
            parse(&["vip", "sources", "198.18.1.1:80", "--any"])
        else {
            panic!("not vip sources")
        };
        assert!(prefixes.is_empty() && any);
        let Top::Vip(VipCmd::Sources { cut, .. }) =
            parse(&["vip", "sources", "198.18.1.1:80", "198.18.0.0/24", "--cut"])
        else {
            panic!("not vip sources")
        };
        assert!(cut);
        let Top::Backend(BackendCmd::Add {
            weight, drained, ..
        }) = parse(&["backend", "add", "198.18.1.1:80", "198.18.0.11"])
        else {
            panic!("not backend add")
        };
        assert_eq!((weight, drained), (1, false));
        let Top::Backend(BackendCmd::Add { backup, .. }) =
            parse(&["backend", "add", "198.18.1.1:80", "198.18.0.11", "--backup"])
        else {
            panic!("not backend add")
        };
        assert!(backup);
        let Top::Backend(BackendCmd::Add { max_conns, .. }) = parse(&[
            "backend",
            "add",
            "198.18.1.1:80",
            "198.18.0.11",
            "--max-conns",
            "50",
        ]) else {
            panic!("not backend add")
        };
        assert_eq!(max_conns, Some(50));
        let Top::Backend(BackendCmd::Add { quic_server_id, .. }) = parse(&[
            "backend",
            "add",
            "198.18.1.1:443/udp",
            "198.18.0.11",
            "--quic-server-id",
            "7",
        ]) else {
            panic!("not backend add")
        };
        assert_eq!(quic_server_id, Some(7));
        for (arg, want) in [("500", Some(500)), ("none", None)] {
            let Top::Backend(BackendCmd::MaxConns { max_conns, .. }) =
                parse(&["backend", "max-conns", "198.18.1.1:80", "198.18.0.11", arg])
            else {
                panic!("not backend max-conns")
            };
            assert_eq!(max_conns, MaxConnsArg(want));
        }
        for bad in ["0", "-1", "lots"] {
            let argv = [
                "xlb",
                "backend",
                "max-conns",
                "198.18.1.1:80",
                "198.18.0.11",
                bad,
            ];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad} accepted");
        }
        for (arg, want) in [("250", Some(250)), ("none", None)] {
            let Top::Vip(VipCmd::FlowLimit {
                limit, per_client, ..
            }) = parse(&["vip", "flow-limit", "198.18.1.1:80", arg])
            else {
                panic!("not vip flow-limit")
            };
            assert_eq!((limit, per_client), (FlowLimitArg(want), false));
            let Top::Vip(VipCmd::FlowLimit {
                limit, per_client, ..
            }) = parse(&["vip", "flow-limit", "198.18.1.1:80", arg, "--per-client"])
            else {
                panic!("not vip flow-limit")
            };
            assert_eq!((limit, per_client), (FlowLimitArg(want), true));
        }
        for bad in ["0", "-1", "lots"] {
            let argv = ["xlb", "vip", "flow-limit", "198.18.1.1:80", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad} accepted");
        }
        for (arg, want) in [("3600", Some(3600)), ("default", None)] {
            let Top::Vip(VipCmd::IdleTimeout { seconds, .. }) =
                parse(&["vip", "idle-timeout", "198.18.1.1:80", arg])
            else {
                panic!("not vip idle-timeout")
            };
            assert_eq!(seconds, IdleTimeout(want));
        }
        let Top::Vip(VipCmd::HealthCheck { check, .. }) =
            parse(&["vip", "health-check", "198.18.1.1:80", "default"])
        else {
            panic!("not vip health-check")
        };
        assert_eq!(check, HealthCheckArg(None));
    }

    #[test]
    fn flow_renders_its_entry_its_next_backend_and_an_all_ports_vip() {
        let on_port = json!({
            "vip": "198.18.1.1:80/tcp", "service": "198.18.1.1:80/tcp",
            "client": "198.18.0.10:40000", "scheduler": "lc",
            "recorded": {"backend": "198.18.0.11", "counted": true, "closed": false, "idle_s": 3},
            "next": {"how": "less_loaded", "backend": "198.18.0.12",
                     "candidates": ["198.18.0.11", "198.18.0.12"]}});
        assert_eq!(
            render_flow(&on_port),
            "flow 198.18.0.10:40000 -> 198.18.1.1:80/tcp (lc)\n\
             recorded:    on 198.18.0.11 (counted, last seen 3 s ago)\n\
             next packet: 198.18.0.12 (of 198.18.0.11 and 198.18.0.12, the one with fewer \
             active flows per weight now)\n"
        );
        let all_ports = json!({
            "vip": "198.18.1.1:7000/tcp", "service": "198.18.1.1:*/tcp",
            "client": "198.18.0.10:40000", "scheduler": "maglev", "recorded": null,
            "next": {"how": "hash", "backend": "198.18.0.12"}});
        assert_eq!(
            render_flow(&all_ports),
            "flow 198.18.0.10:40000 -> 198.18.1.1:7000/tcp (maglev, served by 198.18.1.1:*/tcp)\n\
             recorded:    no (a new flow for the scheduler)\n\
             next packet: 198.18.0.12 (the VIP's table at the flow's hash)\n"
        );
        let stateless = json!({
            "vip": "198.18.1.1:53/udp", "service": "198.18.1.1:53/udp",
            "client": "198.18.0.10:40000", "scheduler": "maglev", "stateless": true,
            "recorded": null, "next": {"how": "hash", "backend": "198.18.0.13"}});
        assert_eq!(
            render_flow(&stateless),
            "flow 198.18.0.10:40000 -> 198.18.1.1:53/udp (maglev)\n\
             recorded:    no (a stateless VIP: every packet goes by its hash)\n\
             next packet: 198.18.0.13 (the VIP's table at the flow's hash)\n"
        );
    }

    #[test]
    fn reload_renders_its_changes_then_the_summary() {
        let r = json!({"done": "reloaded /etc/xlb.json: 2 changes", "file": "/etc/xlb.json",
                       "applied": true,
                       "changes": ["remove backend 198.18.0.11 from 198.18.1.1:80/tcp",
                                   "VIP 198.18.1.1:80/tcp: scheduler wrr"]});
        assert_eq!(
            render_reload(&r),
            "  remove backend 198.18.0.11 from 198.18.1.1:80/tcp\n  \
             VIP 198.18.1.1:80/tcp: scheduler wrr\nreloaded /etc/xlb.json: 2 changes\n"
        );
    }

    #[test]
    fn flows_render_one_line_each_and_say_what_the_limit_cut() {
        let r = json!({"scanned": 12, "matched": 3, "truncated": true, "flows": [
            {"client": "198.18.0.10:40000", "vip": "198.18.1.1:80/tcp", "service": "198.18.1.1:80/tcp",
             "backend": "198.18.0.11", "counted": true, "closed": false, "idle_s": 4},
            {"client": "198.18.0.10:40001", "vip": "198.18.1.2:8080/tcp", "service": "198.18.1.2:*/tcp",
             "backend": null, "counted": false, "closed": false, "idle_s": null}]});
        assert_eq!(
            render_flows(&r),
            "\
VIP                  CLIENT             BACKEND      NOTES
198.18.1.1:80/tcp    198.18.0.10:40000  198.18.0.11  counted, last seen 4 s ago
198.18.1.2:8080/tcp  198.18.0.10:40001  - (removed)  served by 198.18.1.2:*/tcp
2 of 3 matching flows shown, the first by VIP and client (--limit shows more); 12 entries in the connection tables
"
        );
        let none = json!({"scanned": 0, "matched": 0, "truncated": false, "flows": []});
        assert_eq!(
            render_flows(&none),
            "0 flows (0 entries in the connection tables)\n"
        );
    }

    #[test]
    fn status_renders_as_tables() {
        let status = json!({"vips": [
            {"vip": "198.18.1.1:80/tcp", "name": "web", "scheduler": "maglev", "table_size": 65537,
             "packets": 10, "bytes": 1200, "new_flows": 2,
             "backends": [
                {"address": "198.18.0.11", "weight": 1, "state": "up", "active_flows": 1, "packets": 6,
                 "next_hop": "02:00:00:00:00:11",
                 "bytes": 700, "new_flows": 1,
                 "health": {"kind": "tcp", "checks_ok": 5, "checks_failed": 0, "latency_ms": 0.42, "last_error": null}},
                {"address": "198.18.0.12", "weight": 20, "state": "down", "backup": true, "active_flows": 0, "packets": 4,
                 "bytes": 500, "new_flows": 1,
                 "health": {"kind": "tcp", "checks_ok": 0, "checks_failed": 3, "latency_ms": null,
                            "last_error": "connection refused"}}]},
            {"vip": "[fd00::1]:53/udp", "name": null, "scheduler": "sh", "table_size": 251, "backends": []}
        ]});
        let text = render_status(&status);
        let want = "\
VIP 198.18.1.1:80/tcp (web)  scheduler maglev  table 65537
  traffic: 10 packets, 1200 bytes, 2 new flows
  BACKEND      WEIGHT  STATE         FLOWS  PACKETS  BYTES  NEW FLOWS  NEXT HOP           HEALTH
  198.18.0.11       1  up                1        6    700          1  02:00:00:00:00:11  tcp ok 5 failed 0 0.4 ms
  198.18.0.12      20  down, backup      0        4    500          1  -                  tcp ok 0 failed 3 (last error: connection refused)

VIP [fd00::1]:53/udp  scheduler sh  table 251
  traffic: - packets, - bytes, - new flows
  no backends: new flows are dropped; `xlb backend add` adds one
";
        assert_eq!(text, want, "\n{text}");
        let listed = render_vip_list(&status);
        assert!(
            listed.contains("198.18.1.1:80/tcp  web   maglev"),
            "{listed}"
        );
        assert!(listed.contains("1/2"), "{listed}");
        assert!(render_status(&json!({"vips": []})).starts_with("no VIPs"));
        // What else a VIP is, in its head line; a backend's QUIC server ID by its address.
        let quic = render_status(&json!({"vips": [{"vip": "198.18.1.1:443/udp",
            "scheduler": "maglev", "table_size": 65537, "encap": "gue",
            "quic": {"server_id_bytes": 2, "config_id": 0}, "new_flow_rate_limit": 500,
            "client_flow_rate_limit": 4, "new_flows_limited": {"vip": 5, "client": 2},
            "backends": [{"address": "198.18.0.11", "quic_server_id": 7, "state": "up"}]}]}));
        assert!(
            quic.contains("table 65537  gue tunnels  quic (server IDs of 2 octets)  at most 500 new flows/s per CPU  at most 4 new flows/s from one client\n"),
            "{quic}"
        );
        assert!(quic.contains("198.18.0.11 (quic 7)"), "{quic}");
        assert!(
            quic.contains(
                "  turned away: 5 new flows by the VIP's limit, 2 by the per-client limit\n"
            ),
            "{quic}"
        );
        // A VIP left to its backups says so.
        let on_backups = |backup_state: &str| {
            render_status(&json!({"vips": [{"vip": "198.18.1.1:80/tcp", "backends": [
                {"address": "198.18.0.11", "state": "down"},
                {"address": "198.18.0.13", "backup": true, "state": backup_state}]}]}))
        };
        assert!(on_backups("up").contains("  on backups: no regular backend takes new flows\n"));
        assert!(on_backups("up").contains("up, backup"));
        // A backend in slow start shows its share; at 100 % nothing.
        let ramping = |pct: u32| {
            render_status(&json!({"vips": [{"vip": "198.18.1.1:80/tcp", "backends": [
                {"address": "198.18.0.11", "state": "up", "slow_start_pct": pct}]}]}))
        };
        assert!(
            ramping(35).contains(" up, slow start 35% "),
            "{}",
            ramping(35)
        );
        assert!(!ramping(100).contains("slow start"));
        // A limited backend shows its limit, and says when it is full.
        let limited = |now: u64| {
            render_status(&json!({"vips": [{"vip": "198.18.1.1:80/tcp", "backends": [
                {"address": "198.18.0.11", "state": "up", "max_conns": 10,
                 "active_estimate": now}]}]}))
        };
        assert!(limited(3).contains(" up, max 10 "), "{}", limited(3));
        assert!(
            limited(10).contains(" up, full (10 of max 10) "),
            "{}",
            limited(10)
        );
        assert!(!on_backups("standby").contains("on backups"));
        // Something unexpected still prints rather than failing.
        assert!(render_status(&json!("surprise")).starts_with("no VIPs"));
    }

    #[test]
    fn status_says_how_full_the_connection_tables_are() {
        let t = |v4: u64| json!({"v4": {"entries": v4, "capacity": 1000}, "v6": {"entries": 3, "capacity": 1000}});
        assert_eq!(
            conn_tables_line(&t(120)),
            "\nconnection tables: 120 of 1000 IPv4, 3 of 1000 IPv6 flows\n"
        );
        assert!(conn_tables_line(&t(900)).contains("nearly full"));
        assert!(!conn_tables_line(&t(899)).contains("nearly full"));
        let status = render_status(&json!({"vips": [], "conn_tables": t(1)}));
        assert!(
            status.contains("connection tables: 1 of 1000 IPv4"),
            "{status}"
        );
        // A failed scan counts nothing, and says nothing about the tables.
        let status = render_status(&json!({"vips": [], "conn_tables": null}));
        assert!(!status.contains("connection tables"), "{status}");
    }

    #[test]
    fn status_of_one_vip_keeps_only_it() {
        let status = json!({"vips": [{"vip": "198.18.1.1:80/tcp"}, {"vip": "[fd00::1]:53/udp"}],
                            "ended_removals": []});
        let one = only_vip(status.clone(), Some(&"[fd00::1]:53/udp".parse().unwrap())).unwrap();
        assert_eq!(one["vips"], json!([{"vip": "[fd00::1]:53/udp"}]));
        assert_eq!(one["ended_removals"], json!([]));
        let e = only_vip(status.clone(), Some(&"198.18.1.2:80/tcp".parse().unwrap())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no VIP 198.18.1.2:80/tcp; the balancer has 198.18.1.1:80/tcp, [fd00::1]:53/udp"
        );
        assert_eq!(only_vip(status.clone(), None).unwrap(), status);
    }

    #[test]
    fn status_says_when_the_last_reload_did_not_apply() {
        let with = |result: &str, error: Value| {
            render_status(&json!({"vips": [], "config": {"loaded_at_unix_s": 1.0,
                "reloads": {"applied": 1, "refused": 1, "failed": 0},
                "last_reload": {"at_unix_s": 0.0, "by": "SIGHUP", "result": result, "error": error}}}))
        };
        let refused = with("refused", json!("reload of /etc/xlb.json refused, nothing changed: outer_source: changes only with a restart of xlb"));
        assert!(
            refused.contains("\nthe last config reload (SIGHUP, ")
                && refused.contains(
                    " s ago) was refused: reload of /etc/xlb.json refused, nothing changed: outer_source: "
                ),
            "{refused}"
        );
        assert!(!with("applied", Value::Null).contains("reload"));
    }

    #[test]
    fn status_shows_graceful_removals_running_and_ended() {
        let status = json!({"vips": [{"vip": "198.18.1.1:80/tcp", "backends": [
            {"address": "198.18.0.11", "state": "removing",
             "removal": {"draining_s": 12.5, "idle_s": 1.25, "quiet_s": 5, "deadline_s": 300}},
            {"address": "198.18.0.12", "state": "up", "removal": null}]}],
            "ended_removals": [
                {"vip": "198.18.1.1:80/tcp", "address": "198.18.0.13", "outcome": "quiet", "drained_s": 7.04, "ago_s": 61.2},
                {"vip": "198.18.1.1:80/tcp", "address": "198.18.0.14", "outcome": "deadline", "drained_s": 300.2, "ago_s": 3.0},
                {"vip": "198.18.1.1:80/tcp", "address": "198.18.0.15", "outcome": "failed", "drained_s": 5.0, "ago_s": 1.0}]});
        let text = render_status(&status);
        let want_lines = [
            "  removing 198.18.0.11: 1.25 s without a packet of the 5 s that end it; 12.5 s of its 300 s drain\n",
            "\nremoved gracefully, lately:\n",
            "  198.18.0.13 of 198.18.1.1:80/tcp: its clients done, after 7.0 s of draining, 61 s ago\n",
            "  198.18.0.14 of 198.18.1.1:80/tcp: at its deadline, still busy, after 300.2 s of draining, 3 s ago\n",
            "  198.18.0.15 of 198.18.1.1:80/tcp: FAILED: still there, drained (see the daemon's log)",
        ];
        for want in want_lines {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert_eq!(text.matches("removing").count(), 2, "{text}");
    }

    #[test]
    fn stats_render_sorted() {
        let stats = json!({"reasons": {"tx_encap": 12, "not_vip": 3, "no_backend": 0}, "health_transitions": {"up": 1, "down": 0},
                           "ended_removals": [],
                           "vips": [{"vip": "198.18.1.1:80/tcp", "packets": 12, "bytes": 1500, "new_flows": 4}]});
        let want = "\
COUNTER     PACKETS
no_backend        0
not_vip           3
tx_encap         12

VIP                PACKETS  BYTES  NEW FLOWS
198.18.1.1:80/tcp       12   1500          4

health_transitions: {\"down\":0,\"up\":1}
";
        assert_eq!(render_stats(&stats), want);
        // A drop counter that moved: the command that shows its packets, for the largest.
        let stats = json!({"reasons": {"no_backend": 3, "source_denied": 7, "not_vip": 99}});
        assert!(render_stats(&stats).contains(
            "`xlb drops --reason source_denied` shows the packets behind a drop counter"
        ));
    }

    #[test]
    fn refusals_print_code_and_message() {
        let e = anyhow::Error::new(Refused(ControlError::new(
            "unknown_vip",
            "unknown VIP 198.18.1.1:80/tcp",
        )));
        assert_eq!(
            e.to_string(),
            "error (unknown_vip): unknown VIP 198.18.1.1:80/tcp"
        );
        assert_eq!(exit_code(Err(e)), ExitCode::FAILURE);
        assert_eq!(exit_code(Ok(())), ExitCode::SUCCESS);
    }

    #[test]
    fn commands_talk_to_a_daemon() {
        use crate::control::server::tests::{Running, TempDir};
        let dir = TempDir::new("cli");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let server = rt.block_on(async { Running::start(&dir.sock()) });
        let opts = CtlOpts {
            socket: dir.sock(),
            json: false,
        };
        run_backend(
            BackendCmd::Drain {
                vip: "198.18.1.1:80/tcp".parse().expect("vip"),
                address: "198.18.0.11".parse().expect("ip"),
                wait: None,
                quiet: Duration::from_secs(5),
            },
            &opts,
        )
        .expect("drain");
        run_status(&opts, None, None).expect("status");
        let e = run_vip(
            VipCmd::Remove {
                vip: "198.18.1.1:81/tcp".parse().expect("vip"),
            },
            &opts,
        )
        .expect_err("refused");
        assert_eq!(
            e.downcast_ref::<Refused>().map(|r| r.0.code.as_str()),
            Some("unknown_vip")
        );
        assert_eq!(server.handler.count(), 3);
        rt.block_on(server.stop());
    }
}
