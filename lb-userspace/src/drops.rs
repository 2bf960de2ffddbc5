//! Dropped packets the balancer sampled, for `xlb drops` (op `drops`): the counters say
//! how many packets were dropped for a reason, the samples show which ones, so that "why
//! does this client get no answer" has an answer without a packet capture on the
//! balancer (which sees nothing of what XDP drops).
//!
//! The program samples drops into a ring buffer (`DROP_SAMPLES`, see the balancer's
//! `drops.rs`) as long as its CPU's budget lasts, which [`DropSampler`] refills to
//! `drop_samples` every second; it also drains the ring into a
//! [`DropLog`], the last [`LOG_CAPACITY`] samples, which the `drops` op lists, newest
//! last. Each sample keeps the frame's first [`DROP_CAPTURE`] bytes: its flow is read
//! from them here ([`Headers`]), and `xlb drops --pcap` writes them for Wireshark ([`pcap_record`]).

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
    Ebpf,
};
use lb_common::{
    counters::Drop,
    maps::{DropSample, DROP_CAPTURE, MAP_DROP_BUDGET, MAP_DROP_SAMPLES},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::watch,
};

use crate::config::{SourcePrefix, VipId};

/// Samples the daemon keeps (about 400 bytes each).
pub const LOG_CAPACITY: usize = 1000;
/// Samples listed when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 20;

/// `limit` as a count, or why it is refused.
pub fn check_limit(limit: Option<u32>) -> Result<usize, String> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1.. if n as usize <= LOG_CAPACITY => Ok(n as usize),
        n => Err(format!(
            "{n} is out of range: list 1..={LOG_CAPACITY} samples (the daemon keeps the last \
             {LOG_CAPACITY})"
        )),
    }
}

/// `reason` as a drop reason, or why it is refused (naming them all).
pub fn check_reason(reason: &str) -> Result<Drop, String> {
    Drop::ALL
        .iter()
        .copied()
        .find(|d| d.name() == reason)
        .ok_or_else(|| {
            let names: Vec<&str> = Drop::ALL.iter().map(|d| d.name()).collect();
            format!(
                "{reason:?} is no drop reason; reasons: {}",
                names.join(", ")
            )
        })
}

/// One sampled drop, as the `drops` op answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Its place in the daemon's sequence of samples (from 0, never reused).
    pub seq: u64,
    /// When it was dropped (ns since the Unix epoch).
    pub time_unix_ns: u64,
    /// Its drop reason (`xlb_drops_total`'s `reason`).
    pub reason: String,
    /// The interface it came in on.
    pub ifindex: u32,
    /// The whole frame's length.
    pub frame_len: u32,
    /// What its first bytes say.
    #[serde(flatten)]
    pub headers: Headers,
    /// The frame's first bytes (at most [`DROP_CAPTURE`]), in hex.
    pub frame_hex: String,
}

impl Sample {
    /// The captured bytes (`frame_hex` decoded; empty if it is not hex).
    pub fn frame(&self) -> Vec<u8> {
        unhex(&self.frame_hex).unwrap_or_default()
    }
}

/// What a dropped frame's first bytes say of its packet: as much as they hold, since the
/// frame may be the malformed one (a bad IPv4 IHL still shows its addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    /// The 802.1Q VLAN id, for a tagged frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The IP source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// The IP destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// The IP protocol (IPv6: the header after the extension headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// A fragment (IPv4 MF or offset; IPv6 fragment header).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    /// TCP / UDP source port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// TCP / UDP destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// TCP flags (`FIN` = 0x01 … `CWR` = 0x80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<u8>,
    /// ICMP / ICMPv6 type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP / ICMPv6 code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up on the transport header.
const MAX_EXT_HEADERS: usize = 8;

impl Headers {
    /// Whether the packet went to `vip` (its address, protocol and port; any port for an
    /// all-ports VIP).
    pub fn to(&self, vip: &VipId) -> bool {
        self.dst == Some(vip.address)
            && self.protocol == Some(vip.protocol.number())
            && (vip.all_ports() || self.dport == Some(vip.port))
    }

