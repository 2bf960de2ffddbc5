//! `xlb status --rate` and `xlb stats --rate`: what moved per second between two samples
//! of the daemon's counters, as `ipvsadm --rate` shows for IPVS.
//!
//! The daemon keeps totals only (Prometheus takes rates of its own); the client asks twice
//! and divides by the time between the two answers. Entries are matched by name (VIP id,
//! backend address, counter name), so a VIP or backend added in between, or a counter that
//! went backwards (a backend removed and added again, a daemon restarted without pinned
//! state), has no rate (`null`, shown as `-`) rather than a wrong one.

use std::{fmt::Write as _, time::Duration};

use serde_json::{json, Map, Value};

use super::ctl::{field, list, state_cell, vip_blocks, Table};

/// The shortest and longest interval `--rate` accepts.
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// `--rate`'s value: seconds, fractions allowed, within [`INTERVAL_MIN`]..=[`INTERVAL_MAX`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if d < INTERVAL_MIN || d > INTERVAL_MAX {
        return Err(format!(
            "{s} s is outside {}..={} s",
            INTERVAL_MIN.as_secs_f64(),
            INTERVAL_MAX.as_secs_f64()
        ));
    }
    Ok(d)
}

/// Per second, from two totals `secs` apart: `null` if either is missing or the total
/// went backwards.
fn per_second(before: Option<&Value>, after: Option<&Value>, secs: f64) -> Value {
    match (
        before.and_then(Value::as_u64),
        after.and_then(Value::as_u64),
    ) {
        (Some(b), Some(a)) if a >= b && secs > 0.0 => json!((a - b) as f64 / secs),
        _ => Value::Null,
    }
}

/// Packets, bits and new flows per second of one VIP or backend (`bytes` are IP bytes as
/// the client sent them; rates of links are given in bits).
fn traffic_rates(before: Option<&Value>, after: &Value, secs: f64) -> Map<String, Value> {
    let get = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).cloned();
    let rate = |k: &str| per_second(get(before, k).as_ref(), get(Some(after), k).as_ref(), secs);
    let bits = match rate("bytes") {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |b| json!(b * 8.0)),
        other => other,
    };
    let mut m = Map::new();
    m.insert("packets_per_s".into(), rate("packets"));
    m.insert("bits_per_s".into(), bits);
    m.insert("new_flows_per_s".into(), rate("new_flows"));
    m
}

/// The element of `items` whose `key` equals `value`'s.
fn find<'a>(items: &'a [Value], key: &str, value: &Value) -> Option<&'a Value> {
    let want = value.get(key)?;
    items.iter().find(|i| i.get(key) == Some(want))
}

/// `status --rate`: each VIP of `after` with its traffic per second, and each backend's,
/// beside the backend's state, weight and active flows as `after` has them.
pub fn status_rates(before: &Value, after: &Value, interval: Duration) -> Value {
    let secs = interval.as_secs_f64();
    let vips: Vec<Value> = list(after, "vips")
        .iter()
        .map(|vip| {
            let old = find(list(before, "vips"), "vip", vip);
            let mut v = Map::new();
            for k in ["vip", "name", "scheduler"] {
                v.insert(k.into(), vip.get(k).cloned().unwrap_or(Value::Null));
            }
            v.extend(traffic_rates(old, vip, secs));
            let backends: Vec<Value> = list(vip, "backends")
                .iter()
                .map(|b| {
                    let old_b = old.and_then(|o| find(list(o, "backends"), "address", b));
                    let mut r = Map::new();
                    for k in ["address", "backup", "weight", "state", "active_flows"] {
                        r.insert(k.into(), b.get(k).cloned().unwrap_or(Value::Null));
                    }
                    r.extend(traffic_rates(old_b, b, secs));
                    Value::Object(r)
                })
                .collect();
            v.insert("backends".into(), Value::Array(backends));
            Value::Object(v)
        })
        .collect();
    json!({"interval_s": secs, "vips": vips})
}

/// `stats --rate`: each counter of `after` per second, and each VIP's traffic.
pub fn stats_rates(before: &Value, after: &Value, interval: Duration) -> Value {
    let secs = interval.as_secs_f64();
    let reasons: Map<String, Value> = after
        .get("reasons")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let old = before.get("reasons").and_then(|r| r.get(k));
            (k.clone(), per_second(old, Some(v), secs))
        })
        .collect();
    let vips: Vec<Value> = list(after, "vips")
        .iter()
        .map(|vip| {
            let mut v = Map::new();
            v.insert("vip".into(), vip.get("vip").cloned().unwrap_or(Value::Null));
            v.extend(traffic_rates(
                find(list(before, "vips"), "vip", vip),
                vip,
                secs,
            ));
            Value::Object(v)
        })
        .collect();
    json!({"interval_s": secs, "reasons": reasons, "vips": vips})
}

