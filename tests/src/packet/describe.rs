//! Field-by-field description of frames, for readable test failures.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    checksum::Sum16BitWords, Ethernet2Header, Ipv4Header, Ipv6Header, SingleVlanHeader, TcpHeader,
    UdpHeader,
};

use super::*;

/// Nested IP-in-IP / ICMP quotes deeper than this are shown as bytes: garbage must not recurse
/// without end.
const MAX_DEPTH: usize = 4;
/// Payload bytes shown per line; later differences still show up as the first differing
/// offset in [`diff_frames`].
const HEX_SHOWN: usize = 64;

/// One line per field, `key = value`, keys unique within a frame (`ipv4.ttl`, `tcp.sport`,
/// `inner.ipv6.src`, `icmp.quoted.ipv4.dst`, …). Never panics: truncated or malformed layers
/// end the description with a line saying what is wrong and the remaining bytes.
pub fn describe(frame: &[u8]) -> Vec<String> {
    let mut d = Describer { lines: Vec::new() };
    d.eth(frame);
    d.lines
}

/// `None` when the frames are byte-identical; otherwise the frame lengths, the first
/// differing byte offset, and the fields of [`describe`] that differ.
pub fn diff_frames(expected: &[u8], actual: &[u8]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut out = format!(
        "frames differ: expected {} bytes, actual {} bytes\n",
        expected.len(),
        actual.len()
    );
    let first = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    let show = |b: Option<&u8>| b.map_or("end".to_string(), |b| format!("{b:#04x}"));
    out.push_str(&format!(
        "first difference at byte {first}: expected {}, actual {}\n",
        show(expected.get(first)),
        show(actual.get(first)),
    ));
    let split = |line: &String| -> (String, String) {
        match line.split_once(" = ") {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (line.clone(), String::new()),
        }
    };
    let exp: Vec<(String, String)> = describe(expected).iter().map(split).collect();
    let act: Vec<(String, String)> = describe(actual).iter().map(split).collect();
    let lookup = |fields: &[(String, String)], key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let mut any = false;
    for (key, value) in &exp {
        match lookup(&act, key) {
            Some(v) if &v == value => {}
            Some(v) => {
                any = true;
                out.push_str(&format!("  {key}: expected {value}, actual {v}\n"));
            }
            None => {
                any = true;
                out.push_str(&format!("  {key}: expected {value}, actual <absent>\n"));
            }
        }
    }
    for (key, value) in &act {
        if lookup(&exp, key).is_none() {
            any = true;
            out.push_str(&format!("  {key}: expected <absent>, actual {value}\n"));
        }
    }
    if !any {
        out.push_str("  (no described field differs: see the byte offset)\n");
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut s: String = bytes
        .iter()
        .take(HEX_SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > HEX_SHOWN {
        s.push('…');
    }
    s
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn checksum_note(found: u16, expected: Option<u16>) -> String {
    match expected {
        Some(e) if e == found => format!("{found:#06x} (ok)"),
        Some(e) => format!("{found:#06x} (bad, expected {e:#06x})"),
        None => format!("{found:#06x} (not verifiable: partial packet)"),
    }
}

/// What an L4 description knows about its packet.
#[derive(Clone, Copy)]
struct L4Ctx {
    pseudo: Pseudo,
    /// The whole transport segment is present (not truncated, not a fragment), so its
    /// checksum can be verified.
    complete: bool,
    depth: usize,
}

struct Describer {
    lines: Vec<String>,
}

impl Describer {
    fn put(&mut self, scope: &str, key: &str, value: impl std::fmt::Display) {
        self.lines.push(format!("{scope}{key} = {value}"));
    }

    fn rest(&mut self, scope: &str, key: &str, bytes: &[u8]) {
        self.put(scope, &format!("{key}.len"), bytes.len());
        if !bytes.is_empty() {
            self.put(scope, key, hex(bytes));
        }
    }

    fn eth(&mut self, f: &[u8]) {
        let Ok((eth, mut rest)) = Ethernet2Header::from_slice(f) else {
            self.put(
                "",
                "eth",
                format!("truncated, {} bytes: {}", f.len(), hex(f)),
            );
            return;
        };
        self.put("", "eth.dst", mac(&eth.destination));
        self.put("", "eth.src", mac(&eth.source));
        self.put("", "eth.type", format!("{:#06x}", eth.ether_type.0));
        let mut ethertype = eth.ether_type.0;
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            let Ok((tag, after)) = SingleVlanHeader::from_slice(rest) else {
                self.put("", "vlan", format!("truncated: {}", hex(rest)));
                return;
            };
            self.put("", "vlan.id", tag.vlan_id.value());
            self.put("", "vlan.pcp", tag.pcp.value());
            self.put("", "vlan.dei", tag.drop_eligible_indicator);
            self.put("", "vlan.type", format!("{:#06x}", tag.ether_type.0));
            ethertype = tag.ether_type.0;
            rest = after;
        }
        match ethertype {
            ETHERTYPE_IPV4 => self.ipv4("", rest, 0),
            ETHERTYPE_IPV6 => self.ipv6("", rest, 0),
            _ => self.rest("", "payload", rest),
        }
    }

    fn ipv4(&mut self, scope: &str, p: &[u8], depth: usize) {
        let (h, _) = match Ipv4Header::from_slice(p) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.put(scope, "ipv4", format!("unparseable ({e}): {}", hex(p)));
                return;
            }
        };
        let hlen = h.header_len();
        let s = format!("{scope}ipv4.");
        self.put(&s, "ihl", h.ihl());
        self.put(
            &s,
            "tos",
            format!("{:#04x}", (h.dscp.value() << 2) | h.ecn.value()),
        );
        self.put(&s, "total_len", h.total_len);
        self.put(&s, "id", format!("{:#06x}", h.identification));
        self.put(&s, "df", h.dont_fragment);
        self.put(&s, "mf", h.more_fragments);
        self.put(&s, "frag_offset", h.fragment_offset.value());
        self.put(&s, "ttl", h.time_to_live);
        self.put(&s, "proto", h.protocol.0);
        self.put(
            &s,
            "checksum",
            checksum_note(h.header_checksum, Some(h.calc_header_checksum())),
        );
        self.put(&s, "src", Ipv4Addr::from(h.source));
        self.put(&s, "dst", Ipv4Addr::from(h.destination));
        if !h.options.is_empty() {
            self.put(&s, "options", hex(&h.options));
        }
        let total = usize::from(h.total_len);
        let end = total.clamp(hlen, p.len());
        if p.len() > total && total >= hlen {
            self.put(&s, "trailing_bytes", p.len() - total);
        }
        let body = p.get(hlen..end).unwrap_or(&[]);
        let fragment = h.more_fragments || h.fragment_offset.value() != 0;
        let ctx = L4Ctx {
            pseudo: Pseudo::V4 {
                src: Ipv4Addr::from(h.source),
                dst: Ipv4Addr::from(h.destination),
            },
            complete: total <= p.len() && !fragment,
            depth,
        };
        if h.fragment_offset.value() != 0 {
            // A later fragment carries no transport header.
            self.rest(scope, "fragment_data", body);
        } else {
            self.upper(scope, h.protocol.0, body, ctx);
        }
    }

    fn ipv6(&mut self, scope: &str, p: &[u8], depth: usize) {
        let (h, _) = match Ipv6Header::from_slice(p) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.put(scope, "ipv6", format!("unparseable ({e}): {}", hex(p)));
                return;
            }
        };
        let s = format!("{scope}ipv6.");
        self.put(&s, "traffic_class", format!("{:#04x}", h.traffic_class));
        self.put(&s, "flow_label", format!("{:#07x}", h.flow_label.value()));
        self.put(&s, "payload_len", h.payload_length);
        self.put(&s, "next_header", h.next_header.0);
        self.put(&s, "hop_limit", h.hop_limit);
        self.put(&s, "src", Ipv6Addr::from(h.source));
        self.put(&s, "dst", Ipv6Addr::from(h.destination));
        let total = Ipv6Header::LEN + usize::from(h.payload_length);
        if p.len() > total {
            self.put(&s, "trailing_bytes", p.len() - total);
        }
        let mut body = p.get(Ipv6Header::LEN..total.min(p.len())).unwrap_or(&[]);
        let mut next = h.next_header.0;
        let mut fragment = false;
        let mut later_fragment = false;
        // Bounded like the data path's own walk; more headers than this is nonsense anyway.
        for i in 0..16 {
            if !matches!(
                next,
                PROTO_HOPOPTS | PROTO_ROUTING | PROTO_FRAGMENT | PROTO_DSTOPTS | PROTO_AH
            ) {
                break;
            }
            let key = format!("ext[{i}]");
            let len = match (next, body.get(1)) {
                (_, None) => {
                    self.put(&s, &key, format!("truncated: {}", hex(body)));
                    return;
                }
                (PROTO_FRAGMENT, Some(_)) => 8,
                (PROTO_AH, Some(&l)) => (usize::from(l) + 2) * 4,
                (_, Some(&l)) => (usize::from(l) + 1) * 8,
            };
            let Some(ext) = body.get(..len) else {
                let what = format!("proto {next} truncated, need {len} bytes: {}", hex(body));
                self.put(&s, &key, what);
                return;
            };
            let desc = if next == PROTO_FRAGMENT {
                let field = be16(ext, 2).unwrap_or(0);
                let (offset, more) = (field >> 3, field & 1 == 1);
                fragment = true;
                later_fragment = offset != 0;
                format!(
                    "fragment next={} offset={offset} more={more} id={:#010x}",
                    ext[0],
                    be32(ext, 4).unwrap_or(0)
                )
            } else {
                let name = match next {
                    PROTO_HOPOPTS => "hop-by-hop",
                    PROTO_ROUTING => "routing",
                    PROTO_DSTOPTS => "dest-opts",
                    _ => "auth",
                };
                format!("{name} next={} len={len} body={}", ext[0], hex(&ext[2..]))
            };
            self.put(&s, &key, desc);
            next = ext[0];
            body = &body[len..];
        }
        let ctx = L4Ctx {
            pseudo: Pseudo::V6 {
                src: Ipv6Addr::from(h.source),
                dst: Ipv6Addr::from(h.destination),
            },
            complete: total <= p.len() && !fragment,
            depth,
        };
        if later_fragment {
            self.rest(scope, "fragment_data", body);
        } else {
            self.upper(scope, next, body, ctx);
        }
    }

    fn upper(&mut self, scope: &str, proto: u8, body: &[u8], ctx: L4Ctx) {
        let inner_scope = format!("{scope}inner.");
        match proto {
            PROTO_TCP => self.tcp(scope, body, ctx),
            PROTO_UDP => self.udp(scope, body, ctx),
            PROTO_ICMP | PROTO_ICMPV6 => self.icmp(scope, proto, body, ctx),
            PROTO_IPIP if ctx.depth < MAX_DEPTH => self.ipv4(&inner_scope, body, ctx.depth + 1),
            PROTO_IPV6 if ctx.depth < MAX_DEPTH => self.ipv6(&inner_scope, body, ctx.depth + 1),
            _ => self.rest(scope, "payload", body),
        }
    }

    fn l4_checksum(&self, proto: u8, seg: &[u8], at: usize, ctx: L4Ctx) -> Option<u16> {
        if !ctx.complete {
            return None;
        }
        let mut zeroed = seg.to_vec();
        zeroed.get_mut(at..at + 2)?.fill(0);
        let sum = Sum16BitWords::new().add_slice(&zeroed);
        Some(match proto {
            PROTO_ICMP => sum.ones_complement().to_be(),
            PROTO_UDP => {
                let full = ctx.pseudo.sum(proto, seg.len()).add_slice(&zeroed);
                full.to_ones_complement_with_no_zero().to_be()
            }
            _ => ctx
                .pseudo
                .sum(proto, seg.len())
                .add_slice(&zeroed)
                .ones_complement()
                .to_be(),
        })
    }

    fn ports(&mut self, s: &str, seg: &[u8]) {
        if let Some(sport) = be16(seg, 0) {
            self.put(s, "sport", sport);
        }
        if let Some(dport) = be16(seg, 2) {
            self.put(s, "dport", dport);
        }
    }

    fn tcp(&mut self, scope: &str, seg: &[u8], ctx: L4Ctx) {
        let s = format!("{scope}tcp.");
        let (h, data) = match TcpHeader::from_slice(seg) {
            Ok(parsed) => parsed,
            Err(e) => {
                // ICMP errors usually quote only 8 bytes of TCP: show what is there.
                self.ports(&s, seg);
                if let Some(seq) = be32(seg, 4) {
                    self.put(&s, "seq", seq);
                }
                self.put(&s, "partial", format!("{} bytes ({e})", seg.len()));
                return;
            }
        };
        self.put(&s, "sport", h.source_port);
        self.put(&s, "dport", h.destination_port);
        self.put(&s, "seq", h.sequence_number);
        self.put(&s, "ack_seq", h.acknowledgment_number);
        self.put(&s, "data_offset", h.data_offset());
        let names = [
            (h.fin, "FIN"),
            (h.syn, "SYN"),
            (h.rst, "RST"),
            (h.psh, "PSH"),
            (h.ack, "ACK"),
            (h.urg, "URG"),
            (h.ece, "ECE"),
            (h.cwr, "CWR"),
        ];
        let flags: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        self.put(
            &s,
            "flags",
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join("|")
            },
        );
        self.put(&s, "window", h.window_size);
        let expected = self.l4_checksum(PROTO_TCP, seg, 16, ctx);
        self.put(&s, "checksum", checksum_note(h.checksum, expected));
        if h.urgent_pointer != 0 {
            self.put(&s, "urgent", h.urgent_pointer);
        }
        if !h.options.is_empty() {
            self.put(&s, "options", hex(h.options.as_slice()));
        }
        self.rest(scope, "payload", data);
    }

    fn udp(&mut self, scope: &str, seg: &[u8], ctx: L4Ctx) {
        let s = format!("{scope}udp.");
        let Ok((h, data)) = UdpHeader::from_slice(seg) else {
            self.ports(&s, seg);
            self.put(&s, "partial", format!("{} bytes", seg.len()));
            return;
        };
        self.put(&s, "sport", h.source_port);
        self.put(&s, "dport", h.destination_port);
        self.put(&s, "len", h.length);
        let expected = match (h.checksum, ctx.pseudo) {
            (0, Pseudo::V4 { .. }) => {
                self.put(&s, "checksum", "0x0000 (none)");
                return self.rest(scope, "payload", data);
            }
            _ => self.l4_checksum(PROTO_UDP, seg, 6, ctx),
        };
        self.put(&s, "checksum", checksum_note(h.checksum, expected));
        self.rest(scope, "payload", data);
    }

    fn icmp(&mut self, scope: &str, proto: u8, seg: &[u8], ctx: L4Ctx) {
        let v6 = proto == PROTO_ICMPV6;
        let s = format!("{scope}{}.", if v6 { "icmpv6" } else { "icmp" });
        let (Some(&icmp_type), Some(&code), Some(checksum), Some(rest)) =
            (seg.first(), seg.get(1), be16(seg, 2), seg.get(4..8))
        else {
            self.put(&s, "partial", format!("{} bytes: {}", seg.len(), hex(seg)));
            return;
        };
        self.put(&s, "type", icmp_type);
        self.put(&s, "code", code);
        let expected = self.l4_checksum(proto, seg, 2, ctx);
        self.put(&s, "checksum", checksum_note(checksum, expected));
        let body = &seg[8..];
        let quotes_packet = if v6 {
            (1..=4).contains(&icmp_type)
        } else {
            matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
        };
        match (v6, icmp_type) {
            (false, 0 | 8) | (true, 128 | 129) => {
                self.put(&s, "id", be16(rest, 0).unwrap_or(0));
                self.put(&s, "seq", be16(rest, 2).unwrap_or(0));
            }
            (false, 3) if code == 4 => self.put(&s, "mtu", be16(rest, 2).unwrap_or(0)),
            (true, 2) => self.put(&s, "mtu", be32(rest, 0).unwrap_or(0)),
            _ => self.put(&s, "rest", hex(rest)),
        }
        if !quotes_packet || ctx.depth >= MAX_DEPTH {
            return self.rest(scope, &format!("{}payload", &s[scope.len()..]), body);
        }
        let quoted = format!("{s}quoted.");
        if v6 {
            self.ipv6(&quoted, body, ctx.depth + 1);
        } else {
            self.ipv4(&quoted, body, ctx.depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
    const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1);

    #[test]
    fn diff_names_the_field() {
        let a = Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(CLIENT, VIP).tcp(1, 80);
        assert_eq!(diff_frames(&a.build(), &a.build()), None);
        let b = a.clone().ttl(63);
        let d = diff_frames(&a.build(), &b.build()).unwrap();
        assert!(d.contains("ipv4.ttl: expected 64, actual 63"), "{d}");
        assert!(d.contains("first difference at byte 22"), "{d}");
        let short = truncated(&a.build(), 30);
        let d = diff_frames(&a.build(), &short).unwrap();
        assert!(
            d.contains("actual <absent>") || d.contains("unparseable"),
            "{d}"
        );
    }

    #[test]
    fn describe_survives_garbage() {
        let frames = [
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(3)
                .ipv4(CLIENT, VIP)
                .ipv4_options(&[7; 12])
                .tcp(1, 2)
                .payload(&[1; 40])
                .build(),
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .ipv6(CLIENT6, VIP6)
                .ipv6_ext(ExtHeader::HopByHop(vec![9; 30]))
                .ipv6_ext(ExtHeader::Other {
                    protocol: PROTO_AH,
                    body: vec![1; 10],
                })
                .icmpv6_packet_too_big(1280, &[0x60; 60])
                .build(),
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .ipv4(CLIENT, VIP)
                .protocol(PROTO_IPIP)
                .payload(&ipv4_outer(
                    CLIENT,
                    VIP,
                    PROTO_IPIP,
                    0,
                    1,
                    0,
                    false,
                    &[0x45; 60],
                ))
                .build(),
        ];
        for f in &frames {
            for len in 0..=f.len() {
                let t = truncated(f, len);
                let _ = describe(&t);
                let _ = diff_frames(f, &t);
            }
        }
        // Pseudo-random bytes behind each ethertype and IP version.
        let mut x: u32 = 0x1234_5678;
        for round in 0..2000 {
            let mut f = vec![0u8; (round % 130) + 1];
            for b in f.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            if f.len() > 15 {
                let ty = [ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN][round % 3];
                f[12..14].copy_from_slice(&ty.to_be_bytes());
                f[14] = [0x45, 0x4f, 0x60, 0x00][round % 4];
            }
            let _ = describe(&f);
            let _ = diff_frames(&f, &frames[round % 3]);
            let _ = ip_packet(&f);
        }
    }
}
