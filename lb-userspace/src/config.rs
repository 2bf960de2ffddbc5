//! The configuration file and the VIP / backend definitions the control socket accepts.
//!
//! JSON, every object `deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting. Parsing reports the path of the bad field (`vips[0].backends[1].weight`);
//! [`Config::validate`] checks what types cannot (ranges, duplicates, primes) and names the
//! field too. Nothing is applied until the whole file is valid. Reference with examples:
//! `docs/config.md`.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::maglev::is_prime;
use serde::{Deserialize, Serialize};

use crate::health::{CheckKind, HealthCheckConfig};

/// New flows each CPU records per second unless the config says otherwise: far above what
/// one CPU's clients open (a new flow costs about 1 µs here, so a CPU that only recorded
/// flows would manage about 10 times this), far below a flood at line rate.
pub const DEFAULT_RECORD_RATE_LIMIT: u32 = 100_000;

/// ICMP errors each CPU sends per second unless the config says otherwise. Linux does not
/// limit these errors at all (path MTU discovery must not be hindered); RFC 4443 requires a
/// limit. Ten times Linux's host-wide budget for the errors it does limit
/// (`net.ipv4.icmp_msgs_per_sec`), per CPU: hundreds of clients a second starting uploads,
/// each earning a few dozen answers for the segments it has in flight; a flood's answers
/// stay below 10 000 × 100 bytes a second per CPU.
pub const DEFAULT_ICMP_RATE_LIMIT: u32 = 10_000;

/// Dropped packets each CPU samples per second for `xlb drops` unless the config says
/// otherwise: enough to see every kind of drop a misconfiguration causes, at a cost no
/// flood notices (beyond it, a drop costs a per-CPU lookup more).
pub const DEFAULT_DROP_SAMPLES: u32 = 100;
/// Most `drop_samples` may ask for: the ring holds about 7000 samples, drained as they
/// come, and the daemon keeps the last 1000.
pub const MAX_DROP_SAMPLES: u32 = 10_000;

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Backends one VIP may have (Maglev wants the table ≥ 100 × backends for balance).
pub const MAX_BACKENDS_PER_VIP: usize = 1000;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Outer source addresses of tunnels; default: the first address of the interface.
    #[serde(default)]
    pub outer_source: OuterSource,
    /// Prefixes for flow-hash derived outer sources (VIPs with `"source": "flow_hash"`).
    #[serde(default)]
    pub hashed_source: HashedSource,
    /// Largest IP packet the link towards backends carries; default: the interface MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Answer packets that would exceed the MTU once encapsulated with ICMP
    /// frag-needed / packet-too-big (default true); false drops them (counted).
    #[serde(default = "yes")]
    pub icmp_too_big: bool,
    /// Answer ICMP / ICMPv6 echo requests to VIP addresses (default true): a VIP answers
    /// ping while the balancer forwards to it. False leaves them to the host's stack,
    /// which does not have the VIPs.
    #[serde(default = "yes")]
    pub icmp_echo: bool,
    /// New flows each CPU records per second (default [`DEFAULT_RECORD_RATE_LIMIT`]; 0: no
    /// limit). Beyond it, hash-scheduled VIPs' new flows are forwarded by their hash
    /// without a connection-table entry, so that a flood cannot evict established flows
    /// (`lb_common::rate_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_rate_limit: Option<u32>,
    /// ICMP errors (frag-needed, packet-too-big) each CPU sends per second (default
    /// [`DEFAULT_ICMP_RATE_LIMIT`]; 0: no limit). Beyond it, oversized packets are dropped
    /// unanswered (`too_big_rate_limited`; `lb_common::rate_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_rate_limit: Option<u32>,
    /// Dropped packets each CPU samples per second for `xlb drops` (default
    /// [`DEFAULT_DROP_SAMPLES`], at most [`MAX_DROP_SAMPLES`]; 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_samples: Option<u32>,
    /// Destination port of GUE tunnels (VIPs with `"encap": "gue"`; default
    /// [`DEFAULT_GUE_PORT`]). The backends' `xlb decap --gue-port` must name the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gue_port: Option<u16>,
    /// The services.
    #[serde(default)]
    pub vips: Vec<VipConfig>,
}

fn yes() -> bool {
    true
}

/// What an empty file (`{}`) says: `xlb run` without `--config` runs with it, so it must
/// not differ from the file's defaults (a derived `Default` would turn `icmp_too_big` off).
impl Default for Config {
    fn default() -> Self {
        Self {
            outer_source: OuterSource::default(),
            hashed_source: HashedSource::default(),
            mtu: None,
            icmp_too_big: yes(),
            icmp_echo: yes(),
            record_rate_limit: None,
            icmp_rate_limit: None,
            drop_samples: None,
            gue_port: None,
            vips: Vec::new(),
        }
    }
}

/// The GUE port when the file names none: the port Linux's `fou`/`gue` receivers are most
/// often given in examples, and unassigned by IANA.
pub const DEFAULT_GUE_PORT: u16 = 6080;

impl Config {
    /// The GUE port in force (`gue_port` or [`DEFAULT_GUE_PORT`]).
    pub fn gue_port(&self) -> u16 {
        self.gue_port.unwrap_or(DEFAULT_GUE_PORT)
    }

    /// The record rate limit in force (`record_rate_limit` or its default).
    pub fn record_rate_limit(&self) -> u32 {
        self.record_rate_limit.unwrap_or(DEFAULT_RECORD_RATE_LIMIT)
    }

    /// The ICMP rate limit in force (`icmp_rate_limit` or its default).
    pub fn icmp_rate_limit(&self) -> u32 {
        self.icmp_rate_limit.unwrap_or(DEFAULT_ICMP_RATE_LIMIT)
    }

    /// Drop samples per CPU and second in force (`drop_samples` or its default).
    pub fn drop_samples(&self) -> u32 {
        self.drop_samples.unwrap_or(DEFAULT_DROP_SAMPLES)
    }
}

/// Outer source addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterSource {
    /// Source of IPv4 tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Ipv4Addr>,
    /// Source of IPv6 tunnels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Addr>,
}