    /// Reads what `frame` holds; stops quietly where it ends or stops making sense.
    pub fn read(frame: &[u8]) -> Self {
        let mut h = Self::default();
        let be16 = |at: usize| {
            frame
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        let (ethertype, l3) = match be16(12) {
            Some(ETH_P_8021Q | ETH_P_8021AD) => {
                h.vlan = be16(14).map(|tci| tci & 0x0fff);
                (be16(16), 18)
            }
            t => (t, 14),
        };
        let ip = frame.get(l3..).unwrap_or_default();
        let l4 = match ethertype {
            Some(ETH_P_IP) => h.ipv4(ip),
            Some(ETH_P_IPV6) => h.ipv6(ip),
            _ => None,
        };
        if let (Some(proto), Some(l4)) = (h.protocol, l4) {
            h.transport(proto, l4);
        }
        h
    }

    /// The IPv4 header's fields; the transport header, if it is there to read.
    fn ipv4<'a>(&mut self, ip: &'a [u8]) -> Option<&'a [u8]> {
        let fixed = ip.get(..20)?;
        let addr =
            |at: usize| Ipv4Addr::new(fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]);
        self.src = Some(addr(12).into());
        self.dst = Some(addr(16).into());
        self.protocol = Some(fixed[9]);
        let frag = u16::from_be_bytes([fixed[6], fixed[7]]);
        // MF or an offset: a fragment; only the first (offset 0) has the transport header.
        self.fragment = frag & 0x3fff != 0;
        let ihl = usize::from(fixed[0] & 0x0f) * 4;
        if fixed[0] >> 4 != 4 || ihl < 20 || frag & 0x1fff != 0 {
            return None;
        }
        ip.get(ihl..)
    }

    /// The IPv6 header's fields, walking extension headers; the transport header.
    fn ipv6<'a>(&mut self, ip: &'a [u8]) -> Option<&'a [u8]> {
        let fixed = ip.get(..40)?;
        let addr = |at: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&fixed[at..at + 16]);
            Ipv6Addr::from(a)
        };
        self.src = Some(addr(8).into());
        self.dst = Some(addr(24).into());
        let mut next = fixed[6];
        let mut off = 40;
        for _ in 0..MAX_EXT_HEADERS {
            let ext = ip.get(off..off + 8);
            let len = match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    ext.map(|e| (usize::from(e[1]) + 1) * 8)
                }
                IPPROTO_AH => ext.map(|e| (usize::from(e[1]) + 2) * 4),
                IPPROTO_FRAGMENT => {
                    self.fragment = true;
                    // Only the first fragment (offset 0) has the transport header.
                    match ext {
                        Some(e) if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 == 0 => Some(8),
                        _ => None,
                    }
                }
                _ => {
                    self.protocol = Some(next);
                    return ip.get(off..);
                }
            };
            next = ext?[0];
            off += len?;
        }
        None
    }

    fn transport(&mut self, proto: u8, l4: &[u8]) {
        let be16 = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        match proto {
            IPPROTO_TCP | IPPROTO_UDP => {
                if l4.len() >= 4 {
                    self.sport = be16(0);
                    self.dport = be16(2);
                }
                if proto == IPPROTO_TCP {
                    self.tcp_flags = l4.get(13).copied();
                }
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                self.icmp_type = l4.first().copied();
                self.icmp_code = l4.get(1).copied();
            }
            _ => {}
        }
    }
}

/// Hex of `bytes`, two lower-case digits each.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a [`hex`] string; `None` if it is not one.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A `DROP_SAMPLES` record, or `None` if it is not one (shorter, or claiming more bytes
/// than it can hold).
pub fn decode(record: &[u8]) -> Option<DropSample> {
    if record.len() < std::mem::size_of::<DropSample>() {
        return None;
    }
    // SAFETY: the record holds a whole `DropSample` (checked above), a plain-integer type
    // every bit pattern of which is valid; read unaligned, as ring records are 8-aligned.
    let s = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<DropSample>()) };
    (s.captured as usize <= DROP_CAPTURE).then_some(s)
}

/// The last [`LOG_CAPACITY`] samples, oldest first.
#[derive(Debug)]
pub struct DropLog {
    samples: VecDeque<Sample>,
    next_seq: u64,
    per_second: u32,
}

