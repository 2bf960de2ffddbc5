//! `xlb drops`: the dropped packets the balancer sampled, one line each (`--follow` as
//! they come, `--pcap` into a capture file for Wireshark or tcpdump).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::ctl::{call, CtlOpts, Table};
use crate::{
    config::{SourcePrefix, VipId},
    control::protocol::{DropsQuery, Request},
    drops::{pcap_header, pcap_record, Answer, Sample, LOG_CAPACITY},
    utc::Utc,
};

/// How often `--follow` asks for new samples.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// What `xlb drops` was asked for.
#[derive(Clone, Debug, Default)]
pub struct DropsOpts {
    /// Only this drop reason.
    pub reason: Option<String>,
    /// Only packets to this service.
    pub vip: Option<VipId>,
    /// Only packets from clients in this prefix.
    pub client: Option<SourcePrefix>,
    /// The newest this many (without `--follow`).
    pub limit: Option<u32>,
    /// Keep listing samples as they come.
    pub follow: bool,
    /// With `follow`: stop after this many samples.
    pub count: Option<u64>,
    /// With `follow`: stop after this long.
    pub duration: Option<Duration>,
    /// Also write the frames to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Count the samples the daemon holds by reason and destination instead of listing
    /// them.
    pub summary: bool,
}

/// Runs `xlb drops`.
pub fn run_drops(drops: &DropsOpts, opts: &CtlOpts) -> anyhow::Result<()> {
    let mut pcap = drops.pcap.as_deref().map(PcapFile::create).transpose()?;
    let ask = |since: Option<u64>, limit| -> anyhow::Result<(Answer, serde_json::Value)> {
        let result = call(
            &opts.socket,
            &Request::Drops(DropsQuery {
                reason: drops.reason.clone(),
                vip: drops.vip,
                client: drops.client,
                since,
                limit,
            }),
        )?;
        let answer = serde_json::from_value(result.clone())
            .context("the daemon's answer to drops is not what this xlb reads")?;
        Ok((answer, result))
    };
    // A summary counts every sample the daemon holds.
    let first_limit = if drops.summary {
        Some(LOG_CAPACITY as u32)
    } else {
        drops.limit
    };
    let (answer, raw) = ask(None, first_limit)?;
    if let Some(p) = &mut pcap {
        p.add(&answer.samples)?;
    }
    if !drops.follow {
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&raw)?);
        } else if drops.summary {
            print!("{}", render_summary(&answer));
        } else {
            print!("{}", render(&answer, drops));
        }
        if let Some(p) = &pcap {
            eprintln!("{} frames written to {}", p.frames, p.path.display());
        }
        return Ok(());
    }
    // Following: what was there already, then what comes, until a bound says stop.
    let started = Instant::now();
    let mut shown = 0u64;
    let mut next = answer.next;
    let mut batch = answer;
    loop {
        for s in &batch.samples {
            if opts.json {
                println!("{}", serde_json::to_string(s)?);
            } else {
                println!("{}", line(s));
            }
            shown += 1;
            if drops.count.is_some_and(|c| shown >= c) {
                return pcap.map_or(Ok(()), |p| p.finish());
            }
        }
        if batch.missed > 0 {
            eprintln!("({} samples came and went between two looks)", batch.missed);
        }
        std::io::stdout().flush()?;
        if drops.duration.is_some_and(|d| started.elapsed() >= d) {
            return pcap.map_or(Ok(()), |p| p.finish());
        }
        std::thread::sleep(FOLLOW_POLL);
        // Everything since the last look: the log's whole length.
        let (answer, _) = ask(Some(next), Some(LOG_CAPACITY as u32))?;
        next = answer.next;
        if let Some(p) = &mut pcap {
            p.add(&answer.samples)?;
        }
        batch = answer;
    }
}

