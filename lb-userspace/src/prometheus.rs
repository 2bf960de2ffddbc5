//! The Prometheus text exposition format, served over plain HTTP: what `xlb run
//! --metrics` and `xlb decap --metrics` have in common.
//!
//! Names follow Prometheus conventions: `xlb_` prefix, `_total` for counters, base units
//! (seconds, bytes), labels for VIP / backend / reason.

use std::{fmt::Write as _, sync::Arc};

use anyhow::Context;
use lb_common::counters::{Drop, Event, Pass};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};

/// A metric's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric's header, then its sample lines.
pub fn section(out: &mut String, name: &str, kind: &str, help: &str, lines: &str) {
    header(out, name, kind, help);
    out.push_str(lines);
}

/// A program's counters by reason slot (`STATS` summed over CPUs) as three counter
/// families, `{prefix}_dropped_packets_total{reason}`, `{prefix}_passed_packets_total{reason}`
/// and `{prefix}_events_total{event}`, every reason listed (zero or not), so that a
/// reason appears in the series before its first packet. `who` names the program in the
/// help texts ("the balancer").
pub fn reason_counters(out: &mut String, prefix: &str, who: &str, reasons: &[u64]) {
    let at = |slot: u32| reasons.get(slot as usize).copied().unwrap_or(0);
    let family = |out: &mut String, name: &str, label: &str, help: &str, rows: Vec<(&str, u64)>| {
        header(out, name, "counter", help);
        for (value, n) in rows {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    };
    family(
        out,
        &format!("{prefix}_dropped_packets_total"),
        "reason",
        &format!("Packets {who} dropped, by reason."),
        Drop::ALL.iter().map(|r| (r.name(), at(r.slot()))).collect(),
    );
    family(
        out,
        &format!("{prefix}_passed_packets_total"),
        "reason",
        &format!("Packets {who} handed to the kernel untouched, by reason."),
        Pass::ALL.iter().map(|r| (r.name(), at(r.slot()))).collect(),
    );
    family(
        out,
        &format!("{prefix}_events_total"),
        "event",
        &format!("Things {who} did to packets (forwarding, flows, ICMP, tunnels), by event."),
        Event::ALL
            .iter()
            .map(|r| (r.name(), at(r.slot())))
            .collect(),
    );
}

/// Serves `GET /metrics` (and `GET /`) on `listener` with what `render` makes at each
/// request, until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => r.context("accepting a metrics connection")?,
            _ = shutdown.changed() => return Ok(()),
        };
        let render = render.clone();
        tokio::spawn(async move {
            // Requests are tiny; read one buffer's worth, answer, close.
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                ("200 OK", render())
            } else {
                ("404 Not Found", String::from("try GET /metrics\n"))
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