/// A rate for people: `-` for none, whole numbers from 100 up, one decimal below.
fn number(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        None => "-".to_owned(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

/// Bits per second with an SI prefix, as link rates are written.
fn bits(v: Option<&Value>) -> String {
    let Some(x) = v.and_then(Value::as_f64) else {
        return "-".to_owned();
    };
    let mut x = x;
    let mut unit = "bit/s";
    for next in ["kbit/s", "Mbit/s", "Gbit/s"] {
        if x < 1000.0 {
            break;
        }
        x /= 1000.0;
        unit = next;
    }
    if x >= 100.0 || unit == "bit/s" {
        format!("{x:.0} {unit}")
    } else {
        format!("{x:.1} {unit}")
    }
}

fn interval_text(r: &Value) -> String {
    r.get("interval_s")
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"))
}

/// A VIP's or backend's packets, bits and new flows per second, as table cells.
fn traffic_cells(v: &Value) -> [String; 3] {
    [
        number(v.get("packets_per_s")),
        bits(v.get("bits_per_s")),
        number(v.get("new_flows_per_s")),
    ]
}

/// [`status_rates`] for people.
pub fn render_status_rates(r: &Value) -> String {
    let over = format!("over {}", interval_text(r));
    vip_blocks(
        list(r, "vips"),
        |_| over.clone(),
        |vip, out| {
            let [packets, bits, flows] = traffic_cells(vip);
            let _ = writeln!(
                out,
                "  traffic: {packets} packets/s, {bits}, {flows} new flows/s"
            );
            let backends = list(vip, "backends");
            if backends.is_empty() {
                out.push_str("  no backends\n");
                return;
            }
            let mut t = Table::new(&[
                ("BACKEND", false),
                ("WEIGHT", true),
                ("STATE", false),
                ("FLOWS", true),
                ("PACKETS/S", true),
                ("BITS/S", true),
                ("NEW FLOWS/S", true),
            ]);
            for b in backends {
                let mut row = vec![
                    field(b, "address"),
                    field(b, "weight"),
                    state_cell(b),
                    field(b, "active_flows"),
                ];
                row.extend(traffic_cells(b));
                t.row(row);
            }
            t.render("  ", out);
        },
    )
}

/// [`stats_rates`] for people: the counters that moved (the others are only counted: a
/// quiet balancer has dozens), then each VIP's traffic.
pub fn render_stats_rates(r: &Value) -> String {
    let mut out = String::new();
    let mut reasons: Vec<(&String, &Value)> = r
        .get("reasons")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    reasons.sort_by(|a, b| a.0.cmp(b.0));
    let (moved, still): (Vec<_>, Vec<_>) = reasons
        .into_iter()
        .partition(|(_, v)| v.as_f64().is_none_or(|x| x > 0.0));
    let _ = writeln!(out, "over {}", interval_text(r));
    if moved.is_empty() {
        out.push_str("no counter moved\n");
    } else {
        let mut t = Table::new(&[("COUNTER", false), ("PER SECOND", true)]);
        for (name, v) in moved {
            t.row(vec![name.clone(), number(Some(v))]);
        }
        t.render("", &mut out);
    }
    if !still.is_empty() {
        let _ = writeln!(out, "({} counters did not move)", still.len());
    }
    let vips = list(r, "vips");
    if !vips.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            ("VIP", false),
            ("PACKETS/S", true),
            ("BITS/S", true),
            ("NEW FLOWS/S", true),
        ]);
        for vip in vips {
            let mut row = vec![field(vip, "vip")];
            row.extend(traffic_cells(vip));
            t.row(row);
        }
        t.render("", &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(b11: (u64, u64, u64), b12: Option<(u64, u64, u64)>) -> Value {
        let backend = |addr: &str, (packets, bytes, new_flows): (u64, u64, u64)| {
            json!({"address": addr, "weight": 1, "state": "up", "active_flows": 3,
                   "packets": packets, "bytes": bytes, "new_flows": new_flows})
        };
        let mut backends = vec![backend("198.18.0.11", b11)];
        let mut total = b11;
        if let Some(b) = b12 {
            backends.push(backend("198.18.0.12", b));
            total = (total.0 + b.0, total.1 + b.1, total.2 + b.2);
        }
        json!({"vips": [{"vip": "198.18.1.1:80/tcp", "name": "web", "scheduler": "maglev",
                         "packets": total.0, "bytes": total.1, "new_flows": total.2,
                         "backends": backends}]})
    }

    #[test]
    fn intervals_are_seconds_within_bounds() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "0.01", "-1", "NaN", "inf", "7200", "soon", ""] {
            assert!(parse_interval(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_rates_divide_what_moved_by_the_interval() {
        let before = status((100, 10_000, 4), None);
        // 198.18.0.12 was added in between: no rate for it, nor for the VIP, whose total
        // now adds it in.
        let after = status((300, 60_000, 8), Some((50, 5_000, 1)));
        let r = status_rates(&before, &after, Duration::from_secs(2));
        let b = &r["vips"][0]["backends"];
        assert_eq!(b[0]["packets_per_s"], json!(100.0));
        assert_eq!(b[0]["bits_per_s"], json!(200_000.0));
        assert_eq!(b[0]["new_flows_per_s"], json!(2.0));
        assert_eq!(b[0]["state"], "up");
        assert_eq!(b[0]["active_flows"], 3);
        assert_eq!(b[1]["packets_per_s"], Value::Null);
        assert_eq!(r["vips"][0]["packets_per_s"], json!(125.0));
        assert_eq!(r["interval_s"], json!(2.0));

        // A total that went backwards (removed and added again) has no rate.
        let r = status_rates(&after, &before, Duration::from_secs(1));
        assert_eq!(r["vips"][0]["backends"][0]["packets_per_s"], Value::Null);
        assert_eq!(r["vips"][0]["packets_per_s"], Value::Null);

        let text = render_status_rates(&status_rates(
            &status((0, 0, 0), Some((0, 0, 0))),
            &status((1500, 1_500_000, 30), Some((0, 0, 0))),
            Duration::from_secs(1),
        ));
        let want = "\
VIP 198.18.1.1:80/tcp (web)  over 1.0 s
  traffic: 1500 packets/s, 12.0 Mbit/s, 30.0 new flows/s
  BACKEND      WEIGHT  STATE  FLOWS  PACKETS/S       BITS/S  NEW FLOWS/S
  198.18.0.11       1  up         3       1500  12.0 Mbit/s         30.0
  198.18.0.12       1  up         3        0.0      0 bit/s          0.0
";
        assert_eq!(text, want, "\n{text}");
        assert!(render_status_rates(&json!({"vips": []})).starts_with("no VIPs"));
    }

    #[test]
    fn stats_rates_show_the_counters_that_moved() {
        let before = json!({"reasons": {"tx_encap": 100, "not_vip": 7, "fragment": 0},
                            "vips": [{"vip": "198.18.1.1:80/tcp", "packets": 100, "bytes": 1000, "new_flows": 1}]});
        let after = json!({"reasons": {"tx_encap": 350, "not_vip": 7, "fragment": 0, "too_big": 4},
                           "vips": [{"vip": "198.18.1.1:80/tcp", "packets": 350, "bytes": 251_000, "new_flows": 6}]});
        let r = stats_rates(&before, &after, Duration::from_millis(500));
        assert_eq!(r["reasons"]["tx_encap"], json!(500.0));
        assert_eq!(r["reasons"]["not_vip"], json!(0.0));
        // A counter this client has not seen before: no rate, shown as moved.
        assert_eq!(r["reasons"]["too_big"], Value::Null);
        let text = render_stats_rates(&r);
        let want = "\
over 0.5 s
COUNTER   PER SECOND
too_big            -
tx_encap         500
(2 counters did not move)

VIP                PACKETS/S      BITS/S  NEW FLOWS/S
198.18.1.1:80/tcp        500  4.0 Mbit/s         10.0
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn bits_take_si_prefixes() {
        for (x, want) in [
            (0.0, "0 bit/s"),
            (999.0, "999 bit/s"),
            (1000.0, "1.0 kbit/s"),
            (123_456.0, "123 kbit/s"),
            (9.87e9, "9.9 Gbit/s"),
            (4.2e13, "42000 Gbit/s"),
        ] {
            assert_eq!(bits(Some(&json!(x))), want, "{x}");
        }
        assert_eq!(bits(None), "-");
    }
}