/// The answer for people: a line per sample, then what the list leaves out.
fn render(a: &Answer, asked: &DropsOpts) -> String {
    let mut out = String::new();
    for s in &a.samples {
        let _ = writeln!(out, "{}", line(s));
    }
    // `source_denied drops to 198.18.1.1:80/tcp from 198.18.0.0/24`, as asked.
    let what = |n: u64| {
        let mut w = String::new();
        if let Some(r) = &asked.reason {
            w += &format!("{r} ");
        }
        w += if n == 1 { "drop" } else { "drops" };
        if let Some(v) = asked.vip {
            w += &format!(" to {v}");
        }
        if let Some(c) = asked.client {
            w += &format!(" from {c}");
        }
        w
    };
    let shown = a.samples.len() as u64;
    let _ = if a.per_second == 0 {
        writeln!(
            out,
            "drop sampling is off (\"drop_samples\": 0 in the config); `xlb stats` counts drops by reason"
        )
    } else if a.samples.is_empty() {
        writeln!(
            out,
            "no {} sampled since the daemon started (it samples up to {} a second per CPU)",
            what(0),
            a.per_second
        )
    } else if a.truncated > 0 {
        writeln!(
            out,
            "the newest {shown} of {} sampled {} (--limit shows more; up to {} a second per CPU \
             are sampled)",
            shown + a.truncated,
            what(shown + a.truncated),
            a.per_second
        )
    } else {
        writeln!(
            out,
            "{shown} sampled {} (up to {} a second per CPU are sampled)",
            what(shown),
            a.per_second
        )
    };
    out
}

/// The samples by reason and destination, the most sampled first, each with the clients
/// sampled most: which service a drop counter's packets went to (the counters are not
/// per VIP), and from whom.
fn render_summary(a: &Answer) -> String {
    let mut groups: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for s in &a.samples {
        let h = &s.headers;
        let to = match (h.dst, h.dport, h.protocol) {
            (Some(dst), Some(port), Some(p)) => {
                format!("{}/{}", SocketAddr::new(dst, port), protocol_name(p))
            }
            (Some(dst), _, _) => dst.to_string(),
            (None, _, _) => "-".to_owned(),
        };
        let from = h.src.map_or_else(|| "-".to_owned(), |a| a.to_string());
        *groups
            .entry((s.reason.clone(), to))
            .or_default()
            .entry(from)
            .or_default() += 1;
    }
    let mut rows: Vec<(u64, String, String, String)> = groups
        .into_iter()
        .map(|((reason, to), clients)| {
            let total = clients.values().sum();
            let mut top: Vec<(u64, String)> = clients.into_iter().map(|(c, n)| (n, c)).collect();
            top.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| x.1.cmp(&y.1)));
            let shown: Vec<String> = top
                .iter()
                .take(3)
                .map(|(n, c)| format!("{c} ({n})"))
                .collect();
            let more = top.len().saturating_sub(3);
            let mut from = shown.join(", ");
            if more > 0 {
                let _ = write!(from, " and {more} more");
            }
            (total, reason, to, from)
        })
        .collect();
    rows.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| (&x.1, &x.2).cmp(&(&y.1, &y.2))));
    let mut out = String::new();
    if !rows.is_empty() {
        let mut t = Table::new(&[
            ("SAMPLES", true),
            ("REASON", false),
            ("TO", false),
            ("FROM (most sampled)", false),
        ]);
        for (n, reason, to, from) in rows {
            t.row(vec![n.to_string(), reason, to, from]);
        }
        t.render("", &mut out);
    }
    let _ = writeln!(
        out,
        "{} sample{} (the daemon keeps the last {LOG_CAPACITY}; up to {} a second per CPU are sampled)",
        a.samples.len(),
        if a.samples.len() == 1 { "" } else { "s" },
        a.per_second
    );
    out
}

/// `tcp`, `udp`, `icmp`, `icmpv6`, or `proto N`.
fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "icmpv6".to_owned(),
        other => format!("proto {other}"),
    }
}

/// One sample: when, why, what (`tcp 198.18.0.10:40000 > 198.18.1.1:80 [S]`), how long.
fn line(s: &Sample) -> String {
    format!(
        "{}  {:<22} {}  {} bytes",
        utc(s.time_unix_ns),
        s.reason,
        packet(s),
        s.frame_len
    )
}

