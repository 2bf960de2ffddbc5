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

/// Answers for paths other than the metrics' (`xlb run`'s `/ready`): for a request target,
/// `None` (not one of its paths) or whether the answer is good (200, else 503) and its body.
pub type Extra = Arc<dyn Fn(&str) -> Option<(bool, String)> + Send + Sync>;

/// The answer to a request whose first line is `request_line`: status line and body.
/// `GET /metrics` (and `GET /`) get what `render` makes; `GET /healthz` an `ok` (the
/// process answers: what a liveness probe asks); other paths go to `extra`.
pub fn answer(
    request_line: &str,
    render: &(dyn Fn() -> String + Send + Sync),
    extra: Option<&Extra>,
) -> (&'static str, String) {
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next(), parts.next().unwrap_or(""));
    if method != Some("GET") {
        return ("405 Method Not Allowed", String::from("GET only\n"));
    }
    match target {
        "/metrics" | "/" => ("200 OK", render()),
        "/healthz" => ("200 OK", String::from("ok\n")),
        _ => match extra.and_then(|e| e(target)) {
            Some((true, body)) => ("200 OK", body),
            Some((false, body)) => ("503 Service Unavailable", body),
            None => (
                "404 Not Found",
                String::from("try GET /metrics, /healthz or /ready\n"),
            ),
        },
    }
}

/// Serves [`answer`]s on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    extra: Option<Extra>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => r.context("accepting a metrics connection")?,
            _ = shutdown.changed() => return Ok(()),
        };
        let (render, extra) = (render.clone(), extra.clone());
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
            let line = req.lines().next().unwrap_or_default();
            let (status, body) = answer(line, render.as_ref(), extra.as_ref());
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