/// Prefixes for flow-hash derived sources, as `"198.19.0.0/16"` / `"fd00:ff::/96"`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashedSource {
    /// IPv4 prefix (length 8..=30): the flow hash fills the host bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<String>,
    /// IPv6 prefix (length ≤ 96): the flow hash fills the last 32 bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<String>,
}

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// How a VIP picks a backend for a new flow (recorded flows always keep theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Consistent hash of the 5-tuple over a weighted Maglev table.
    #[default]
    Maglev,
    /// Consistent hash of the client address only: a client sticks to one backend.
    Sh,
    /// Round robin over new flows, weights ignored.
    Rr,
    /// Smooth weighted round robin over new flows.
    Wrr,
    /// Least connections (fewest active flows), weights ignored.
    Lc,
    /// Weighted least connections (fewest active flows per unit of weight).
    Wlc,
    /// Least response time: weights scaled by health-check latency and active flows.
    Lrt,
    /// Weights and states reported by an agent on each backend (HAProxy agent-check format).
    Agent,
}

impl Scheduler {
    /// Every scheduler, for messages.
    pub const NAMES: &'static str = "maglev, sh, rr, wrr, lc, wlc, lrt, agent";

    /// The name, as in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Maglev => "maglev",
            Self::Sh => "sh",
            Self::Rr => "rr",
            Self::Wrr => "wrr",
            Self::Lc => "lc",
            Self::Wlc => "wlc",
            Self::Lrt => "lrt",
            Self::Agent => "agent",
        }
    }

    /// Whether new flows follow the backends' weights (`rr` and `lc` treat them all alike).
    pub fn uses_weights(self) -> bool {
        !matches!(self, Self::Rr | Self::Lc)
    }
}

/// Where a VIP's backends run their agent (`scheduler: agent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// TCP port of the agent on each backend.
    pub port: u16,
    /// Milliseconds between agent polls (100..=60000, default 1000).
    #[serde(default = "default_agent_interval")]
    pub interval_ms: u64,
}

fn default_agent_interval() -> u64 {
    1000
}

/// Tunnel type; the outer family follows the backend's address (IPIP, IP6IP6, 4in6, 6in4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// IP-in-IP.
    #[default]
    Ipip,
    /// The same with a UDP header between the outer and the client's packet (GUE's variant
    /// 1, direct IP; `gue_port`), its source port from the flow hash: backends' NICs spread
    /// such tunnels over their receive queues (RSS), which IP-in-IP, without ports, does
    /// not. 8 bytes more per packet.
    Gue,
}

/// Outer source address choice of a VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// The balancer's own address.
    #[default]
    Lb,
    /// Derived from the flow hash within `hashed_source`, so routers can spread tunnels.
    FlowHash,
}

/// A service: address, port, protocol, and its backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Free-form label for people and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The virtual address clients connect to.
    pub address: IpAddr,
    /// The port (1..=65535), or 0: every port the address has no VIP of its own on.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// `maglev` (default) or `sh`.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Maglev table size: a prime, 3..=65537 (default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Tunnel type (`ipip`).
    #[serde(default)]
    pub encap: Encap,
    /// Outer source: `lb` (default) or `flow_hash`.
    #[serde(default)]
    pub source: SourceMode,
    /// Health check for every backend of this VIP (default: TCP connect to the VIP port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// The backends' agent (required with `scheduler: agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    /// Seconds without a packet after which a flow stops counting as active for the
    /// least-connection schedulers (`lc`, `wlc`, `lrt`); default 900 for TCP, 300 for UDP
    /// (IPVS's). Raise it for services whose clients hold idle connections longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    /// Slow start: seconds over which a backend coming into service (up again, added,
    /// undrained) grows from 1 % of its weight to all of it (`crate::slow_start`). Needs a
    /// scheduler that follows weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_s: Option<u32>,
    /// The client prefixes whose new flows the VIP admits (empty: every client). The XDP
    /// program runs before the host's firewall, so this is where a VIP is restricted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_sources: Vec<SourcePrefix>,
    /// Record no flow: every packet goes to the backend its hash picks (`maglev`, `sh`;
    /// Katran's LRU bypass, IPVS's one-packet scheduling). For request/response services
    /// whose every query is a new flow (DNS over UDP): their flows then cost no insert and
    /// take no room in the connection table. Flows move whenever the lookup table does
    /// (a backend added, removed, down, drained or reweighted). Set when the VIP is added.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stateless: bool,
    /// QUIC server-ID routing (UDP VIPs): a QUIC packet of a flow the connection table does
    /// not know goes to the backend whose `quic_server_id` its connection ID carries
    /// (`lb_common::quic`, QUIC-LB's plaintext connection IDs), so that a connection whose
    /// client moves or is rebound by a NAT stays on its server. Set when the VIP is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicConfig>,
    /// New flows each CPU admits to this VIP per second (as `record_rate_limit`, per CPU);
    /// beyond, they are dropped (`vip_flow_limit`) and their clients retry, so that a
    /// connection storm reaches the backends at a rate they can take. Recorded flows, and
    /// QUIC connections' new paths, are never limited; a `stateless` VIP's every packet is
    /// a new flow. `None`: no limit. Changes in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_flow_rate_limit: Option<u32>,
    /// New flows admitted to this VIP per second from one client, all CPUs together (an IPv4 address,
    /// an IPv6 /64); beyond, they are dropped (`client_flow_limit`) and the client retries,
    /// so that one client (a runaway retry loop, one attacker) cannot take the VIP's limit
    /// or its backends from everybody else. Counted before `new_flow_rate_limit`. Recorded
    /// flows and QUIC connections' new paths are never limited. `None`: no limit. Changes
    /// in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_flow_rate_limit: Option<u32>,
    /// The real servers.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

/// A real server behind a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Tunnel destination.
    pub address: IpAddr,
    /// Relative weight, 0..=10000 (default 1); 0 takes no new flows.
    #[serde(default = "one")]
    pub weight: u32,
    /// Start drained: no new flows, existing ones stay.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drained: bool,
    /// A backup: takes new flows only while none of the VIP's other backends can (all
    /// down, drained or of weight 0), as HAProxy's `backup` servers and keepalived's
    /// sorry server.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backup: bool,
    /// Most active flows the backend takes (HAProxy's `maxconn`, IPVS's upper threshold):
    /// at that many, a least-connection VIP (`lc`, `wlc`) gives it no new ones. `None`: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u32>,
    /// The server ID this backend writes into the QUIC connection IDs it issues (VIPs
    /// with `quic`; unique among the VIP's backends, at most `server_id_bytes` octets).
    /// `None`: its connections' packets are placed by their 5-tuple alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_server_id: Option<u32>,
}

/// A VIP's QUIC-LB configuration: where its backends put their server ID in the connection
/// IDs they issue (`lb_common::quic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Octets of server ID after the connection ID's first octet, 1..=4 (default 2).
    #[serde(default = "default_quic_id_bytes")]
    pub server_id_bytes: u32,
    /// The configuration codepoint in the first octet's top three bits, 0..=6 (default 0):
    /// connection IDs of another one go by their 5-tuple.
    #[serde(default)]
    pub config_id: u32,
}