/// What a sample's headers say of its packet, as far as they got.
fn packet(s: &Sample) -> String {
    let h = &s.headers;
    let (Some(src), Some(dst)) = (h.src, h.dst) else {
        return format!("no IP header in its first {} bytes", s.frame_hex.len() / 2);
    };
    let mut out = h.protocol.map_or_else(
        || "ipv6 (extension headers not followed)".to_owned(),
        protocol_name,
    );
    let _ = match (h.sport, h.dport) {
        (Some(sp), Some(dp)) => write!(
            out,
            " {} > {}",
            SocketAddr::new(src, sp),
            SocketAddr::new(dst, dp)
        ),
        _ => write!(out, " {src} > {dst}"),
    };
    if let Some(flags) = h.tcp_flags {
        let _ = write!(out, " [{}]", tcp_flags(flags));
    }
    if let (Some(t), Some(c)) = (h.icmp_type, h.icmp_code) {
        let _ = write!(out, " type {t} code {c}");
    }
    if h.fragment {
        out.push_str(" fragment");
    }
    if let Some(v) = h.vlan {
        let _ = write!(out, " vlan {v}");
    }
    out
}

/// tcpdump's letters: `S` SYN, `.` ACK, `F` FIN, `R` RST, `P` PSH, `U` URG, `E` ECE, `W` CWR.
fn tcp_flags(f: u8) -> String {
    let letters = [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'W'),
        (0x10, '.'),
    ];
    let s: String = letters
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() {
        "none".to_owned()
    } else {
        s
    }
}

/// `2026-11-29 11:20:59.123456` (UTC) of a Unix time in ns.
fn utc(ns: u64) -> String {
    let t = Utc::of_unix_secs(ns / 1_000_000_000);
    let micros = ns % 1_000_000_000 / 1000;
    format!("{} {}.{micros:06}", t.date(), t.time())
}

/// A pcap file being written.
struct PcapFile {
    path: PathBuf,
    file: std::fs::File,
    frames: u64,
}

