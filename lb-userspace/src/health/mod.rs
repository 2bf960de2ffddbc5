//! Backend health checking, in the shape of Cloudflare Pingora's load-balancing crate: one
//! [`Probe`] trait with a small type per check kind, and a health state machine kept apart
//! from probing so it is tested with a fake clock and no network.
//!
//! # Layout
//! - `config`  — [`HealthCheckConfig`], the per-VIP JSON settings, and their validation.
//! - `probe`   — the [`Probe`] trait, [`ProbeError`], [`build_probe`], the `none` probe.
//! - `tcp`     — [`TcpProbe`]: the handshake completes.
//! - `http`    — [`HttpProbe`]: a hand-written HTTP/1.1 `GET`; status and body substring;
//!   over TLS for `https`.
//! - `tls`     — the `https` checks' TLS client: any certificate, SNI from `sni` or `host`.
//! - `udp`     — [`UdpProbe`]: a datagram draws a reply; port unreachable fails fast.
//! - `icmp`    — [`IcmpProbe`]: ICMP / ICMPv6 echo on a ping or raw socket.
//! - `tunnel`  — [`TcpTunnelProbe`]: a SYN to the VIP through the backend's tunnel.
//! - `raw`     — what the raw-socket probes share.
//! - `state`   — [`HealthState`]: rise/fall, counters, latency average; pure.
//! - `runner`  — [`HealthChecker`] spawns one task per target; [`HealthHandle`] owns it.
//!
//! # Behaviour
//! - **Start state.** A backend starts *healthy*, whatever the check kind: a freshly loaded
//!   config serves traffic at once instead of waiting `rise` intervals, and a dead backend
//!   leaves the table after `fall` failed checks (`fall × interval_ms` at most, plus the first
//!   check's delay). With `kind: none` it simply stays healthy.
//! - **Rise/fall.** `fall` consecutive failures take a healthy backend down; `rise`
//!   consecutive successes bring a down one back. One result of the other kind resets the
//!   streak.
//! - **Pace.** Checks run every `interval_ms` while up and every `down_interval_ms` while
//!   down. Each target's first check is delayed by a fraction of the interval derived from its
//!   id and address (no randomness), which spreads the checks of targets started together.
//! - **Latency.** Each success records its round-trip time; `latency_ewma` is an exponentially
//!   weighted average with alpha 0.3 (`avg = 0.3 × sample + 0.7 × avg`), seeded by the first
//!   sample. Failures do not touch it.
//! - **Timeouts.** Every probe enforces `timeout_ms` itself; validation keeps it below both
//!   intervals so checks of one target never overlap.
//! - **Stopping.** Dropping a [`HealthHandle`] stops its task (see `runner`).

mod config;
mod http;
mod icmp;
mod probe;
mod raw;
mod runner;
mod state;
mod tcp;
#[cfg(test)]
mod test_util;
mod tls;
mod tunnel;
mod udp;

pub use config::{CheckKind, HealthCheckConfig, HealthConfigError, HttpMethod};
pub use http::HttpProbe;
pub use icmp::IcmpProbe;
pub use probe::{build_probe, NoneProbe, Probe, ProbeError, ProbeFuture};
pub use runner::{HealthChecker, HealthEvent, HealthHandle};
pub use state::{HealthState, Transition};
pub use tcp::TcpProbe;
pub use tls::AnyCertificate;
pub use tunnel::TcpTunnelProbe;
pub use udp::UdpProbe;
