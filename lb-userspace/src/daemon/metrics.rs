//! The balancer's Prometheus metrics (`xlb run --metrics`; the format and the server are
//! `crate::prometheus`'s), and its readiness on the same port (`GET /ready`).

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use tokio::{net::TcpListener, sync::watch};

use super::{
    config_file::{unix_s, ReloadHistory, ReloadResult},
    state::Daemon,
};
use crate::{
    config::VipId,
    core::{Core, VipState},
    dataplane::{Counters, Dataplane},
    prometheus::{self, header, reason_counters, section},
};

/// Renders every metric.
pub fn render(d: &Daemon) -> String {
    let mut out = String::new();
    let dp = d.core().dataplane();
    let reasons = dp.reasons();

    reason_counters(&mut out, "xlb", "the balancer", &reasons);

    let mut vip_lines = (String::new(), String::new(), String::new());
    let mut limited_lines = String::new();
    let mut be = BackendLines::default();
    for v in d.core().vips() {
        let id = v.config.id();
        let t = v.traffic(dp);
        let _ = writeln!(
            vip_lines.0,
            "xlb_vip_packets_total{{vip=\"{id}\"}} {}",
            t.packets
        );
        let _ = writeln!(
            vip_lines.1,
            "xlb_vip_bytes_total{{vip=\"{id}\"}} {}",
            t.bytes
        );
        let _ = writeln!(
            vip_lines.2,
            "xlb_vip_new_flows_total{{vip=\"{id}\"}} {}",
            t.new_flows
        );
        let l = v.limited(dp);
        for (limit, n) in [("vip", l.vip), ("client", l.client)] {
            let _ = writeln!(
                limited_lines,
                "xlb_vip_new_flows_limited_total{{vip=\"{id}\",limit=\"{limit}\"}} {n}"
            );
        }
        for (addr, b) in &v.backends {
            let l = format!("vip=\"{id}\",backend=\"{addr}\"");
            let t = dp.backend(b.index);
            let _ = writeln!(be.packets, "xlb_backend_packets_total{{{l}}} {}", t.packets);
            let _ = writeln!(be.bytes, "xlb_backend_bytes_total{{{l}}} {}", t.bytes);
            let _ = writeln!(
                be.flows,
                "xlb_backend_new_flows_total{{{l}}} {}",
                t.new_flows
            );
            let _ = writeln!(be.up, "xlb_backend_up{{{l}}} {}", u8::from(b.healthy));
            let _ = writeln!(
                be.drained,
                "xlb_backend_drained{{{l}}} {}",
                u8::from(b.drained)
            );
            let _ = writeln!(
                be.removing,
                "xlb_backend_removing{{{l}}} {}",
                u8::from(d.removing(&id, *addr))
            );
            let _ = writeln!(be.weight, "xlb_backend_weight{{{l}}} {}", b.weight);
            let _ = writeln!(
                be.backup,
                "xlb_backend_backup{{{l}}} {}",
                u8::from(b.backup)
            );
            let _ = writeln!(
                be.serving,
                "xlb_backend_serving{{{l}}} {}",
                u8::from(b.in_table())
            );
            // Only for a resolved next hop: a backend missing here is reached through the
            // kernel's FIB on every packet (or not at all), which an operator alerts on.
            if let Some(hop) = b.nexthop {
                let _ = writeln!(be.path_mtu, "xlb_backend_path_mtu_bytes{{{l}}} {}", hop.mtu);
            }
            if crate::sched::counts_active(v.config.scheduler) {
                let _ = writeln!(
                    be.active,
                    "xlb_backend_active_flows{{{l}}} {}",
                    dp.active_flows(b.index)
                );
            }
            if let Some(max) = b.max_conns {
                let _ = writeln!(be.max_conns, "xlb_backend_max_conns{{{l}}} {max}");
            }
            if let Some((_, h)) = d.health(&id, *addr) {
                if let Some(lat) = h.latency_ewma {
                    let _ = writeln!(
                        be.latency,
                        "xlb_health_check_latency_seconds{{{l}}} {}",
                        lat.as_secs_f64()
                    );
                }
                let _ = writeln!(
                    be.checks,
                    "xlb_health_checks_total{{{l},result=\"ok\"}} {}",
                    h.checks_ok
                );
                let _ = writeln!(
                    be.checks,
                    "xlb_health_checks_total{{{l},result=\"failed\"}} {}",
                    h.checks_failed
                );
            }
        }
    }
    section(
        &mut out,
        "xlb_vip_packets_total",
        "counter",
        "Packets forwarded per VIP (its backends' added up, removed ones included).",
        &vip_lines.0,
    );
    section(
        &mut out,
        "xlb_vip_bytes_total",
        "counter",
        "Client IP bytes forwarded per VIP.",
        &vip_lines.1,
    );
    section(
        &mut out,
        "xlb_vip_new_flows_total",
        "counter",
        "New flows per VIP.",
        &vip_lines.2,
    );
    section(
        &mut out,
        "xlb_vip_new_flows_limited_total",
        "counter",
        "New flows a VIP's limits turned away: its new_flow_rate_limit (limit=\"vip\") or client_flow_rate_limit (limit=\"client\").",
        &limited_lines,
    );
    section(
        &mut out,
        "xlb_backend_packets_total",
        "counter",
        "Packets forwarded per backend.",
        &be.packets,
    );
    section(
        &mut out,
        "xlb_backend_bytes_total",
        "counter",
        "Client IP bytes forwarded per backend.",
        &be.bytes,
    );
    section(
        &mut out,
        "xlb_backend_new_flows_total",
        "counter",
        "New flows per backend.",
        &be.flows,
    );
    section(
        &mut out,
        "xlb_backend_up",
        "gauge",
        "1 when the backend passes its health check.",
        &be.up,
    );
    section(
        &mut out,
        "xlb_backend_drained",
        "gauge",
        "1 when the backend is drained.",
        &be.drained,
    );
    section(
        &mut out,
        "xlb_backend_removing",
        "gauge",
        "1 while a graceful removal drains the backend (it goes once quiet or at its deadline).",
        &be.removing,
    );
    section(
        &mut out,
        "xlb_backend_backup",
        "gauge",
        "1 for a backup: new flows only while no other backend of its VIP takes them.",
        &be.backup,
    );
    section(
        &mut out,
        "xlb_backend_serving",
        "gauge",
        "1 when the backend takes new flows (up, not drained, weight above 0, not a backup held back).",
        &be.serving,
    );
    section(
        &mut out,
        "xlb_backend_weight",
        "gauge",
        "Configured weight.",
        &be.weight,
    );
    section(
        &mut out,
        "xlb_backend_path_mtu_bytes",
        "gauge",
        "Largest packet the path to the backend carries (its route's MTU, else its interface's), for backends whose next hop is resolved; below the balancer's mtu it sizes their too-big answers.",
        &be.path_mtu,
    );
    section(
        &mut out,
        "xlb_backend_active_flows",
        "gauge",
        "Active flows as least-connection scheduling sees them (lc, wlc, lrt VIPs): counted by the data plane, recounted from the connection tables every 30 s.",
        &be.active,
    );
    section(
        &mut out,
        "xlb_backend_max_conns",
        "gauge",
        "Most active flows the backend takes (max_conns, lc and wlc VIPs), for limited backends: at xlb_backend_active_flows >= this it takes no new flow.",
        &be.max_conns,
    );
    section(
        &mut out,
        "xlb_health_check_latency_seconds",
        "gauge",
        "Health-check latency (EWMA, alpha 0.3).",
        &be.latency,
    );
    section(
        &mut out,
        "xlb_health_checks_total",
        "counter",
        "Health checks by result.",
        &be.checks,
    );
    let tr = d.transitions();
    header(
        &mut out,
        "xlb_health_transitions_total",
        "counter",
        "Backend health transitions.",
    );
    let _ = writeln!(out, "xlb_health_transitions_total{{to=\"up\"}} {}", tr.up);
    let _ = writeln!(
        out,
        "xlb_health_transitions_total{{to=\"down\"}} {}",
        tr.down
    );
    reload_metrics(&mut out, d.reloads());
    out
}