/// What a `drops` request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only drops for this reason.
    pub reason: Option<Drop>,
    /// Only packets to this service (an all-ports VIP: any port of its address).
    pub vip: Option<VipId>,
    /// Only packets from clients in this prefix.
    pub client: Option<SourcePrefix>,
    /// Only samples from this sequence number on (`next` of an earlier answer).
    pub since: Option<u64>,
    /// At most this many, the newest.
    pub limit: usize,
}

/// The `drops` op's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The samples asked for, oldest first.
    pub samples: Vec<Sample>,
    /// The sequence number the next sample will have: `since` for "what came after".
    pub next: u64,
    /// Samples after `since` that the log no longer holds (it keeps the last
    /// [`LOG_CAPACITY`]): ask more often to see them all.
    pub missed: u64,
    /// Samples that matched but were left out by `limit` (the oldest).
    pub truncated: u64,
    /// Drops each CPU samples per second (`drop_samples`; 0: sampling is off).
    pub per_second: u32,
}

impl DropLog {
    /// An empty log for a sampler taking `per_second` drops a second per CPU.
    pub fn new(per_second: u32) -> Self {
        Self {
            samples: VecDeque::with_capacity(LOG_CAPACITY),
            next_seq: 0,
            per_second,
        }
    }

    /// Drops each CPU samples per second: what the sampler refills the budgets to.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// A new rate (a reload's `drop_samples`), in force from the sampler's next refill.
    pub fn set_per_second(&mut self, per_second: u32) {
        self.per_second = per_second;
    }

    /// Adds a record, dropped at `time_unix_ns`, forgetting the oldest beyond capacity.
    pub fn push(&mut self, s: &DropSample, time_unix_ns: u64) {
        let frame = &s.frame[..(s.captured as usize).min(DROP_CAPTURE)];
        let reason = Drop::from_slot(s.reason).map_or("unknown", Drop::name);
        if self.samples.len() == LOG_CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            seq: self.next_seq,
            time_unix_ns,
            reason: reason.to_string(),
            ifindex: s.ifindex,
            frame_len: s.frame_len,
            headers: Headers::read(frame),
            frame_hex: hex(frame),
        });
        self.next_seq += 1;
    }

    /// The samples `q` asks for.
    pub fn query(&self, q: &Query) -> Answer {
        let since = q.since.unwrap_or(0);
        let oldest = self.samples.front().map_or(self.next_seq, |s| s.seq);
        let missed = match q.since {
            Some(since) => oldest.saturating_sub(since),
            None => 0,
        };
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.seq >= since)
            .filter(|s| q.reason.is_none_or(|r| s.reason == r.name()))
            .filter(|s| q.vip.is_none_or(|v| s.headers.to(&v)))
            .filter(|s| {
                q.client
                    .is_none_or(|c| s.headers.src.is_some_and(|a| c.contains(a)))
            })
            .collect();
        let skip = matching.len().saturating_sub(q.limit);
        Answer {
            samples: matching[skip..].iter().map(|s| (*s).clone()).collect(),
            next: self.next_seq,
            missed,
            truncated: skip as u64,
            per_second: self.per_second,
        }
    }
}

/// How often the daemon refills each CPU's sampling budget.
pub const REFILL: Duration = Duration::from_secs(1);

/// The balancer's drop-sample ring and each CPU's sampling budget.
pub struct DropSampler {
    ring: RingBuf<MapData>,
    budget: Budget,
}

/// Every CPU's sampling budget (`DROP_BUDGET`) and what it is refilled to.
struct Budget {
    map: PerCpuArray<MapData, u32>,
    per_second: u32,
}

impl Budget {
    /// [`Budget::refill`] at the rate `log` holds now.
    fn refill_to(&mut self, log: &Mutex<DropLog>) -> Result<()> {
        if let Ok(log) = log.lock() {
            self.per_second = log.per_second();
        }
        self.refill()
    }

