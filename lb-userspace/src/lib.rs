//! `xlb`: the user-space side of the xlb load balancer.
//!
//! A pure core (config validation, the VIP/backend model, Maglev tables, health state) that
//! knows nothing of BPF, and thin edges that talk to the kernel and the operator.
//!
//! Layout:
//! - [`agent`]: agent checks (HAProxy format): parsing, polling, and `xlb agent`.
//! - [`bpf_sys`]: the few bpf(2) commands aya lacks, as one checked syscall.
//! - [`config`]: the JSON configuration and its validation.
//! - [`conntable`]: the connection tables read whole, in batches; the active-flow recount.
//! - [`core`]: VIPs, backends and their state → data-plane writes (pure, unit-tested).
//! - [`dataplane`]: the `Dataplane` seam: BPF maps, or a recorder in tests.
//! - [`daemon`]: `xlb run`: state, control handler, next hops, metrics.
//! - [`decap`]: `xlb decap` for backends.
//! - [`drops`]: dropped packets the balancer sampled (the `drops` op, `xlb drops`).
//! - [`flows`]: the flows the connection tables hold, filtered and named (the `flows` op).
//! - [`graceful`]: graceful removal: a draining backend's packet counter, followed until quiet.
//! - [`logging`]: the log's formats (text, JSON lines).
//! - [`loader`]: the embedded XDP objects; load, verify, attach.
//! - [`netdev`]: interface index, MAC, MTU, addresses.
//! - [`placement`]: where a client's flow to a VIP goes (the `flow` op).
//! - [`prometheus`]: the metrics text format and its HTTP server (`--metrics`).
//! - [`sched`]: schedulers as table builders (Maglev hash tables, round-robin sequences).
//! - [`slow_start`]: a backend coming into service ramps up to its weight.
//! - [`state_dir`]: `--state-dir`: the attachment, connection tables and backend slots
//!   pinned on bpffs across daemon restarts.
//! - [`testrun`]: `BPF_PROG_TEST_RUN` runner (fixture tests, bench).
//! - [`utc`]: Unix time as a UTC date and time of day, for what xlb prints.
//! - [`health`]: health-check probes, state machine and runner.
//! - [`control`]: the JSON control socket: protocol, server, client.
//! - [`cli`]: `xlb` subcommands that speak the control socket.
pub mod agent;
pub mod bpf_sys;
pub mod cli;
pub mod config;
pub mod conntable;
pub mod control;
pub mod core;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod drops;
pub mod flows;
pub mod graceful;
pub mod health;
pub mod loader;
pub mod logging;
pub mod netdev;
pub mod placement;
pub mod prometheus;
pub mod reload;
pub mod sched;
pub mod slow_start;
pub mod state_dir;
pub mod testing;
pub mod testrun;
pub mod utc;