#[derive(Default)]
struct BackendLines {
    packets: String,
    bytes: String,
    flows: String,
    up: String,
    drained: String,
    removing: String,
    weight: String,
    backup: String,
    serving: String,
    path_mtu: String,
    active: String,
    max_conns: String,
    latency: String,
    checks: String,
}

/// Serves the daemon's metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    daemon: Arc<Mutex<Daemon>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = daemon.clone();
    let render = move || match state.lock() {
        Ok(d) => render(&d),
        Err(_) => String::from("# daemon state unavailable\n"),
    };
    let ready: prometheus::Extra = Arc::new(move |target: &str| match daemon.lock() {
        Ok(d) if d.stopping() => readiness(d.core(), target).map(|_| {
            (
                false,
                String::from("stopping: --shutdown-grace runs out, then the balancer stops\n"),
            )
        }),
        Ok(d) => readiness(d.core(), target),
        Err(_) => Some((false, String::from("daemon state unavailable\n"))),
    });
    prometheus::serve(listener, Arc::new(render), Some(ready), shutdown).await
}

/// `GET /ready`: whether every VIP has a backend that takes new flows (200, else 503 with
/// those that have none); `GET /ready?vip=ADDR:PORT/PROTO`: the same for one VIP (404
/// for one that does not exist). What a route announcer (ExaBGP's healthcheck, BIRD with
/// a script) asks before advertising a VIP: a balancer with nowhere to send a VIP's new
/// flows should not draw them. `None` for any other path.
pub fn readiness<D: Dataplane>(core: &Core<D>, target: &str) -> Option<(bool, String)> {
    let query = match target.split_once('?') {
        None if target == "/ready" => None,
        Some(("/ready", q)) => Some(percent_decoded(q.strip_prefix("vip=")?)),
        _ => return None,
    };
    let serving = |v: &VipState| v.backends.values().any(|b| b.in_table());
    if let Some(q) = query {
        let q = q.as_str();
        let id: VipId = match q.parse() {
            Ok(id) => id,
            Err(e) => return Some((false, format!("vip={q}: {e}\n"))),
        };
        return Some(match core.vip(&id) {
            Ok(v) if serving(v) => (true, format!("{id}: ready\n")),
            Ok(_) => (false, format!("{id}: no backend takes new flows\n")),
            Err(e) => (false, format!("{e}\n")),
        });
    }
    let idle: Vec<String> = core
        .vips()
        .filter(|v| !serving(v))
        .map(|v| format!("{}: no backend takes new flows\n", v.config.id()))
        .collect();
    Some(if idle.is_empty() {
        (true, format!("ready: {} VIPs\n", core.vips().count()))
    } else {
        (false, idle.concat())
    })
}

