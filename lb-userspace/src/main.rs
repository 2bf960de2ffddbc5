//! The `xlb` command: run the balancer, run the backend decap program, and control a
//! running balancer through its socket.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use xlb::{
    cli::ctl::{self, BackendCmd, CtlOpts, VipCmd},
    config::{Config, VipId},
    control::{protocol::FlowsQuery, DEFAULT_SOCKET},
    daemon::{self, RunOptions},
    loader::LoadOptions,
    logging::LogFormat,
};

/// xlb: an XDP layer-4 load balancer with consistent hashing and direct server return.
#[derive(Parser)]
#[command(
    name = "xlb",
    version,
    about = "xlb: an XDP layer-4 load balancer with consistent hashing and direct server return"
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: log::LevelFilter,
    /// Log lines as text, or as one JSON object per line (ts, level, target, msg).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Driver (native) XDP: fastest; the driver must support it.
    Native,
    /// Generic XDP in the kernel's stack: works everywhere, slower.
    Skb,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the balancer to an interface and run until SIGINT/SIGTERM.
    Run {
        /// Interface the VIP traffic arrives on.
        #[arg(long)]
        iface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: Mode,
        /// JSON config with VIPs and backends (docs/config.md).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Control socket path.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Do not open a control socket.
        #[arg(long, conflicts_with = "socket")]
        no_socket: bool,
        /// Serve Prometheus metrics on ADDR:PORT (GET /metrics).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// VIPs that can have lookup tables (each takes 2 × 65537 × 4 bytes of kernel memory).
        #[arg(long, default_value_t = LoadOptions::default().max_vips)]
        max_vips: u32,
        /// Connection-table entries, per address family (IPv4 and IPv6 flows have a table
        /// each).
        #[arg(long, default_value_t = LoadOptions::default().max_conns)]
        max_conns: u32,
        /// Turn the per-CPU flow cache in front of the connection tables off (it takes
        /// 512 KiB of kernel memory per possible CPU).
        #[arg(long)]
        no_flow_cache: bool,
        /// Keep the attachment, the connection tables and the backend slots pinned in DIR
        /// (on bpffs, one directory per interface): the program stays attached when xlb
        /// stops, and the next `xlb run` with the same DIR takes over without dropping a
        /// packet or moving a flow. Removing DIR detaches it.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// On SIGTERM / SIGINT, answer `GET /ready` with 503 and keep forwarding for SECS
        /// seconds before stopping, so that route announcers withdraw the VIPs first (a
        /// second signal stops at once). Default 0.
        #[arg(long, value_name = "SECS", default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..=3600))]
        shutdown_grace: u32,
    },
    /// Attach the decap program on a backend: strips IP-in-IP (and GUE) tunnels addressed
    /// to us.
    Decap {
        /// Interface the tunnels arrive on.
        #[arg(long)]
        iface: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: Mode,
        /// Accept tunnels to this address (repeatable; default: the interface's and lo's).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// Serve Prometheus metrics (the program's counters) on this address.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Also strip GUE tunnels (UDP to this port, the balancer's `gue_port`) for VIPs
        /// with `"encap": "gue"`.
        #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: Option<u16>,
        /// Lower the MSS of SYN-ACKs from lo's addresses (the VIPs) so that clients'
        /// segments fit the MTU once tunnelled, ICMP or not; the value says which tunnel
        /// header to leave room for (auto: IPv6's if this host has a global IPv6 address).
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "auto", value_name = "HEADER")]
        clamp_mss: Option<xlb::decap::TunnelHeader>,
    },
    /// Run a backend agent (HAProxy agent-check format) answering with a file's first line.
    Agent {
        /// Address to listen on.
        #[arg(long, default_value = "[::]:5555")]
        listen: SocketAddr,
        /// File whose first line is the answer (`up`, `drain`, `down`, `up 50%`, …); `up`
        /// while it does not exist.
        #[arg(long)]
        state_file: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Add, remove or change VIPs of a running balancer.
    Vip {
        #[command(flatten)]
        ctl: CtlArgs,
        #[command(subcommand)]
        cmd: Box<VipCmd>,
    },
    /// Add, remove, drain or reweight backends of a running balancer.
    Backend {
        #[command(flatten)]
        ctl: CtlArgs,
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Show VIPs, backends, health and traffic of a running balancer.
    Status {
        #[command(flatten)]
        ctl: CtlArgs,
        #[command(flatten)]
        rate: RateArg,
        /// Only this VIP (`198.18.1.1:80/tcp`).
        vip: Option<VipId>,
    },
    /// Show the data plane's counters of a running balancer.
    Stats {
        #[command(flatten)]
        ctl: CtlArgs,
        #[command(flatten)]
        rate: RateArg,
        /// Only this VIP's traffic (the counters by reason stay the balancer's).
        vip: Option<VipId>,
    },
    /// Show where a client's flow to a VIP goes: its connection-table entry and the backend
    /// of its next packet.
    Flow {
        #[command(flatten)]
        ctl: CtlArgs,
        /// The VIP, as `198.18.1.1:80/tcp` or `[fd00::1]:80/udp`.
        vip: VipId,
        /// The client's address and port, as `198.18.0.10:40000` or `[fd00::10]:40000`.
        client: SocketAddr,
    },
    /// Print the running VIPs and backends as a config file, runtime changes included:
    /// `xlb dump-config > xlb.json` keeps them across reloads and restarts.
    DumpConfig {
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Read the config file again and apply it (as SIGHUP does), printing each change or
    /// why nothing changed.
    Reload {
        #[command(flatten)]
        ctl: CtlArgs,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        /// Where a VIP's allowed_sources change, also forget its flows of clients the new
        /// list leaves out: their open connections stop too (with --dry-run: count them).
        #[arg(long)]
        cut: bool,
    },
    /// List the flows the connection tables hold and the backend each is on, the first by
    /// VIP and client; or with --forget, delete them from the tables.
    Flows {
        #[command(flatten)]
        ctl: CtlArgs,
        /// Only this VIP's flows (`198.18.1.1:80/tcp`; a port of an all-ports VIP: the
        /// flows to that port).
        vip: Option<VipId>,
        /// Only the flows on this backend.
        #[arg(long)]
        backend: Option<IpAddr>,
        /// Only the flows of clients in this prefix (`198.18.0.0/24`, or an address).
        #[arg(long, value_name = "PREFIX")]
        client: Option<xlb::config::SourcePrefix>,
        /// At most this many flows (1..=10000).
        #[arg(long, default_value_t = xlb::flows::DEFAULT_LIMIT)]
        limit: u32,
        /// Only the flows idle for longer than SECS (no packet since; a flow that sends
        /// shows 0 or 1): ended ones, listed until the tables evict them.
        #[arg(long, value_name = "SECS")]
        idle_over: Option<u32>,
        /// Forget the matching flows instead (all of them; name a VIP, a backend or
        /// clients): their next packets are new flows, scheduled anew or refused by the
        /// VIP's allowed sources. Their connections break where the new backend differs.
        #[arg(long, conflicts_with = "limit")]
        forget: bool,
    },
    /// Show dropped packets the balancer sampled (flow, reason, length), newest last: which
    /// packets `xlb stats`' drop counters counted.
    Drops {
        #[command(flatten)]
        ctl: CtlArgs,
        /// Only packets to this service (`198.18.1.1:80/tcp`; `198.18.1.1:*/tcp`: any port).
        vip: Option<VipId>,
        /// Only drops for this reason (`no_backend`, `source_denied`, `ipv4_bad_ihl`, …).
        #[arg(long)]
        reason: Option<String>,
        /// Only packets from clients in this prefix (`198.18.0.0/24`, or an address).
        #[arg(long, value_name = "PREFIX")]
        client: Option<xlb::config::SourcePrefix>,
        /// The newest this many (1..=1000).
        #[arg(long, default_value_t = xlb::drops::DEFAULT_LIMIT)]
        limit: u32,
        /// Keep showing drops as they are sampled (one line, or with --json one object,
        /// each), until interrupted, --count or --duration.
        #[arg(long, short)]
        follow: bool,
        /// With --follow: stop after this many.
        #[arg(long, requires = "follow")]
        count: Option<u64>,
        /// With --follow: stop after this many seconds.
        #[arg(long, value_name = "SECS", requires = "follow")]
        duration: Option<u64>,
        /// Also write the frames' first bytes (128) to this pcap file, for Wireshark or
        /// `tcpdump -r`.
        #[arg(long, value_name = "FILE")]
        pcap: Option<PathBuf>,
        /// Count every sample the daemon holds by reason and destination (the drop
        /// counters are not per VIP), with the clients sampled most.
        #[arg(long, conflicts_with = "follow")]
        summary: bool,
    },
}

/// Options of commands that talk to a running balancer.
#[derive(clap::Args)]
struct CtlArgs {
    /// Control socket path.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    json: bool,
}

/// `--rate`, shared by `xlb status` and `xlb stats`.
#[derive(Debug, clap::Args)]
struct RateArg {
    /// Show what moved per second instead of totals: the counters are read twice, SECS
    /// apart (default 1; 0.1..=3600).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1",
          value_parser = xlb::cli::rate::parse_interval)]
    rate: Option<std::time::Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    xlb::logging::init(cli.log_level, cli.log_format);
    // Refusals from the daemon print as `error (<code>): <message>`, others as `xlb: …`.
    ctl::exit_code(dispatch(cli.cmd))
}