fn default_quic_id_bytes() -> u32 {
    2
}

impl QuicConfig {
    /// What the data plane reads (`VipInfo::flags`).
    pub fn to_flags(self) -> lb_common::quic::VipQuic {
        lb_common::quic::VipQuic {
            id_bytes: self.server_id_bytes,
            config_id: self.config_id,
        }
    }
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Identity of a VIP: what a client connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipId {
    /// Address.
    pub address: IpAddr,
    /// Port; 0: every port (an all-ports VIP, written `*`).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl VipId {
    /// Whether this VIP serves every port of its address (port 0, written `*`).
    pub fn all_ports(&self) -> bool {
        self.port == 0
    }

    /// The all-ports VIP of this one's address and protocol.
    pub fn on_all_ports(&self) -> VipId {
        VipId { port: 0, ..*self }
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.all_ports() {
            "*".to_string()
        } else {
            self.port.to_string()
        };
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.protocol),
        }
    }
}

impl std::str::FromStr for VipId {
    type Err = String;

    /// Parses `198.18.1.1:80/tcp` or `[fd00::1]:80/udp` (protocol defaults to tcp); `*` as
    /// the port names an all-ports VIP (`198.18.1.1:*/tcp`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_port, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, p),
            None => (s, "tcp"),
        };
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(format!(
                    "unknown protocol {other:?} in {s:?}: use tcp or udp"
                ))
            }
        };
        let bad = || {
            format!(
                "{s:?} is not ADDRESS:PORT[/PROTO], e.g. 198.18.1.1:80/tcp, [fd00::1]:80/tcp \
                 or 198.18.1.1:*/tcp (every port)"
            )
        };
        let (address, port) = match addr_port.strip_suffix(":*") {
            Some(addr) => {
                let addr = addr
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(addr);
                (addr.parse::<IpAddr>().map_err(|_| bad())?, 0)
            }
            None => {
                let sa: std::net::SocketAddr = addr_port.parse().map_err(|_| bad())?;
                if sa.port() == 0 {
                    return Err(format!(
                        "port 0 in {s:?}: ports are 1..=65535, or * for every port"
                    ));
                }
                (sa.ip(), sa.port())
            }
        };
        Ok(Self {
            address,
            port,
            protocol,
        })
    }
}

impl Serialize for VipId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl VipConfig {
    /// This VIP's identity.
    pub fn id(&self) -> VipId {
        VipId {
            address: self.address,
            port: self.port,
            protocol: self.protocol,
        }
    }

    /// Seconds after which an idle flow of this VIP stops counting as active: the
    /// configured `idle_timeout_s`, or the protocol's default.
    pub fn idle_timeout(&self) -> u32 {
        self.idle_timeout_s.unwrap_or(match self.protocol {
            Protocol::Tcp => crate::conntable::IDLE_TCP_S,
            Protocol::Udp => crate::conntable::IDLE_UDP_S,
        })
    }
}

/// A configuration or request that cannot be used, with the path of the bad field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Where: `vips[0].backends[1].weight`, or `-` for the whole document.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl ConfigError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON into `T`, naming the path of the first bad field.
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error says "." for the root and "?" where it could not track a path
        // (syntax errors); both mean "the document itself".
        let field = if path == "." || path == "?" {
            "-".to_string()
        } else {
            path
        };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