    /// Sets every CPU's budget to the rate (what a CPU did not spend does not carry over).
    fn refill(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let values =
            PerCpuValues::try_from(vec![self.per_second; cpus]).context("one budget per CPU")?;
        self.map.set(0, values, 0).context("writing DROP_BUDGET")
    }
}

impl DropSampler {
    /// Takes the ring and the budgets out of a loaded balancer and gives every CPU a
    /// budget of `per_second` samples (0: none), refilled by [`DropSampler::run`].
    pub fn open(ebpf: &mut Ebpf, per_second: u32) -> Result<Self> {
        let mut map = |name| {
            ebpf.take_map(name)
                .with_context(|| format!("the balancer object has no map {name}"))
        };
        let mut budget = Budget {
            map: PerCpuArray::try_from(map(MAP_DROP_BUDGET)?).context("opening DROP_BUDGET")?,
            per_second,
        };
        let ring = RingBuf::try_from(map(MAP_DROP_SAMPLES)?).context("opening DROP_SAMPLES")?;
        budget.refill()?;
        Ok(Self { ring, budget })
    }

    /// Sets every CPU's budget to the rate `log` holds (`drop_samples`, which a reload may
    /// change), as [`DropSampler::run`] does every [`REFILL`].
    pub fn refill(&mut self, log: &Mutex<DropLog>) -> Result<()> {
        self.budget.refill_to(log)
    }

    /// Moves every record in the ring into `log`; how many.
    pub fn drain(&mut self, log: &Mutex<DropLog>) -> usize {
        drain(&mut self.ring, log)
    }

    /// Drains the ring into `log` as records arrive and refills the budgets every
    /// [`REFILL`] to the log's rate (which a reload may change), until `shutdown`.
    pub async fn run(self, log: Arc<Mutex<DropLog>>, mut shutdown: watch::Receiver<bool>) {
        let Self { ring, mut budget } = self;
        // SAFETY: the ring owns its map's descriptor, which stays open and the same for as
        // long as the ring lives, and the `AsyncFd` owns the ring.
        let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
        let mut ring = match registered {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!(
                    "drop samples: cannot poll the ring buffer: {e}; `xlb drops` stays empty"
                );
                return;
            }
        };
        let mut tick = tokio::time::interval(REFILL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                ready = ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        drain(guard.get_inner_mut(), &log);
                        guard.clear_ready();
                    }
                    Err(e) => {
                        log::warn!("drop samples: polling the ring buffer: {e}; `xlb drops` stops");
                        return;
                    }
                },
                _ = tick.tick() => match budget.refill_to(&log) {
                    Ok(()) if failing => {
                        log::info!("drop samples: budgets written again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        log::warn!("drop samples: {e:#}; no samples until it works");
                        failing = true;
                    }
                    Err(_) => {}
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, log: &Mutex<DropLog>) -> usize {
    let clock = Clock::now();
    let Ok(mut log) = log.lock() else {
        return 0;
    };
    let mut n = 0;
    while let Some(record) = ring.next() {
        if let Some(s) = decode(&record) {
            log.push(&s, clock.unix_ns(s.time_ns));
            n += 1;
        }
    }
    n
}

/// `CLOCK_MONOTONIC` (the program's clock) and the wall clock read together, to turn one
/// into the other.
struct Clock {
    monotonic_ns: u64,
    unix_ns: u64,
}

impl Clock {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the clock id is one the kernel knows.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            monotonic_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            unix_ns,
        }
    }

    /// The wall-clock time of monotonic instant `ns` (in the past).
    fn unix_ns(&self, ns: u64) -> u64 {
        self.unix_ns
            .saturating_sub(self.monotonic_ns.saturating_sub(ns))
    }
}

