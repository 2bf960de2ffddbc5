//! Next hops towards backends, resolved by the daemon.
//!
//! The balancer consumes packets in XDP, so nothing in the kernel ever ARPs / NDPs for a
//! backend on its behalf. The daemon asks the kernel's routing table for the next hop, reads
//! its MAC from the neighbour table, and when there is none yet nudges the kernel into
//! resolving it (one datagram to the discard port). The result is cached per backend in the
//! `BACKENDS` map, which keeps `bpf_fib_lookup` off the packet path.
//!
//! The kernel is asked through iproute2's JSON output (`ip -j route get`, `ip -j neigh`):
//! iproute2 is on every host that runs xlb, and its JSON is a stable interface, which keeps
//! a netlink implementation out of this crate.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
};

use serde::Deserialize;

use crate::{core::NextHop, netdev};

#[derive(Deserialize)]
struct Route {
    dev: Option<String>,
    gateway: Option<IpAddr>,
    /// The route's metrics; `mtu` among them when the route sets one (`ip route … mtu N`)
    /// or the kernel learned a smaller path MTU.
    #[serde(default)]
    metrics: Vec<RouteMetric>,
}

#[derive(Deserialize)]
struct RouteMetric {
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct Neigh {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

/// Why a next hop is not known (yet).
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// `ip` failed or said something unexpected.
    #[error("`ip {args}` failed: {message}")]
    Ip {
        /// Arguments given.
        args: String,
        /// What went wrong.
        message: String,
    },
    /// No route to the backend.
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    /// Route known, neighbour not resolved yet (resolution was requested).
    #[error("neighbour {via} not resolved yet")]
    Unresolved {
        /// The neighbour (the backend, or the route's gateway).
        via: IpAddr,
        /// The route's egress interface.
        ifindex: u32,
    },
}

fn ip_json(args: &[&str]) -> Result<serde_json::Value, NeighbourError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| NeighbourError::Ip {
            args: joined.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NeighbourError::Ip {
            args: joined,
            message,
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| NeighbourError::Ip {
        args: joined,
        message: e.to_string(),
    })
}

/// Resolves the next hop towards `backend`.
pub fn resolve(backend: IpAddr) -> Result<NextHop, NeighbourError> {
    let addr = backend.to_string();
    let routes: Vec<Route> =
        serde_json::from_value(ip_json(&["route", "get", &addr])?).map_err(|e| {
            NeighbourError::Ip {
                args: format!("route get {addr}"),
                message: e.to_string(),
            }
        })?;
    let route = routes
        .into_iter()
        .next()
        .ok_or(NeighbourError::NoRoute(backend))?;
    let dev = route.dev.ok_or(NeighbourError::NoRoute(backend))?;
    let via = route.gateway.unwrap_or(backend);
    let via_s = via.to_string();
    let neighs: Vec<Neigh> =
        serde_json::from_value(ip_json(&["neigh", "show", "to", &via_s, "dev", &dev])?).map_err(
            |e| NeighbourError::Ip {
                args: format!("neigh show {via_s}"),
                message: e.to_string(),
            },
        )?;
    let usable = neighs.into_iter().find(|n| {
        n.lladdr.is_some() && !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE")
    });
    let ifindex = netdev::ifindex(&dev).map_err(|e| NeighbourError::Ip {
        args: format!("ifindex {dev}"),
        message: e.to_string(),
    })?;
    let Some(dmac) = usable
        .and_then(|n| n.lladdr)
        .and_then(|m| netdev::parse_mac(&m))
    else {
        nudge(via);
        return Err(NeighbourError::Unresolved { via, ifindex });
    };
    let smac = netdev::mac(&dev).map_err(|e| NeighbourError::Ip {
        args: format!("mac {dev}"),
        message: e.to_string(),
    })?;
    let dev_mtu = netdev::mtu(&dev).map_err(|e| NeighbourError::Ip {
        args: format!("mtu {dev}"),
        message: e.to_string(),
    })?;
    Ok(NextHop {
        ifindex,
        smac,
        dmac,
        mtu: path_mtu(&route.metrics, dev_mtu),
    })
}

/// What the path to a backend carries: the route's MTU where it sets one (never more than
/// the interface's: the kernel caps it the same way), else the interface's.
fn path_mtu(metrics: &[RouteMetric], dev_mtu: u32) -> u32 {
    metrics
        .iter()
        .filter_map(|m| m.mtu)
        .filter(|&m| m != 0)
        .min()
        .map_or(dev_mtu, |m| m.min(dev_mtu))
}

/// Makes the kernel resolve `via`: one empty datagram to the discard port (9). Failures do
/// not matter; the next refresh tries again.
fn nudge(via: IpAddr) {
    let bind: SocketAddr = if via.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], SocketAddr::new(via, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_mtu_is_the_route_s_where_it_sets_one() {
        // `ip -j route get` as iproute2 prints it, with and without a route MTU.
        for (json, dev_mtu, want) in [
            (
                r#"[{"dst":"198.18.6.7","gateway":"198.18.5.2","dev":"d0","flags":[],"cache":[],"metrics":[{"mtu":1400}]}]"#,
                1500,
                1400,
            ),
            (
                r#"[{"dst":"198.18.5.7","dev":"d0","prefsrc":"198.18.5.1","flags":[],"uid":0,"cache":[]}]"#,
                1500,
                1500,
            ),
            (
                r#"[{"dst":"198.18.6.7","dev":"d0","metrics":[{"mtu":9000}]}]"#,
                1500,
                1500,
            ),
            (
                r#"[{"dst":"fd00:6::7","dev":"d0","metrics":[{"hoplimit":64},{"mtu":1300}]}]"#,
                1500,
                1300,
            ),
        ] {
            let routes: Vec<Route> = serde_json::from_str(json).expect("route JSON");
            assert_eq!(path_mtu(&routes[0].metrics, dev_mtu), want, "{json}");
        }
    }
}