impl Config {
    /// Parses and validates a configuration file's text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = parse_json(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gue_port == Some(0) {
            return Err(ConfigError::new("gue_port", "port 0: use 1..=65535"));
        }
        if let Some(mtu) = self.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(ConfigError::new(
                    "mtu",
                    format!("{mtu} is outside 576..=65535"),
                ));
            }
        }
        if self.drop_samples() > MAX_DROP_SAMPLES {
            return Err(ConfigError::new(
                "drop_samples",
                format!(
                    "{} is above {MAX_DROP_SAMPLES} a second per CPU (the daemon keeps the \
                     last 1000 samples)",
                    self.drop_samples()
                ),
            ));
        }
        if let Some(p) = &self.hashed_source.v4 {
            parse_v4_prefix(p).map_err(|m| ConfigError::new("hashed_source.v4", m))?;
        }
        if let Some(p) = &self.hashed_source.v6 {
            parse_v6_prefix(p).map_err(|m| ConfigError::new("hashed_source.v6", m))?;
        }
        let mut seen = BTreeSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            let at = format!("vips[{i}]");
            vip.validate(&at)?;
            if !seen.insert(vip.id()) {
                return Err(ConfigError::new(at, format!("duplicate VIP {}", vip.id())));
            }
            if vip.source == SourceMode::FlowHash {
                let needs_v4 = vip.backends.iter().any(|b| b.address.is_ipv4());
                let needs_v6 = vip.backends.iter().any(|b| b.address.is_ipv6());
                if (needs_v4 && self.hashed_source.v4.is_none())
                    || (needs_v6 && self.hashed_source.v6.is_none())
                {
                    return Err(ConfigError::new(
                        format!("{at}.source"),
                        "flow_hash needs hashed_source.v4 / hashed_source.v6 for its backends' families",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl VipConfig {
    /// Checks one VIP; `at` prefixes field paths in errors.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        // Port 0: every port (the VIP on a packet's own port comes first).
        check_health_port(self.port, self.health_check.as_ref())
            .map_err(|m| ConfigError::new(format!("{at}.health_check"), m))?;
        check_unicast(&self.address).map_err(|m| ConfigError::new(format!("{at}.address"), m))?;
        if let Some(m) = self.table_size {
            if !(3..=lb_common::maps::MAX_TABLE_SIZE).contains(&m) || !is_prime(m) {
                return Err(ConfigError::new(
                    format!("{at}.table_size"),
                    format!("{m} is not a prime in 3..=65537 (Maglev needs a prime table size)"),
                ));
            }
        }
        if let Some(name) = &self.name {
            if name.len() > 64 || name.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    "names are at most 64 printable characters",
                ));
            }
        }
        match (&self.agent, self.scheduler) {
            (None, Scheduler::Agent) => {
                return Err(ConfigError::new(
                    format!("{at}.agent"),
                    "scheduler agent needs \"agent\": {\"port\": …}",
                ));
            }
            (Some(a), _) => {
                if a.port == 0 {
                    return Err(ConfigError::new(
                        format!("{at}.agent.port"),
                        "port 0: use 1..=65535",
                    ));
                }
                if !(100..=60_000).contains(&a.interval_ms) {
                    return Err(ConfigError::new(
                        format!("{at}.agent.interval_ms"),
                        format!("{} is outside 100..=60000", a.interval_ms),
                    ));
                }
            }
            (None, _) => {}
        }
        if let Some(t) = self.idle_timeout_s {
            check_idle_timeout(t)
                .map_err(|m| ConfigError::new(format!("{at}.idle_timeout_s"), m))?;
        }
        check_slow_start(self.slow_start_s, self.scheduler)
            .map_err(|m| ConfigError::new(format!("{at}.slow_start_s"), m))?;
        check_stateless(self.stateless, self.scheduler, self.slow_start_s)
            .map_err(|m| ConfigError::new(format!("{at}.stateless"), m))?;
        check_sources(self.address, &self.allowed_sources)
            .map_err(|m| ConfigError::new(format!("{at}.allowed_sources"), m))?;
        check_quic(self.quic, self.protocol)
            .map_err(|m| ConfigError::new(format!("{at}.quic"), m))?;
        check_new_flow_rate_limit(self.new_flow_rate_limit)
            .map_err(|m| ConfigError::new(format!("{at}.new_flow_rate_limit"), m))?;
        check_new_flow_rate_limit(self.client_flow_rate_limit)
            .map_err(|m| ConfigError::new(format!("{at}.client_flow_rate_limit"), m))?;
        if let Some(hc) = &self.health_check {
            hc.validate()
                .and_then(|()| hc.check_files())
                .map_err(|e| ConfigError::new(format!("{at}.health_check"), e.to_string()))?;
        }
        if self.backends.len() > MAX_BACKENDS_PER_VIP {
            return Err(ConfigError::new(
                format!("{at}.backends"),
                format!(
                    "{} backends; at most {MAX_BACKENDS_PER_VIP} per VIP",
                    self.backends.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (j, b) in self.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            b.validate(&bat)?;
            check_max_conns(b.max_conns, self.scheduler)
                .map_err(|m| ConfigError::new(format!("{bat}.max_conns"), m))?;
            let others = self.backends[..j].iter().filter_map(|o| o.quic_server_id);
            check_quic_server_id(b.quic_server_id, self.quic, others)
                .map_err(|m| ConfigError::new(format!("{bat}.quic_server_id"), m))?;
            if !seen.insert(b.address) {
                return Err(ConfigError::new(
                    bat,
                    format!("duplicate backend {}", b.address),
                ));
            }
        }
        Ok(())
    }
}

/// An all-ports VIP (port 0) has no port of its own to check its backends on: its health
/// check (`None`: the default TCP connect) must name one, or need none (`icmp`, `none`).
pub fn check_health_port(vip_port: u16, check: Option<&HealthCheckConfig>) -> Result<(), String> {
    let kind = check.map_or(CheckKind::default(), |c| c.kind);
    let has_port = check.is_some_and(|c| c.port.is_some());
    if vip_port != 0 || has_port || matches!(kind, CheckKind::Icmp | CheckKind::None) {
        return Ok(());
    }
    Err(format!(
        "an all-ports VIP (port 0) has no port to check its backends on: give the {} check \
         a \"port\", or use kind icmp or none",
        kind.as_str()
    ))
}

/// A client prefix (`VipConfig::allowed_sources`): `198.18.0.0/15`, `fd00::/8`, or a bare
/// address (all its bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourcePrefix {
    /// The network address (no host bits set).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

impl std::str::FromStr for SourcePrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address (prefixes are ADDRESS/LENGTH)"))?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let len =
            match l {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                    format!("{l:?} is not a prefix length for {addr} (0..={max})")
                })?,
            };
        let p = Self { addr, len };
        let network = p.network();
        if network != addr {
            return Err(format!(
                "{s} has host bits set: its network is {}",
                Self { addr: network, len }
            ));
        }
        Ok(p)
    }
}

impl SourcePrefix {
    /// Whether `a` is inside the prefix.
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4()
            && Self {
                addr: a,
                len: self.len,
            }
            .network()
                == self.addr
    }

    /// The address with the bits past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl TryFrom<String> for SourcePrefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SourcePrefix> for String {
    fn from(p: SourcePrefix) -> String {
        p.to_string()
    }
}

/// Prefixes a VIP may list in `allowed_sources`, at most.
pub const MAX_SOURCES_PER_VIP: usize = 1024;