impl PcapFile {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(&pcap_header())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            frames: 0,
        })
    }

    fn add(&mut self, samples: &[Sample]) -> anyhow::Result<()> {
        for s in samples {
            self.file
                .write_all(&pcap_record(s))
                .with_context(|| format!("writing {}", self.path.display()))?;
            self.frames += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.file
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        eprintln!("{} frames written to {}", self.frames, self.path.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::Headers;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000000");
        // `date -u -d @1795951259` → Sun Nov 29 11:20:59 UTC 2026.
        assert_eq!(utc(1_795_951_259_123_456_789), "2026-11-29 11:20:59.123456");
        // A leap day.
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00.000000");
    }

    #[test]
    fn tcp_flags_as_tcpdump_writes_them() {
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x11), "F.");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0), "none");
    }

    fn sample(headers: Headers) -> Sample {
        Sample {
            seq: 0,
            time_unix_ns: 0,
            reason: "no_backend".into(),
            ifindex: 2,
            frame_len: 74,
            headers,
            frame_hex: "00".repeat(74),
        }
    }

    #[test]
    fn summaries_count_right() {
        let answer = |n: usize, truncated: u64, per_second: u32| Answer {
            samples: vec![sample(Headers::default()); n],
            next: n as u64,
            missed: 0,
            truncated,
            per_second,
        };
        let all = DropsOpts::default();
        let last = |a: &Answer, asked| render(a, asked).lines().last().unwrap().to_owned();
        let narrow = DropsOpts {
            reason: Some("no_backend".into()),
            vip: Some("198.18.1.1:80/tcp".parse().unwrap()),
            client: Some("198.18.0.0/24".parse().unwrap()),
            ..DropsOpts::default()
        };
        assert_eq!(
            last(&answer(1, 0, 100), &narrow),
            "1 sampled no_backend drop to 198.18.1.1:80/tcp from 198.18.0.0/24 (up to 100 a \
             second per CPU are sampled)"
        );
        assert_eq!(
            last(&answer(2, 3, 100), &all),
            "the newest 2 of 5 sampled drops (--limit shows more; up to 100 a second per CPU are sampled)"
        );
        assert!(last(&answer(0, 0, 100), &all).starts_with("no drops sampled"));
        assert!(last(&answer(0, 0, 0), &all).starts_with("drop sampling is off"));
        assert_eq!(render(&answer(3, 0, 100), &all).lines().count(), 4);
    }

    #[test]
    fn summaries_group_by_reason_and_destination() {
        let to = |src: &str, dst: &str, dport: u16, reason: &str| Sample {
            reason: reason.into(),
            ..sample(Headers {
                src: Some(src.parse().unwrap()),
                dst: Some(dst.parse().unwrap()),
                protocol: Some(6),
                sport: Some(40000),
                dport: Some(dport),
                ..Headers::default()
            })
        };
        let mut samples = Vec::new();
        for (n, src) in [
            (5, "198.18.0.10"),
            (2, "198.18.0.11"),
            (1, "198.18.0.12"),
            (1, "198.18.0.13"),
        ] {
            for _ in 0..n {
                samples.push(to(src, "198.18.1.1", 80, "source_denied"));
            }
        }
        samples.push(to("fd00::10", "fd00:1::1", 443, "no_backend"));
        samples.push(sample(Headers::default()));
        let a = Answer {
            samples,
            next: 11,
            missed: 0,
            truncated: 0,
            per_second: 100,
        };
        let text = render_summary(&a);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("SAMPLES"), "{text}");
        assert_eq!(
            lines[1],
            "      9  source_denied  198.18.1.1:80/tcp    198.18.0.10 (5), 198.18.0.11 (2), 198.18.0.12 (1) and 1 more"
        );
        assert!(
            lines[3].contains("no_backend")
                && lines[3].contains("[fd00:1::1]:443/tcp")
                && lines[3].contains("fd00::10 (1)"),
            "{text}"
        );
        assert!(
            lines[2].contains("no_backend") && lines[2].contains(" -  "),
            "{text}"
        );
        assert_eq!(
            lines[4],
            "11 samples (the daemon keeps the last 1000; up to 100 a second per CPU are sampled)"
        );
    }

    #[test]
    fn packet_lines() {
        let v4 = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let cases = [
            (
                Headers {
                    src: v4("198.18.0.10"),
                    dst: v4("198.18.1.1"),
                    protocol: Some(6),
                    sport: Some(40000),
                    dport: Some(80),
                    tcp_flags: Some(0x02),
                    ..Headers::default()
                },
                "tcp 198.18.0.10:40000 > 198.18.1.1:80 [S]",
            ),
            (
                Headers {
                    src: v4("fd00::10"),
                    dst: v4("fd00::1:1"),
                    protocol: Some(17),
                    sport: Some(5353),
                    dport: Some(53),
                    vlan: Some(7),
                    ..Headers::default()
                },
                "udp [fd00::10]:5353 > [fd00::1:1]:53 vlan 7",
            ),
            (
                Headers {
                    src: v4("198.18.0.10"),
                    dst: v4("198.18.1.1"),
                    protocol: Some(17),
                    fragment: true,
                    ..Headers::default()
                },
                "udp 198.18.0.10 > 198.18.1.1 fragment",
            ),
            (
                Headers {
                    src: v4("198.18.0.10"),
                    dst: v4("198.18.1.1"),
                    protocol: Some(1),
                    icmp_type: Some(3),
                    icmp_code: Some(4),
                    ..Headers::default()
                },
                "icmp 198.18.0.10 > 198.18.1.1 type 3 code 4",
            ),
            (Headers::default(), "no IP header in its first 74 bytes"),
        ];
        for (h, want) in cases {
            assert_eq!(packet(&sample(h)), want);
        }
    }
}