fn dispatch(cmd: Cmd) -> Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match cmd {
        Cmd::Run {
            iface,
            xdp_mode,
            config,
            socket,
            no_socket,
            metrics,
            max_vips,
            max_conns,
            no_flow_cache,
            state_dir,
            shutdown_grace,
        } => {
            let opts = RunOptions {
                iface,
                mode: xdp_mode.into(),
                config,
                socket: (!no_socket).then_some(socket),
                metrics,
                load: LoadOptions {
                    max_vips,
                    max_conns,
                    flow_cache: !no_flow_cache,
                },
                state_dir,
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace.into()),
            };
            runtime()?.block_on(daemon::run(opts))
        }
        Cmd::Decap {
            iface,
            xdp_mode,
            addresses,
            metrics,
            gue_port,
            clamp_mss,
        } => runtime()?.block_on(xlb::decap::run(
            &iface,
            xdp_mode.into(),
            &addresses,
            metrics,
            gue_port,
            clamp_mss,
        )),
        Cmd::Agent { listen, state_file } => {
            runtime()?.block_on(xlb::agent::serve(listen, state_file))
        }
        Cmd::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let cfg =
                Config::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}: ok ({} VIPs)", file.display(), cfg.vips.len());
            Ok(())
        }
        Cmd::Vip { ctl: a, cmd } => ctl::run_vip(
            *cmd,
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
        ),
        Cmd::Backend { ctl: a, cmd } => ctl::run_backend(
            cmd,
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
        ),
        Cmd::Status { ctl: a, rate, vip } => ctl::run_status(
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
            rate.rate,
            vip,
        ),
        Cmd::Stats { ctl: a, rate, vip } => ctl::run_stats(
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
            rate.rate,
            vip,
        ),
        Cmd::Flow {
            ctl: a,
            vip,
            client,
        } => ctl::run_flow(
            vip,
            client,
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
        ),
        Cmd::DumpConfig { ctl: a } => ctl::run_dump_config(&a.socket),
        Cmd::Reload {
            ctl: a,
            dry_run,
            cut,
        } => ctl::run_reload(
            dry_run,
            cut,
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
        ),
        Cmd::Drops {
            ctl: a,
            vip,
            reason,
            client,
            limit,
            follow,
            count,
            duration,
            pcap,
            summary,
        } => xlb::cli::drops::run_drops(
            &xlb::cli::drops::DropsOpts {
                reason,
                vip,
                client,
                limit: Some(limit),
                follow,
                count,
                duration: duration.map(std::time::Duration::from_secs),
                pcap,
                summary,
            },
            &CtlOpts {
                socket: a.socket,
                json: a.json,
            },
        ),
        Cmd::Flows {
            ctl: a,
            vip,
            backend,
            client,
            limit,
            idle_over,
            forget,
        } => {
            let opts = CtlOpts {
                socket: a.socket,
                json: a.json,
            };
            let limit = (!forget).then_some(limit);
            let query = FlowsQuery {
                vip,
                backend,
                client,
                limit,
                idle_over_s: idle_over,
            };
            if forget {
                ctl::run_flows_forget(query, &opts)
            } else {
                ctl::run_flows(query, &opts)
            }
        }
    }
}