/// `s` with its `%XX` escapes decoded (a client may escape an IPv6 VIP's brackets, or its
/// `/` and `:`); an escape that is not two hex digits stays as it is.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Config reloads: a refused SIGHUP is otherwise only a log line (the names follow
/// Prometheus' own `prometheus_config_last_reload_*`).
fn reload_metrics(out: &mut String, h: &ReloadHistory) {
    header(
        out,
        "xlb_config_reloads_total",
        "counter",
        "Config file reloads (SIGHUP, xlb reload), by result.",
    );
    for r in ReloadResult::ALL {
        let _ = writeln!(
            out,
            "xlb_config_reloads_total{{result=\"{}\"}} {}",
            r.name(),
            h.count(r)
        );
    }
    header(
        out,
        "xlb_config_last_reload_successful",
        "gauge",
        "1 if the last reload applied (or none was asked for), 0 if it was refused or failed.",
    );
    let _ = writeln!(
        out,
        "xlb_config_last_reload_successful {}",
        u8::from(h.last_ok())
    );
    header(
        out,
        "xlb_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the running config was last loaded whole (start-up or the last applied reload).",
    );
    let _ = writeln!(
        out,
        "xlb_config_last_reload_success_timestamp_seconds {:.3}",
        unix_s(h.loaded_at())
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::daemon::config_file::FileReloadError;

    /// `/ready` says whether every VIP can take new flows, `/ready?vip=` one VIP's;
    /// other paths are not its.
    #[test]
    fn readiness_follows_the_backends_that_take_new_flows() {
        use crate::{core::recorder_core, dataplane::Recorder};
        let mut core = recorder_core(
            r#"{"vips": [
              {"address": "198.18.1.1", "port": 80, "protocol": "tcp",
               "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]},
              {"address": "198.18.1.1", "port": 53, "protocol": "udp",
               "backends": [{"address": "198.18.0.13"}]}]}"#,
        );
        let ready = |core: &Core<Recorder>, t: &str| readiness(core, t);
        assert_eq!(
            ready(&core, "/ready"),
            Some((true, "ready: 2 VIPs\n".into()))
        );
        let dns: VipId = "198.18.1.1:53/udp".parse().unwrap();
        let web: VipId = "198.18.1.1:80/tcp".parse().unwrap();
        core.set_health(&dns, "198.18.0.13".parse().unwrap(), false)
            .unwrap();
        // One of two web backends drained: still ready.
        core.set_drained(&web, "198.18.0.11".parse().unwrap(), true)
            .unwrap();
        assert_eq!(
            ready(&core, "/ready"),
            Some((
                false,
                "198.18.1.1:53/udp: no backend takes new flows\n".into()
            ))
        );
        assert_eq!(
            ready(&core, "/ready?vip=198.18.1.1:80/tcp"),
            Some((true, "198.18.1.1:80/tcp: ready\n".into()))
        );
        assert_eq!(
            ready(&core, "/ready?vip=198.18.1.1:53/udp").map(|r| r.0),
            Some(false)
        );
        assert_eq!(
            ready(&core, "/ready?vip=198.18.1.9:80/tcp").map(|r| r.0),
            Some(false)
        );
        // Escaped as a browser or a careful script would.
        assert_eq!(
            ready(&core, "/ready?vip=198.18.1.1%3A80%2Ftcp"),
            Some((true, "198.18.1.1:80/tcp: ready\n".into()))
        );
        assert_eq!(
            percent_decoded("%5Bfd00%3A1%3A%3A1%5D:53/udp"),
            "[fd00:1::1]:53/udp"
        );
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        let bad = ready(&core, "/ready?vip=nonsense").unwrap();
        assert!(!bad.0 && bad.1.starts_with("vip=nonsense: "), "{bad:?}");
        for other in ["/readyz", "/ready?x=1", "/metricsz"] {
            assert_eq!(ready(&core, other), None, "{other}");
        }
        // Through the port's router: 503 when not ready, the metrics and liveness as ever.
        let extra: prometheus::Extra = {
            let core = std::sync::Mutex::new(core);
            Arc::new(move |t: &str| readiness(&core.lock().unwrap(), t))
        };
        let render = || String::from("xlb_metric 1\n");
        let answer = |line: &str| prometheus::answer(line, &render, Some(&extra));
        assert_eq!(answer("GET /ready HTTP/1.1").0, "503 Service Unavailable");
        assert_eq!(
            answer("GET /ready?vip=198.18.1.1:80/tcp HTTP/1.1").0,
            "200 OK"
        );
        assert_eq!(
            answer("GET /metrics HTTP/1.1"),
            ("200 OK", "xlb_metric 1\n".into())
        );
        assert_eq!(answer("GET /healthz HTTP/1.1"), ("200 OK", "ok\n".into()));
        assert_eq!(answer("GET /nothing HTTP/1.1").0, "404 Not Found");
        assert_eq!(answer("POST /ready HTTP/1.1").0, "405 Method Not Allowed");
        // The decap's port has no readiness: /ready is not found there.
        assert_eq!(
            prometheus::answer("GET /ready HTTP/1.1", &render, None).0,
            "404 Not Found"
        );
    }

    #[test]
    fn reload_metrics_say_whether_the_last_reload_applied() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let mut h = ReloadHistory::new(t0);
        let mut out = String::new();
        reload_metrics(&mut out, &h);
        assert!(
            out.contains("xlb_config_last_reload_successful 1\n"),
            "{out}"
        );
        assert!(out.contains("xlb_config_last_reload_success_timestamp_seconds 1700000000.250\n"));
        h.note(
            t0 + Duration::from_secs(5),
            "SIGHUP",
            &Err(FileReloadError::NoFile),
        );
        let mut out = String::new();
        reload_metrics(&mut out, &h);
        for line in [
            "# TYPE xlb_config_reloads_total counter",
            "xlb_config_reloads_total{result=\"applied\"} 0",
            "xlb_config_reloads_total{result=\"refused\"} 1",
            "xlb_config_reloads_total{result=\"failed\"} 0",
            "xlb_config_last_reload_successful 0",
            "xlb_config_last_reload_success_timestamp_seconds 1700000000.250",
        ] {
            assert!(out.lines().any(|l| l == line), "{line:?} missing:\n{out}");
        }
    }
}