/// The header of a pcap file (nanosecond timestamps, Ethernet) for [`pcap_record`]s, for
/// Wireshark or tcpdump.
pub fn pcap_header() -> Vec<u8> {
    // The nanosecond format's magic, version 2.4, time zone and accuracy 0, snap length,
    // link type 1 (Ethernet).
    let mut out = 0xa1b2_3c4d_u32.to_le_bytes().to_vec();
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, DROP_CAPTURE as u32, 1] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// A sample as a pcap record: the captured bytes, with the frame's whole length as the
/// original length.
pub fn pcap_record(s: &Sample) -> Vec<u8> {
    let frame = s.frame();
    let secs = (s.time_unix_ns / 1_000_000_000) as u32;
    let nanos = (s.time_unix_ns % 1_000_000_000) as u32;
    let mut out = Vec::with_capacity(16 + frame.len());
    for word in [
        secs,
        nanos,
        frame.len() as u32,
        s.frame_len.max(frame.len() as u32),
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&frame);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame (optionally VLAN-tagged) around `ip` of `ethertype`.
    fn frame(vlan: Option<u16>, ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(id) = vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// An IPv4 header (IHL 5 unless `ihl` says otherwise) and `l4`.
    fn ipv4(proto: u8, frag: u16, ihl: u8, l4: &[u8]) -> Vec<u8> {
        let mut h = vec![0x40 | ihl, 0, 0, 0, 0, 0];
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0, 198, 18, 0, 10, 198, 18, 1, 1]);
        h.extend_from_slice(l4);
        h
    }

    /// An IPv6 header whose next header is `next`, then `rest`.
    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, next, 64];
        h.extend_from_slice(&"fd00::10".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&"fd00::1:1".parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(rest);
        h
    }

    /// A TCP header from 40000 to 80 with `flags`.
    fn tcp(flags: u8) -> Vec<u8> {
        let mut t = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags];
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn headers_read_as_far_as_the_frame_goes() {
        let v4_flow = Headers {
            src: ip("198.18.0.10"),
            dst: ip("198.18.1.1"),
            protocol: Some(IPPROTO_TCP),
            sport: Some(40000),
            dport: Some(80),
            tcp_flags: Some(0x02),
            ..Headers::default()
        };
        let v4_addrs = Headers {
            sport: None,
            dport: None,
            tcp_flags: None,
            ..v4_flow.clone()
        };
        let v6_flow = Headers {
            src: ip("fd00::10"),
            dst: ip("fd00::1:1"),
            ..v4_flow.clone()
        };
        let syn4 = frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 5, &tcp(0x02)));
        // Hop-by-hop options (8 bytes) before TCP.
        let mut hbh = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend_from_slice(&tcp(0x02));
        let cases: Vec<(&str, Vec<u8>, Headers)> = vec![
            ("ipv4 tcp syn", syn4.clone(), v4_flow.clone()),
            (
                "vlan-tagged",
                frame(Some(7), ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 5, &tcp(0x02))),
                Headers {
                    vlan: Some(7),
                    ..v4_flow.clone()
                },
            ),
            (
                "bad IHL: addresses, no ports",
                frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 3, &tcp(0x02))),
                v4_addrs.clone(),
            ),
            (
                "a later fragment has no ports",
                frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 185, 5, &tcp(0x02))),
                Headers {
                    fragment: true,
                    ..v4_addrs.clone()
                },
            ),
            (
                "the first fragment has them",
                frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0x2000, 5, &tcp(0x02))),
                Headers {
                    fragment: true,
                    ..v4_flow.clone()
                },
            ),
            (
                "cut in the TCP ports",
                syn4[..14 + 20 + 3].to_vec(),
                Headers {
                    tcp_flags: None,
                    ..v4_addrs.clone()
                },
            ),
            (
                "cut in the IPv4 header",
                syn4[..14 + 19].to_vec(),
                Headers::default(),
            ),
            (
                "icmp",
                frame(None, ETH_P_IP, &ipv4(IPPROTO_ICMP, 0, 5, &[3, 4, 0, 0])),
                Headers {
                    protocol: Some(IPPROTO_ICMP),
                    icmp_type: Some(3),
                    icmp_code: Some(4),
                    ..v4_addrs.clone()
                },
            ),
            (
                "ipv6 tcp",
                frame(None, ETH_P_IPV6, &ipv6(IPPROTO_TCP, &tcp(0x02))),
                v6_flow.clone(),
            ),
            (
                "ipv6 after hop-by-hop options",
                frame(None, ETH_P_IPV6, &ipv6(IPPROTO_HOPOPTS, &hbh)),
                v6_flow.clone(),
            ),
            (
                "ipv6 extension header cut off",
                frame(None, ETH_P_IPV6, &ipv6(IPPROTO_HOPOPTS, &hbh[..5])),
                Headers {
                    protocol: None,
                    sport: None,
                    dport: None,
                    tcp_flags: None,
                    ..v6_flow.clone()
                },
            ),
            ("arp", frame(None, 0x0806, &[0; 28]), Headers::default()),
            ("runt", vec![0; 10], Headers::default()),
        ];
        for (name, f, want) in cases {
            assert_eq!(Headers::read(&f), want, "{name}");
        }
    }

    /// Whatever bytes a dropped frame holds (it was dropped for being malformed, often),
    /// reading it neither panics nor reports ports without the addresses and protocol
    /// they belong to.
    #[test]
    fn headers_read_any_bytes() {
        let mut hbh = vec![IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend_from_slice(&tcp(0x02));
        let seeds = [
            frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 5, &tcp(0x02))),
            frame(Some(7), ETH_P_IP, &ipv4(IPPROTO_UDP, 0, 6, &[0; 12])),
            frame(None, ETH_P_IPV6, &ipv6(IPPROTO_HOPOPTS, &hbh)),
            frame(
                None,
                ETH_P_IPV6,
                &ipv6(IPPROTO_FRAGMENT, &[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1]),
            ),
        ];
        // xorshift64: reproducible, no dependency.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..50_000 {
            let mut f = seeds[i % seeds.len()].clone();
            for _ in 0..next() % 4 {
                let at = (next() % f.len() as u64) as usize;
                f[at] = next() as u8;
            }
            f.truncate((next() % (f.len() as u64 + 1)) as usize);
            let h = Headers::read(&f);
            if h.sport.is_some() || h.tcp_flags.is_some() || h.icmp_type.is_some() {
                assert!(
                    h.src.is_some() && h.dst.is_some() && h.protocol.is_some(),
                    "{f:02x?}: {h:?}"
                );
            }
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff").unwrap(), bytes);
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    fn record(reason: Drop, frame: &[u8]) -> DropSample {
        let mut s = DropSample {
            time_ns: 5,
            reason: reason.slot(),
            ifindex: 3,
            frame_len: frame.len() as u32,
            captured: frame.len().min(DROP_CAPTURE) as u32,
            frame: [0xee; DROP_CAPTURE],
        };
        let n = s.captured as usize;
        s.frame[..n].copy_from_slice(&frame[..n]);
        s
    }

    #[test]
    fn decode_takes_whole_records_only() {
        let s = record(Drop::NoBackend, &[1, 2, 3]);
        // SAFETY: a plain-integer repr(C) struct, viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&s as *const DropSample).cast::<u8>(),
                std::mem::size_of::<DropSample>(),
            )
        };
        assert_eq!(decode(bytes), Some(s));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        let mut lying = s;
        lying.captured = DROP_CAPTURE as u32 + 1;
        // SAFETY: as above.
        let lying = unsafe {
            std::slice::from_raw_parts(
                (&lying as *const DropSample).cast::<u8>(),
                std::mem::size_of::<DropSample>(),
            )
        };
        assert_eq!(decode(lying), None);
    }

    #[test]
    fn the_log_keeps_the_last_samples_and_answers_from_a_sequence_number() {
        let syn = frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 5, &tcp(0x02)));
        let mut log = DropLog::new(100);
        let all = |log: &DropLog, since, reason, limit| {
            log.query(&Query {
                reason,
                since,
                limit,
                ..Query::default()
            })
        };
        assert_eq!(all(&log, None, None, 20).samples, vec![]);
        for i in 0..LOG_CAPACITY as u64 + 5 {
            let reason = if i % 2 == 0 {
                Drop::NoBackend
            } else {
                Drop::SourceDenied
            };
            log.push(&record(reason, &syn), 1_000 + i);
        }
        let a = all(&log, None, None, 3);
        let seqs: Vec<u64> = a.samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1002, 1003, 1004], "the newest, oldest first");
        assert_eq!((a.next, a.missed, a.truncated), (1005, 0, 997));
        assert_eq!(a.per_second, 100);
        let s = &a.samples[2];
        assert_eq!(
            (s.reason.as_str(), s.time_unix_ns, s.ifindex, s.frame_len),
            ("no_backend", 2_004, 3, syn.len() as u32)
        );
        assert_eq!(s.frame(), syn);
        assert_eq!(s.headers.dport, Some(80));

        // From a sequence number: what came since, and what the log lost of it.
        let a = all(&log, Some(1003), None, 1000);
        assert_eq!(a.samples.len(), 2);
        assert_eq!((a.missed, a.truncated), (0, 0));
        let a = all(&log, Some(0), None, 1000);
        assert_eq!(a.samples.len(), LOG_CAPACITY);
        assert_eq!(a.missed, 5, "seq 0..5 were forgotten");
        let a = all(&log, Some(1005), None, 1000);
        assert!(a.samples.is_empty() && a.missed == 0);

        // By reason.
        let a = all(&log, None, Some(Drop::SourceDenied), 1000);
        assert_eq!(a.samples.len(), LOG_CAPACITY / 2);
        assert!(a.samples.iter().all(|s| s.reason == "source_denied"));

        // By service and client (every sample is 198.18.0.10:40000 > 198.18.1.1:80/tcp).
        let count = |vip: Option<&str>, client: Option<&str>| {
            log.query(&Query {
                vip: vip.map(|v| v.parse().unwrap()),
                client: client.map(|c| c.parse().unwrap()),
                limit: LOG_CAPACITY,
                ..Query::default()
            })
            .samples
            .len()
        };
        for (vip, client, n) in [
            (Some("198.18.1.1:80/tcp"), None, LOG_CAPACITY),
            (Some("198.18.1.1:*/tcp"), None, LOG_CAPACITY),
            (Some("198.18.1.1:81/tcp"), None, 0),
            (Some("198.18.1.1:80/udp"), None, 0),
            (Some("198.18.1.2:*/tcp"), None, 0),
            (None, Some("198.18.0.0/24"), LOG_CAPACITY),
            (None, Some("198.18.0.10"), LOG_CAPACITY),
            (None, Some("198.18.0.11"), 0),
            (None, Some("fd00::/8"), 0),
            (Some("198.18.1.1:80/tcp"), Some("198.18.0.0/31"), 0),
        ] {
            assert_eq!(count(vip, client), n, "{vip:?} {client:?}");
        }
    }

    #[test]
    fn limits_and_reasons_are_checked() {
        assert_eq!(check_limit(None), Ok(DEFAULT_LIMIT as usize));
        assert_eq!(check_limit(Some(1000)), Ok(1000));
        assert!(check_limit(Some(0)).unwrap_err().contains("1..=1000"));
        assert!(check_limit(Some(1001)).is_err());
        assert_eq!(check_reason("no_backend"), Ok(Drop::NoBackend));
        let e = check_reason("not_ip").unwrap_err();
        assert!(
            e.contains("no drop reason") && e.contains("source_denied"),
            "{e}"
        );
    }

    #[test]
    fn pcap_bytes() {
        let syn = frame(None, ETH_P_IP, &ipv4(IPPROTO_TCP, 0, 5, &tcp(0x02)));
        let mut log = DropLog::new(1);
        let mut long = syn.clone();
        long.resize(1500, 0);
        log.push(&record(Drop::NoBackend, &long), 1_795_951_259_000_000_042);
        let s = &log
            .query(&Query {
                limit: 1,
                ..Query::default()
            })
            .samples[0];
        let h = pcap_header();
        assert_eq!(h.len(), 24);
        assert_eq!(
            &h[..4],
            &[0x4d, 0x3c, 0xb2, 0xa1],
            "nanosecond magic, little-endian"
        );
        assert_eq!(
            u32::from_le_bytes(h[20..24].try_into().unwrap()),
            1,
            "Ethernet"
        );
        let r = pcap_record(s);
        let word = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        assert_eq!((word(0), word(4)), (1_795_951_259, 42));
        assert_eq!((word(8), word(12)), (DROP_CAPTURE as u32, 1500));
        assert_eq!(&r[16..], &long[..DROP_CAPTURE]);
    }
}