/// Checks a VIP's `allowed_sources`: of the VIP's family (its clients are), no repeats,
/// at most [`MAX_SOURCES_PER_VIP`].
pub fn check_sources(vip: IpAddr, sources: &[SourcePrefix]) -> Result<(), String> {
    if sources.len() > MAX_SOURCES_PER_VIP {
        return Err(format!(
            "{} prefixes; at most {MAX_SOURCES_PER_VIP} per VIP",
            sources.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for p in sources {
        if p.addr.is_ipv4() != vip.is_ipv4() {
            return Err(format!(
                "{p} is of the other family than the VIP {vip}: its clients are {}",
                if vip.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        if !seen.insert(*p) {
            return Err(format!("{p} is listed twice"));
        }
    }
    Ok(())
}

/// The longest slow start (`VipConfig::slow_start_s`), an hour.
pub const MAX_SLOW_START_S: u32 = 3600;

/// Checks a slow start (`VipConfig::slow_start_s`) for a VIP scheduled by `scheduler`.
pub fn check_slow_start(slow_start_s: Option<u32>, scheduler: Scheduler) -> Result<(), String> {
    let Some(t) = slow_start_s else {
        return Ok(());
    };
    if !(1..=MAX_SLOW_START_S).contains(&t) {
        return Err(format!("{t} is outside 1..={MAX_SLOW_START_S} (seconds)"));
    }
    if !scheduler.uses_weights() {
        return Err(format!(
            "scheduler {} gives every backend the same share, so a slow start could not \
             lower a new backend's: use {} (its weighted form) or drop slow_start_s",
            scheduler.name(),
            if scheduler == Scheduler::Rr {
                "wrr"
            } else {
                "wlc"
            }
        ));
    }
    Ok(())
}

/// A `stateless` VIP's flows follow their hash from packet to packet: only a scheduler that
/// picks by hash alone (`maglev`, `sh`) sends them all to one backend, and a slow start
/// would move them each second it steps.
pub fn check_stateless(
    stateless: bool,
    scheduler: Scheduler,
    slow_start_s: Option<u32>,
) -> Result<(), String> {
    if !stateless {
        return Ok(());
    }
    if !matches!(scheduler, Scheduler::Maglev | Scheduler::Sh) {
        return Err(format!(
            "a stateless VIP sends each packet where its hash points, which only maglev \
             and sh do; {} picks by more than the packet",
            scheduler.name()
        ));
    }
    if slow_start_s.is_some() {
        return Err(
            "a slow start reweights the table each second, which would move a \
                    stateless VIP's flows each time: drop slow_start_s"
                .to_owned(),
        );
    }
    Ok(())
}

/// A VIP's `new_flow_rate_limit` (or `client_flow_rate_limit`) admits at least one flow a
/// second: 0 would be a VIP that takes no new client, which `drained` backends or removing
/// it (or `allowed_sources`) say better.
pub fn check_new_flow_rate_limit(limit: Option<u32>) -> Result<(), String> {
    if limit == Some(0) {
        return Err(
            "0 would admit no new flow: use 1 or more, or leave it out for no limit".to_owned(),
        );
    }
    Ok(())
}

/// `quic` needs UDP (QUIC's transport) and a layout of the connection ID the data plane
/// reads (`lb_common::quic`).
pub fn check_quic(quic: Option<QuicConfig>, protocol: Protocol) -> Result<(), String> {
    use lb_common::quic::{MAX_CONFIG_ID, MAX_ID_BYTES};
    let Some(q) = quic else {
        return Ok(());
    };
    if protocol != Protocol::Udp {
        return Err("QUIC runs over UDP: a tcp VIP has no QUIC packets to route".to_owned());
    }
    if !(1..=MAX_ID_BYTES).contains(&q.server_id_bytes) {
        return Err(format!(
            "server_id_bytes {} is outside 1..={MAX_ID_BYTES}",
            q.server_id_bytes
        ));
    }
    if q.config_id > MAX_CONFIG_ID {
        return Err(format!(
            "config_id {} is outside 0..={MAX_CONFIG_ID} (7 marks connection IDs that name no server)",
            q.config_id
        ));
    }
    Ok(())
}

/// A backend's `quic_server_id` needs its VIP's `quic`, fits its `server_id_bytes`, and
/// is none of `others` (the VIP's other backends' IDs): one ID, one server.
pub fn check_quic_server_id(
    id: Option<u32>,
    quic: Option<QuicConfig>,
    mut others: impl Iterator<Item = u32>,
) -> Result<(), String> {
    let Some(id) = id else {
        return Ok(());
    };
    let Some(q) = quic else {
        return Err(format!(
            "server ID {id} on a VIP without \"quic\": nothing would read it"
        ));
    };
    let max = lb_common::quic::max_server_id(q.server_id_bytes);
    if id > max {
        return Err(format!(
            "server ID {id} does not fit the VIP's {} octets (at most {max})",
            q.server_id_bytes
        ));
    }
    if others.any(|o| o == id) {
        return Err(format!(
            "server ID {id} is another backend's of the VIP: each server needs its own"
        ));
    }
    Ok(())
}

/// Bounds of `VipConfig::idle_timeout_s`: below a recount interval a flow between two
/// packets would drop out of the count and back; above a week it counts a vanished client
/// for longer than the connection table is likely to keep its entry.
pub const MIN_IDLE_TIMEOUT_S: u32 = 30;
/// See [`MIN_IDLE_TIMEOUT_S`].
pub const MAX_IDLE_TIMEOUT_S: u32 = 7 * 24 * 3600;

/// Checks an idle timeout in seconds (`VipConfig::idle_timeout_s`).
pub fn check_idle_timeout(t: u32) -> Result<(), String> {
    if (MIN_IDLE_TIMEOUT_S..=MAX_IDLE_TIMEOUT_S).contains(&t) {
        Ok(())
    } else {
        Err(format!(
            "{t} is outside {MIN_IDLE_TIMEOUT_S}..={MAX_IDLE_TIMEOUT_S} \
             (seconds; the daemon recounts every 30 s)"
        ))
    }
}

impl BackendConfig {
    /// Checks one backend.
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_unicast(&self.address).map_err(|m| ConfigError::new(format!("{at}.address"), m))?;
        check_weight(self.weight).map_err(|m| ConfigError::new(format!("{at}.weight"), m))?;
        if self.max_conns == Some(0) {
            return Err(ConfigError::new(
                format!("{at}.max_conns"),
                "0 would take no flow: use 1 or more, \"drained\": true, or leave it out for no limit",
            ));
        }
        Ok(())
    }
}

/// A backend's `max_conns` needs a scheduler that picks by each backend's active flows:
/// the others pick by hash or in turn, and never compare a count with the limit.
pub fn check_max_conns(max_conns: Option<u32>, scheduler: Scheduler) -> Result<(), String> {
    match max_conns {
        Some(n) if !crate::sched::picks_by_count(scheduler) => Err(format!(
            "max_conns {n} needs a scheduler that picks by each backend's active flows (lc, \
             wlc); {} does not",
            scheduler.name()
        )),
        _ => Ok(()),
    }
}

/// A weight is 0..=MAX_WEIGHT.
pub fn check_weight(w: u32) -> Result<(), String> {
    if w > MAX_WEIGHT {
        return Err(format!("{w} is outside 0..={MAX_WEIGHT}"));
    }
    Ok(())
}

/// Refuses addresses that can never be a VIP or a backend.
pub fn check_unicast(a: &IpAddr) -> Result<(), String> {
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
        return Err(format!("{a} is not a unicast address"));
    }
    if let IpAddr::V4(v4) = a {
        if v4.is_broadcast() {
            return Err(format!("{a} is the broadcast address"));
        }
    }
    Ok(())
}

/// Parses `a.b.c.d/len` (len 8..=30) into (network word, host mask in host order).
pub fn parse_v4_prefix(s: &str) -> Result<(Ipv4Addr, u32), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let len: u32 = l
        .parse()
        .map_err(|_| format!("{l:?} is not a prefix length"))?;
    if !(8..=30).contains(&len) {
        return Err(format!("prefix length {len} is outside 8..=30"));
    }
    let hostmask = u32::MAX >> len;
    if u32::from(addr) & hostmask != 0 {
        return Err(format!("{s} has host bits set"));
    }
    Ok((addr, hostmask))
}

/// Parses `addr/len` (len ≤ 96): the last 32 bits must be free for the hash.
pub fn parse_v6_prefix(s: &str) -> Result<Ipv6Addr, String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
    let addr: Ipv6Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv6 address"))?;
    let len: u32 = l
        .parse()
        .map_err(|_| format!("{l:?} is not a prefix length"))?;
    if !(8..=96).contains(&len) {
        return Err(format!("prefix length {len} is outside 8..=96"));
    }
    let bits = u128::from(addr);
    if len < 128 && bits & (u128::MAX >> len) != 0 {
        return Err(format!("{s} has host bits set"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "outer_source": {"v4": "198.18.0.2"},
        "vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                  "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12", "weight": 3}]}]
    }"#;

    #[track_caller]
    fn err(text: &str) -> ConfigError {
        match Config::from_json(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    fn with_vip(vip: &str) -> String {
        format!(r#"{{"vips": [{vip}]}}"#)
    }

    #[test]
    fn scheduler_names_are_the_config_files() {
        for name in Scheduler::NAMES.split(", ") {
            let s: Scheduler = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(s.name(), name);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(name));
        }
    }

    /// `xlb run` without `--config` runs with `Config::default()`: the same as an empty
    /// file, ICMP too-big answers on.
    #[test]
    fn the_default_config_is_an_empty_files() {
        let empty = Config::from_json("{}").unwrap();
        assert_eq!(Config::default(), empty);
        assert!(Config::default().icmp_too_big);
        assert!(Config::default().icmp_echo);
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_json(GOOD).unwrap();
        assert!(c.icmp_too_big);
        assert!(c.icmp_echo);
        assert_eq!(c.record_rate_limit(), DEFAULT_RECORD_RATE_LIMIT);
        assert_eq!(c.icmp_rate_limit(), DEFAULT_ICMP_RATE_LIMIT);
        assert_eq!(c.drop_samples(), DEFAULT_DROP_SAMPLES);
        assert_eq!(c.vips[0].scheduler, Scheduler::Maglev);
        assert_eq!(c.vips[0].backends[0].weight, 1);
        assert_eq!(c.vips[0].backends[1].weight, 3);
        assert_eq!(c.vips[0].id().to_string(), "198.18.1.1:80/tcp");
        assert_eq!(c.vips[0].idle_timeout(), crate::conntable::IDLE_TCP_S);
        let udp = Config::from_json(&with_vip(
            r#"{"address": "198.18.1.1", "port": 53, "protocol": "udp"}"#,
        ))
        .unwrap();
        assert_eq!(udp.vips[0].idle_timeout(), crate::conntable::IDLE_UDP_S);
        let set = Config::from_json(&with_vip(
            r#"{"address": "198.18.1.1", "port": 53, "protocol": "udp", "idle_timeout_s": 30}"#,
        ))
        .unwrap();
        assert_eq!(set.vips[0].idle_timeout(), 30);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"vips": [], "bogus": 1}"#,
                "bogus",
                "unknown field `bogus`",
            ),
            (
                r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "colour": 1}]}"#,
                "vips[0].colour",
                "unknown field",
            ),
            (
                &with_vip(r#"{"address": "198.18.1", "port": 80, "protocol": "tcp"}"#),
                "vips[0].address",
                "invalid",
            ),
            (
                &with_vip(r#"{"address": "198.18.1.1", "port": 0, "protocol": "tcp"}"#),
                "vips[0].health_check",
                "all-ports VIP (port 0) has no port to check its backends on: give the tcp check a \"port\"",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 0, "protocol": "tcp", "health_check": {"kind": "http"}}"#,
                ),
                "vips[0].health_check",
                "give the http check a \"port\"",
            ),
            (
                &with_vip(r#"{"address": "198.18.1.1", "port": 70000, "protocol": "tcp"}"#),
                "vips[0].port",
                "u16",
            ),
            (
                &with_vip(r#"{"address": "198.18.1.1", "port": "80", "protocol": "tcp"}"#),
                "vips[0].port",
                "invalid type",
            ),
            (
                &with_vip(r#"{"address": "198.18.1.1", "port": 80, "protocol": "sctp"}"#),
                "vips[0].protocol",
                "unknown variant",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "idle_timeout_s": 0}"#,
                ),
                "vips[0].idle_timeout_s",
                "0 is outside 30..=604800",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "idle_timeout_s": 604801}"#,
                ),
                "vips[0].idle_timeout_s",
                "outside 30..=604800",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "random"}"#,
                ),
                "vips[0].scheduler",
                "unknown variant",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "table_size": 65536}"#,
                ),
                "vips[0].table_size",
                "prime",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "agent"}"#,
                ),
                "vips[0].agent",
                "agent",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "agent": {"port": 0}}"#,
                ),
                "vips[0].agent.port",
                "port 0",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "agent": {"port": 5555, "interval_ms": 5}}"#,
                ),
                "vips[0].agent.interval_ms",
                "100..=60000",
            ),
            (
                &with_vip(r#"{"address": "224.0.0.1", "port": 80, "protocol": "tcp"}"#),
                "vips[0].address",
                "unicast",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11", "weight": 10001}]}"#,
                ),
                "vips[0].backends[0].weight",
                "0..=10000",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11", "weight": -1}]}"#,
                ),
                "vips[0].backends[0].weight",
                "invalid value",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.11"}]}"#,
                ),
                "vips[0].backends[1]",
                "duplicate backend",
            ),
            (
                &with_vip(
                    r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "source": "flow_hash", "backends": [{"address": "198.18.0.11"}]}"#,
                ),
                "vips[0].source",
                "hashed_source.v4",
            ),
            (r#"{"mtu": 100}"#, "mtu", "576"),
            (r#"{"drop_samples": 10001}"#, "drop_samples", "10000"),
            (
                r#"{"hashed_source": {"v4": "198.19.0.1/16"}}"#,
                "hashed_source.v4",
                "host bits",
            ),
            (
                r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp"}, {"address": "198.18.1.1", "port": 80, "protocol": "tcp"}]}"#,
                "vips[1]",
                "duplicate VIP",
            ),
            ("{", "-", "EOF"),
        ];
        for (text, field, needle) in cases {
            let e = err(text);
            assert_eq!(&e.field, field, "{text}: {e}");
            assert!(
                e.message.contains(needle),
                "{text}: {e} (wanted {needle:?})"
            );
        }
    }

    #[test]
    fn all_ports_vips_check_their_backends_on_a_named_port_or_none() {
        for check in [
            r#""health_check": {"port": 7000}"#,
            r#""health_check": {"kind": "http", "port": 8080}"#,
            r#""health_check": {"kind": "icmp"}"#,
            r#""health_check": {"kind": "none"}"#,
        ] {
            let text = with_vip(&format!(
                r#"{{"address": "198.18.1.1", "port": 0, "protocol": "udp", {check}}}"#
            ));
            let cfg = Config::from_json(&text).unwrap_or_else(|e| panic!("{check}: {e}"));
            assert_eq!(cfg.vips[0].id().to_string(), "198.18.1.1:*/udp");
        }
    }

    #[test]
    fn vip_ids_parse_and_print() {
        for s in [
            "198.18.1.1:80/tcp",
            "[fd00::1]:53/udp",
            "198.18.1.1:*/tcp",
            "[fd00::1]:*/udp",
        ] {
            assert_eq!(s.parse::<VipId>().unwrap().to_string(), s);
        }
        let all: VipId = "[fd00::1]:*/udp".parse().unwrap();
        assert!(all.all_ports());
        assert_eq!(
            "[fd00::1]:53/udp".parse::<VipId>().unwrap().on_all_ports(),
            all
        );
        for bad in [
            "198.18.1.1:*x/tcp",
            "[fd00::1:*/tcp",
            "198.18.1:*/tcp",
            "*/tcp",
        ] {
            assert!(bad.parse::<VipId>().is_err(), "{bad}");
        }
        assert_eq!(
            "198.18.1.1:80".parse::<VipId>().unwrap().protocol,
            Protocol::Tcp
        );
        assert!("198.18.1.1:0/tcp"
            .parse::<VipId>()
            .unwrap_err()
            .contains("or * for every port"));
        assert!("198.18.1.1:80/sctp"
            .parse::<VipId>()
            .unwrap_err()
            .contains("sctp"));
        assert!("nonsense".parse::<VipId>().is_err());
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_v4_prefix("198.19.0.0/16").unwrap().1, 0xffff);
        assert!(parse_v4_prefix("198.19.0.0/31").is_err());
        assert!(parse_v6_prefix("fd00:ff::/96").is_ok());
        assert!(parse_v6_prefix("fd00:ff::1/96").is_err());
        assert!(parse_v6_prefix("fd00:ff::/120").is_err());
    }

    #[test]
    fn source_prefixes_parse_print_and_refuse_host_bits() {
        let p = |s: &str| s.parse::<SourcePrefix>();
        for (text, shown) in [
            ("198.18.0.0/15", "198.18.0.0/15"),
            ("198.19.7.1", "198.19.7.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("fd00::10", "fd00::10/128"),
        ] {
            assert_eq!(
                p(text).map(|x| x.to_string()),
                Ok(shown.to_owned()),
                "{text}"
            );
        }
        let net = p("198.18.0.0/24").unwrap();
        assert!(net.contains("198.18.0.255".parse().unwrap()));
        assert!(!net.contains("198.18.1.0".parse().unwrap()));
        assert!(!net.contains("::ffff:198.18.0.1".parse().unwrap()));
        assert!(p("0.0.0.0/0")
            .unwrap()
            .contains("203.0.113.9".parse().unwrap()));
        let host_bits = p("198.18.0.1/24").unwrap_err();
        assert!(host_bits.contains("198.18.0.0/24"), "{host_bits}");
        for bad in [
            "198.18.0.0/33",
            "fd00::/129",
            "nope/8",
            "198.18.0.0/",
            "/8",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        // In a VIP: its own family, no repeats; as JSON, strings.
        let vip = |sources: &str| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                    "allowed_sources": {sources}, "backends": []}}]}}"#
            ))
        };
        let ok = vip(r#"["198.18.0.0/15", "198.19.7.1"]"#).unwrap();
        assert_eq!(ok.vips[0].allowed_sources.len(), 2);
        let round = serde_json::to_value(&ok.vips[0]).unwrap();
        assert_eq!(
            round["allowed_sources"],
            serde_json::json!(["198.18.0.0/15", "198.19.7.1/32"])
        );
        for (bad, says) in [
            (r#"["fd00::/8"]"#, "other family"),
            (r#"["198.18.0.0/15", "198.18.0.0/15"]"#, "twice"),
            (r#"["198.18.0.1/15"]"#, "host bits"),
        ] {
            let e = vip(bad).unwrap_err();
            assert!(
                e.field.starts_with("vips[0].allowed_sources"),
                "{bad}: {e:?}"
            );
            assert!(e.message.contains(says), "{bad}: {e:?}");
        }
    }

    #[test]
    fn tunnel_checks_take_backends_of_either_family() {
        let parsed: HealthCheckConfig =
            serde_json::from_str(r#"{"kind": "tcp_tunnel"}"#).expect("tcp_tunnel parses");
        assert_eq!(parsed.kind, CheckKind::TcpTunnel);
        // An IPv6 VIP on IPv4 backends and the other way round (IPv6 in IPv4, IPv4 in IPv6).
        let cfg = Config::from_json(
            r#"{"vips": [
              {"address": "fd00:1::1", "port": 80, "protocol": "tcp",
               "health_check": {"kind": "tcp_tunnel"}, "backends": [{"address": "198.18.0.11"}]},
              {"address": "198.18.1.1", "port": 80, "protocol": "tcp",
               "health_check": {"kind": "tcp_tunnel"}, "backends": [{"address": "fd00::11"}]}]}"#,
        );
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    /// `max_conns`: at least 1, and only where the scheduler picks by active flows.
    #[test]
    fn max_conns_need_a_least_connection_scheduler() {
        let file = |scheduler: &str, max: u32| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                   "scheduler": "{scheduler}",
                   "backends": [{{"address": "198.18.0.11", "max_conns": {max}}}]}}]}}"#
            ))
        };
        for s in ["lc", "wlc"] {
            let c = file(s, 100).unwrap();
            assert_eq!(c.vips[0].backends[0].max_conns, Some(100));
        }
        for s in ["maglev", "sh", "rr", "wrr", "lrt"] {
            let e = file(s, 100).unwrap_err();
            assert_eq!(e.field, "vips[0].backends[0].max_conns", "{s}: {e}");
            assert!(e.message.contains("lc, wlc"), "{e}");
        }
        let e = file("lc", 0).unwrap_err();
        assert_eq!(e.field, "vips[0].backends[0].max_conns", "{e}");
        // Left out when not set, so that files without it read back the same.
        let c = Config::from_json(
            r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
               "backends": [{"address": "198.18.0.11"}]}]}"#,
        )
        .unwrap();
        assert!(!serde_json::to_string(&c).unwrap().contains("max_conns"));
    }

    /// `stateless`: only under a scheduler that picks by hash alone, and without a slow start.
    #[test]
    fn stateless_vips_need_a_hash_scheduler_and_no_slow_start() {
        let file = |extra: &str| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 53, "protocol": "udp",
                   "stateless": true{extra}, "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
            ))
        };
        for s in ["maglev", "sh"] {
            let c = file(&format!(r#", "scheduler": "{s}""#)).unwrap();
            assert!(c.vips[0].stateless, "{s}");
        }
        for s in ["rr", "wrr", "lc", "wlc", "lrt"] {
            let e = file(&format!(r#", "scheduler": "{s}""#)).unwrap_err();
            assert_eq!(e.field, "vips[0].stateless", "{s}: {e}");
            assert!(e.message.contains("only maglev and sh"), "{e}");
        }
        let e = file(r#", "slow_start_s": 30"#).unwrap_err();
        assert_eq!(e.field, "vips[0].stateless", "{e}");
        // Left out when off, so that files without it read back the same.
        let c = Config::from_json(
            r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
               "backends": [{"address": "198.18.0.11"}]}]}"#,
        )
        .unwrap();
        assert!(!c.vips[0].stateless);
        assert!(!serde_json::to_string(&c).unwrap().contains("stateless"));
    }

    /// `new_flow_rate_limit`: 1 or more, left out when unset.
    #[test]
    fn new_flow_rate_limits_admit_at_least_one_flow() {
        let file = |extra: &str| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 80, "protocol": "tcp"{extra},
                   "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
            ))
        };
        let c = file(r#", "new_flow_rate_limit": 1"#).unwrap();
        assert_eq!(c.vips[0].new_flow_rate_limit, Some(1));
        let e = file(r#", "new_flow_rate_limit": 0"#).unwrap_err();
        assert_eq!(e.field, "vips[0].new_flow_rate_limit", "{e}");
        let c = file(r#", "client_flow_rate_limit": 3"#).unwrap();
        assert_eq!(c.vips[0].client_flow_rate_limit, Some(3));
        let e = file(r#", "client_flow_rate_limit": 0"#).unwrap_err();
        assert_eq!(e.field, "vips[0].client_flow_rate_limit", "{e}");
        let c = file("").unwrap();
        let text = serde_json::to_string(&c).unwrap();
        assert!(!text.contains("new_flow_rate_limit") && !text.contains("client_flow"));
    }

    /// `encap: gue` and `gue_port`: read, defaulted, refused at 0, left out when unset.
    #[test]
    fn gue_tunnels_and_their_port() {
        let file = |top: &str| {
            Config::from_json(&format!(
                r#"{{{top} "vips": [{{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                   "encap": "gue", "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
            ))
        };
        let c = file("").unwrap();
        assert_eq!(c.vips[0].encap, Encap::Gue);
        assert_eq!(c.gue_port(), DEFAULT_GUE_PORT);
        assert!(!serde_json::to_string(&c).unwrap().contains("gue_port"));
        assert_eq!(file(r#""gue_port": 5555,"#).unwrap().gue_port(), 5555);
        let e = file(r#""gue_port": 0,"#).unwrap_err();
        assert_eq!(e.field, "gue_port", "{e}");
        assert!(Config::from_json(
            r#"{"vips": [{"address": "198.18.1.1", "port": 80,
            "protocol": "tcp", "encap": "vxlan"}]}"#
        )
        .is_err());
    }

    /// `quic`: UDP VIPs only, a connection-ID layout the data plane reads; backends' IDs
    /// need it, fit it and are their own.
    #[test]
    fn quic_vips_and_server_ids_are_checked() {
        let file = |proto: &str, quic: &str, ids: [&str; 2]| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 443, "protocol": "{proto}"{quic},
                   "backends": [{{"address": "198.18.0.11"{}}}, {{"address": "198.18.0.12"{}}}]}}]}}"#,
                ids[0], ids[1]
            ))
        };
        let id = |n: u32| format!(r#", "quic_server_id": {n}"#);
        let c = file("udp", r#", "quic": {}"#, [&id(1), &id(2)]).unwrap();
        assert_eq!(
            c.vips[0].quic,
            Some(QuicConfig {
                server_id_bytes: 2,
                config_id: 0
            })
        );
        assert_eq!(c.vips[0].backends[1].quic_server_id, Some(2));
        // Read back the same.
        let again = Config::from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        file(
            "udp",
            r#", "quic": {"server_id_bytes": 4, "config_id": 6}"#,
            [&id(u32::MAX), ""],
        )
        .unwrap();
        let refused: &[(&str, &str, [&str; 2], &str, &str)] = &[
            (
                "tcp",
                r#", "quic": {}"#,
                ["", ""],
                "vips[0].quic",
                "over UDP",
            ),
            (
                "udp",
                r#", "quic": {"server_id_bytes": 0}"#,
                ["", ""],
                "vips[0].quic",
                "1..=4",
            ),
            (
                "udp",
                r#", "quic": {"server_id_bytes": 5}"#,
                ["", ""],
                "vips[0].quic",
                "1..=4",
            ),
            (
                "udp",
                r#", "quic": {"config_id": 7}"#,
                ["", ""],
                "vips[0].quic",
                "name no server",
            ),
            (
                "udp",
                r#", "quic": {"bytes": 2}"#,
                ["", ""],
                "",
                "unknown field",
            ),
            (
                "udp",
                "",
                [&id(1), ""],
                "vips[0].backends[0].quic_server_id",
                "without",
            ),
            (
                "udp",
                r#", "quic": {}"#,
                [&id(65_536), ""],
                "vips[0].backends[0].quic_server_id",
                "does not fit",
            ),
            (
                "udp",
                r#", "quic": {"server_id_bytes": 1}"#,
                [&id(256), ""],
                "vips[0].backends[0].quic_server_id",
                "at most 255",
            ),
            (
                "udp",
                r#", "quic": {}"#,
                [&id(5), &id(5)],
                "vips[0].backends[1].quic_server_id",
                "another backend's",
            ),
        ];
        for (proto, quic, ids, field, message) in refused {
            let e = file(proto, quic, [ids[0], ids[1]]).unwrap_err();
            assert!(e.field.contains(field), "{quic} {ids:?}: {e}");
            assert!(e.to_string().contains(message), "{quic} {ids:?}: {e}");
        }
        // Left out when off.
        let c = file("udp", "", ["", ""]).unwrap();
        assert!(!serde_json::to_string(&c).unwrap().contains("quic"));
    }

    #[test]
    fn the_documented_examples_are_valid_configs() {
        let doc = include_str!("../../docs/config.md");
        let examples = doc
            .split("```json\n")
            .skip(1)
            .filter_map(|block| block.split_once("```").map(|(json, _)| json))
            .collect::<Vec<_>>();
        assert!(
            examples.len() >= 3,
            "{} examples in docs/config.md",
            examples.len()
        );
        for json in examples {
            if let Err(e) = Config::from_json(json) {
                panic!("docs/config.md example refused: {e}\n{json}");
            }
        }
    }
}
