//! The wire format: one JSON object per line each way. Reference: `docs/control-protocol.md`.
//!
//! A request line is an envelope (`v`, `id`) plus an operation (`op` and its fields). The
//! envelope is checked first, so a client speaking another version hears about the version
//! rather than about a field it could not know. Operation bodies are parsed from a
//! `serde_json::Value` one op at a time: serde's internally tagged enums buffer their
//! content and lose the path of a bad field, and a message like "vip.port: invalid type"
//! is the point of the `bad_request` code.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    config::{BackendConfig, Scheduler, SourcePrefix, VipConfig, VipId},
    core::CoreError,
    health::HealthCheckConfig,
};

/// The protocol version this build speaks (the only one so far).
pub const VERSION: u64 = 1;

/// Longest request line, newline excluded. A `vip.add` with 1000 backends fits; anything
/// longer is a mistake or an attack, and is refused without being buffered.
pub const MAX_LINE: usize = 64 * 1024;

/// Error codes of the protocol's own checks; the core's codes ([`CoreError::code`]) pass
/// through unchanged.
pub mod code {
    /// The line is not JSON (or not UTF-8).
    pub const BAD_JSON: &str = "bad_json";
    /// JSON, but not a request: not an object, unknown op, unknown / missing / mistyped field.
    pub const BAD_REQUEST: &str = "bad_request";
    /// `v` is missing or not a version this daemon speaks.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// The line is longer than [`super::MAX_LINE`].
    pub const TOO_LARGE: &str = "too_large";
    /// Too many connections at once.
    pub const BUSY: &str = "busy";
    /// The daemon failed in a way that is not the request's fault.
    pub const INTERNAL: &str = "internal";
    /// `reload`: no config file, or one that cannot be read, is not valid, or asks for
    /// what only a restart can change; nothing changed.
    pub const CONFIG_FILE: &str = "config_file";
}

/// A refused request: a stable machine-readable code and a message for people that says
/// what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{code}: {message}")]
pub struct ControlError {
    /// One of the codes in `docs/control-protocol.md` (`bad_request`, `unknown_vip`, …).
    pub code: String,
    /// What went wrong and what would be right.
    pub message: String,
}

impl ControlError {
    /// An error with `code`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<&CoreError> for ControlError {
    fn from(e: &CoreError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<CoreError> for ControlError {
    fn from(e: CoreError) -> Self {
        Self::from(&e)
    }
}

/// One operation. On the wire the variant is the `op` field and the body's fields sit next
/// to it: `{"v":1,"op":"backend.drain","vip":"198.18.1.1:80/tcp","address":"198.18.0.11"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op")]
pub enum Request {
    /// Adds a VIP with its backends.
    #[serde(rename = "vip.add")]
    VipAdd(VipAdd),
    /// Removes a VIP and its backends.
    #[serde(rename = "vip.remove")]
    VipRemove(VipRef),
    /// Switches a VIP's scheduler.
    #[serde(rename = "vip.scheduler")]
    VipScheduler(VipScheduler),
    /// Sets a VIP's idle timeout for least-connection counts.
    #[serde(rename = "vip.idle_timeout")]
    VipIdleTimeout(VipIdleTimeout),
    /// Sets or lifts a VIP's `new_flow_rate_limit`.
    #[serde(rename = "vip.flow_limit")]
    VipFlowLimit(VipFlowLimit),
    /// Sets or lifts a VIP's `client_flow_rate_limit`.
    #[serde(rename = "vip.client_flow_limit")]
    VipClientFlowLimit(VipClientFlowLimit),
    /// Sets the client prefixes a VIP admits new flows from.
    #[serde(rename = "vip.sources")]
    VipSources(VipSources),
    /// Sets a VIP's health check; its backends' checks restart from their verdicts.
    #[serde(rename = "vip.health_check")]
    VipHealthCheck(VipHealthCheck),
    /// Adds a backend to a VIP.
    #[serde(rename = "backend.add")]
    BackendAdd(BackendAdd),
    /// Removes a backend from a VIP.
    #[serde(rename = "backend.remove")]
    BackendRemove(BackendRemove),
    /// Changes a backend's weight.
    #[serde(rename = "backend.weight")]
    BackendWeight(BackendWeight),
    /// Stops new flows to a backend; existing flows stay.
    #[serde(rename = "backend.drain")]
    BackendDrain(BackendRef),
    /// Lets a drained backend take new flows again.
    #[serde(rename = "backend.undrain")]
    BackendUndrain(BackendRef),
    /// Makes a backend a backup, or a regular one again; no flow moves.
    #[serde(rename = "backend.backup")]
    BackendBackup(BackendBackup),
    /// Sets or lifts a backend's `max_conns` (least-connection VIPs).
    #[serde(rename = "backend.max_conns")]
    BackendMaxConns(BackendMaxConns),
    /// VIPs, backends, weights, health and traffic.
    #[serde(rename = "status")]
    Status(Empty),
    /// Data-plane counters by reason and traffic per VIP.
    #[serde(rename = "stats")]
    Stats(Empty),
    /// Where a client's flow to a VIP goes: its connection-table entry and the backend of
    /// its next packet.
    #[serde(rename = "flow")]
    Flow(FlowRef),
    /// The flows the connection tables hold and each one's backend, filtered.
    #[serde(rename = "flows")]
    Flows(FlowsQuery),
    /// Deletes the matching flows from the connection tables: their next packets are new
    /// flows (scheduled anew, or refused by the VIP's `allowed_sources`). The fields of
    /// `flows` but `limit`, at least one of them.
    #[serde(rename = "flows.forget")]
    FlowsForget(FlowsQuery),
    /// Reads the config file again and applies it (SIGHUP's reload), or says what it would
    /// change.
    #[serde(rename = "reload")]
    Reload(ReloadRequest),
    /// The running VIPs and backends as a config file.
    #[serde(rename = "config")]
    Config(Empty),
    /// Dropped packets the balancer sampled, newest last.
    #[serde(rename = "drops")]
    Drops(DropsQuery),
}

/// Body of `vip.add`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipAdd {
    /// The VIP, as in the config file's `vips[]`.
    pub vip: VipConfig,
}

/// Body of `vip.remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipRef {
    /// The VIP.
    pub vip: VipId,
}

/// Body of `vip.scheduler`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipScheduler {
    /// The VIP.
    pub vip: VipId,
    /// Its new scheduler.
    pub scheduler: Scheduler,
}

/// Body of `vip.idle_timeout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipIdleTimeout {
    /// The VIP.
    pub vip: VipId,
    /// Seconds (30..=604800), or `null` for the protocol's default.
    pub idle_timeout_s: Option<u32>,
}

/// Body of `vip.flow_limit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipFlowLimit {
    /// The VIP.
    pub vip: VipId,
    /// New flows each CPU admits per second (1 or more), or `null` for no limit.
    pub new_flow_rate_limit: Option<u32>,
}

impl VipFlowLimit {
    /// What the daemon says it did (and the CLI, from what it asked).
    pub fn done(&self) -> String {
        match self.new_flow_rate_limit {
            Some(n) => format!(
                "VIP {}: each CPU admits at most {n} new flows a second",
                self.vip
            ),
            None => format!("VIP {}: no new-flow limit", self.vip),
        }
    }
}

impl VipClientFlowLimit {
    /// What the daemon says it did (and the CLI, from what it asked).
    pub fn done(&self) -> String {
        match self.client_flow_rate_limit {
            Some(n) => format!(
                "VIP {}: at most {n} new flows a second from one client",
                self.vip
            ),
            None => format!("VIP {}: no per-client new-flow limit", self.vip),
        }
    }
}

/// Body of `vip.client_flow_limit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipClientFlowLimit {
    /// The VIP.
    pub vip: VipId,
    /// New flows admitted per second from one client (1 or more), or `null` for no
    /// limit.
    pub client_flow_rate_limit: Option<u32>,
}

/// Body of `vip.sources`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSources {
    /// The VIP.
    pub vip: VipId,
    /// Client prefixes (`198.18.0.0/15`, `fd00::/8`, a bare address); empty: every client.
    pub allowed_sources: Vec<SourcePrefix>,
    /// Also forget the VIP's recorded flows of clients the new list leaves out: their
    /// open connections stop too (a firewall rule change's default is to keep them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// Body of `vip.health_check`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipHealthCheck {
    /// The VIP.
    pub vip: VipId,
    /// As in the config file, or `null` for the default (TCP connect to the VIP port).
    pub health_check: Option<HealthCheckConfig>,
}

/// Body of `backend.add`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAdd {
    /// The VIP.
    pub vip: VipId,
    /// The backend, as in the config file's `backends[]`.
    pub backend: BackendConfig,
}

/// Body of `backend.remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRemove {
    /// The VIP.
    pub vip: VipId,
    /// The backend's address.
    pub address: IpAddr,
    /// Remove gracefully: drain now, remove once quiet or after this many seconds
    /// (1..=86400). Absent: remove at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_s: Option<u64>,
    /// With `drain_s`: seconds without a packet that count as done (1..=86400; default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_s: Option<u64>,
}

/// Body of `backend.drain` and `backend.undrain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// The VIP.
    pub vip: VipId,
    /// The backend's address.
    pub address: IpAddr,
}

/// Body of `backend.weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendWeight {
    /// The VIP.
    pub vip: VipId,
    /// The backend's address.
    pub address: IpAddr,
    /// The new weight, 0..=10000.
    pub weight: u32,
}

/// Body of `backend.max_conns`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendMaxConns {
    /// The VIP.
    pub vip: VipId,
    /// The backend's address.
    pub address: IpAddr,
    /// The most active flows it takes; `null`: no limit. Required, so that a request that
    /// forgot it does not lift a limit.
    #[serde(deserialize_with = "present")]
    pub max_conns: Option<u32>,
}

/// An `Option` field that must be there (`null` allowed): serde defaults a missing
/// `Option` to `None` unless it is read with a function of its own.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)
}

/// Body of `backend.backup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendBackup {
    /// The VIP.
    pub vip: VipId,
    /// The backend's address.
    pub address: IpAddr,
    /// A backup (new flows only while no regular backend of the VIP takes them), or not.
    pub backup: bool,
}

/// Body of `flow`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRef {
    /// The VIP.
    pub vip: VipId,
    /// The client's address and port (`198.18.0.10:40000`, `[fd00::10]:40000`).
    pub client: SocketAddr,
}

/// Body of `flows`: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    /// Only this VIP's flows (a port of an all-ports VIP: only the flows to that port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipId>,
    /// Only the flows on this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    /// Only the flows of clients in this prefix (`198.18.0.0/24`, or an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SourcePrefix>,
    /// At most this many flows (1..=10000; default 100), the first by VIP, then client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Only the flows idle for longer than this many seconds (no packet has reached the
    /// table since; a flow that sends does at least once a second): ended ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_over_s: Option<u32>,
}

/// Body of `drops`: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropsQuery {
    /// Only drops for this reason (`no_backend`, `ipv4_bad_ihl`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Only packets to this service (address, port, protocol; an all-ports VIP: any port
    /// of its address). It need not be a VIP the balancer has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<VipId>,
    /// Only packets from clients in this prefix (`198.18.0.0/24`, or an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SourcePrefix>,
    /// Only samples from this sequence number on (an earlier answer's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// At most this many, the newest (1..=1000; default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Body of `reload`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Only say what the reload would change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Where a VIP's `allowed_sources` change, also forget its recorded flows of clients
    /// the new list leaves out (as `vip.sources` with `cut`); with `dry_run`, count them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// Body of ops without fields (`status`, `stats`): any field is an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Every op name, for "unknown op" messages.
pub const OPS: &[&str] = &[
    "vip.add",
    "vip.remove",
    "vip.scheduler",
    "vip.idle_timeout",
    "vip.flow_limit",
    "vip.client_flow_limit",
    "vip.sources",
    "vip.health_check",
    "backend.add",
    "backend.remove",
    "backend.weight",
    "backend.drain",
    "backend.undrain",
    "backend.backup",
    "backend.max_conns",
    "status",
    "stats",
    "flow",
    "flows",
    "flows.forget",
    "reload",
    "config",
    "drops",
];

impl Request {
    /// The wire name of this op.
    pub fn op(&self) -> &'static str {
        match self {
            Self::VipAdd(_) => "vip.add",
            Self::VipRemove(_) => "vip.remove",
            Self::VipScheduler(_) => "vip.scheduler",
            Self::VipIdleTimeout(_) => "vip.idle_timeout",
            Self::VipFlowLimit(_) => "vip.flow_limit",
            Self::VipClientFlowLimit(_) => "vip.client_flow_limit",
            Self::VipSources(_) => "vip.sources",
            Self::VipHealthCheck(_) => "vip.health_check",
            Self::BackendAdd(_) => "backend.add",
            Self::BackendRemove(_) => "backend.remove",
            Self::BackendWeight(_) => "backend.weight",
            Self::BackendDrain(_) => "backend.drain",
            Self::BackendUndrain(_) => "backend.undrain",
            Self::BackendBackup(_) => "backend.backup",
            Self::BackendMaxConns(_) => "backend.max_conns",
            Self::Status(_) => "status",
            Self::Stats(_) => "stats",
            Self::Flow(_) => "flow",
            Self::Flows(_) => "flows",
            Self::FlowsForget(_) => "flows.forget",
            Self::Reload(_) => "reload",
            Self::Config(_) => "config",
            Self::Drops(_) => "drops",
        }
    }

    /// Parses an op and its fields (the envelope already removed).
    fn from_fields(mut fields: Map<String, Value>) -> Result<Self, ControlError> {
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            Some(other) => {
                return Err(bad_request(format!(
                    "op: expected a string such as \"status\", got {other}"
                )));
            }
            None => {
                return Err(bad_request(format!(
                    "missing field `op`; ops: {}",
                    OPS.join(", ")
                )))
            }
        };
        let body = Value::Object(fields);
        Ok(match op.as_str() {
            "vip.add" => Self::VipAdd(parse_body(body)?),
            "vip.remove" => Self::VipRemove(parse_body(body)?),
            "vip.scheduler" => Self::VipScheduler(parse_body(body)?),
            "vip.idle_timeout" => Self::VipIdleTimeout(parse_body(body)?),
            "vip.flow_limit" => Self::VipFlowLimit(parse_body(body)?),
            "vip.client_flow_limit" => Self::VipClientFlowLimit(parse_body(body)?),
            "vip.sources" => Self::VipSources(parse_body(body)?),
            "vip.health_check" => Self::VipHealthCheck(parse_body(body)?),
            "backend.add" => Self::BackendAdd(parse_body(body)?),
            "backend.remove" => Self::BackendRemove(parse_body(body)?),
            "backend.weight" => Self::BackendWeight(parse_body(body)?),
            "backend.drain" => Self::BackendDrain(parse_body(body)?),
            "backend.undrain" => Self::BackendUndrain(parse_body(body)?),
            "backend.backup" => Self::BackendBackup(parse_body(body)?),
            "backend.max_conns" => Self::BackendMaxConns(parse_body(body)?),
            "status" => Self::Status(parse_body(body)?),
            "stats" => Self::Stats(parse_body(body)?),
            "flow" => Self::Flow(parse_body(body)?),
            "flows" => Self::Flows(parse_body(body)?),
            "flows.forget" => Self::FlowsForget(parse_body(body)?),
            "reload" => Self::Reload(parse_body(body)?),
            "config" => Self::Config(parse_body(body)?),
            "drops" => Self::Drops(parse_body(body)?),
            other => {
                return Err(bad_request(format!(
                    "op: unknown op {other:?}; ops: {}",
                    OPS.join(", ")
                )))
            }
        })
    }

    /// The request line (newline included) that asks for this op, with `id` echoed back.
    pub fn to_line(&self, id: &Value) -> String {
        let mut obj = Map::new();
        obj.insert("v".into(), VERSION.into());
        obj.insert("id".into(), id.clone());
        // Serializing our own types into a map cannot fail: every field is a plain value
        // or a map with string keys. A failure would be a bug here, so say so loudly.
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => obj.extend(fields),
            other => unreachable!("a Request serializes to a JSON object, got {other:?}"),
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        line
    }
}

fn bad_request(message: impl Into<String>) -> ControlError {
    ControlError::new(code::BAD_REQUEST, message)
}

/// Deserializes an op body, naming the path of the first bad field (`vip.backends[0].weight`).
fn parse_body<T: DeserializeOwned>(body: Value) -> Result<T, ControlError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // "." is the body itself (a missing or unknown field: serde's message names it).
        if path == "." || path == "?" {
            bad_request(message)
        } else {
            bad_request(format!("{path}: {message}"))
        }
    })
}

/// A request line, decoded: the `id` to echo (null when absent or unreadable) and the
/// request or why it was refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The request's `id`, echoed in the response.
    pub id: Value,
    /// The request, or the error to answer with.
    pub request: Result<Request, ControlError>,
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Decoded {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Decoded {
                id: Value::Null,
                request: Err(ControlError::new(
                    code::BAD_JSON,
                    format!("not a JSON object: {e}; send one JSON object per line"),
                )),
            };
        }
    };
    let Value::Object(mut fields) = value else {
        return Decoded {
            id: Value::Null,
            request: Err(bad_request(format!(
                "a request is a JSON object such as {{\"v\":1,\"op\":\"status\"}}, got {}",
                kind_of(&value)
            ))),
        };
    };
    let id = fields.remove("id").unwrap_or(Value::Null);
    let request = check_version(fields.remove("v")).and_then(|()| Request::from_fields(fields));
    Decoded { id, request }
}

fn check_version(v: Option<Value>) -> Result<(), ControlError> {
    match v {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => Ok(()),
        Some(other) => Err(ControlError::new(
            code::UNSUPPORTED_VERSION,
            format!("protocol version {other} is not supported; this daemon speaks v {VERSION} (send \"v\": {VERSION})"),
        )),
        None => Err(ControlError::new(
            code::UNSUPPORTED_VERSION,
            format!("missing protocol version; this daemon speaks v {VERSION} (send \"v\": {VERSION})"),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One response: the echoed `id` and the result or the error.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The request's `id` (null when it had none or could not be read).
    pub id: Value,
    /// What the op returned, or why it was refused.
    pub result: Result<Value, ControlError>,
}

/// The response envelope as it travels: `ok` says which of `result` / `error` is there.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireResponse {
    v: u64,
    #[serde(default)]
    id: Value,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ControlError>,
}

impl Response {
    /// The response line, newline included.
    pub fn to_line(&self) -> String {
        let wire = match &self.result {
            Ok(v) => WireResponse {
                v: VERSION,
                id: self.id.clone(),
                ok: true,
                result: Some(v.clone()),
                error: None,
            },
            Err(e) => WireResponse {
                v: VERSION,
                id: self.id.clone(),
                ok: false,
                result: None,
                error: Some(e.clone()),
            },
        };
        // Serializing a tree of JSON values and strings cannot fail.
        let mut line = serde_json::to_string(&wire)
            .unwrap_or_else(|e| unreachable!("response serializes: {e}"));
        line.push('\n');
        line
    }

    /// Parses a response line (client side).
    pub fn from_line(line: &str) -> Result<Self, ResponseError> {
        let wire: WireResponse = serde_json::from_str(line).map_err(ResponseError::Json)?;
        if wire.v != VERSION {
            return Err(ResponseError::Version(wire.v));
        }
        let result = match (wire.ok, wire.result, wire.error) {
            (true, result, None) => Ok(result.unwrap_or(Value::Null)),
            (false, None, Some(e)) => Err(e),
            _ => return Err(ResponseError::Envelope),
        };
        Ok(Self {
            id: wire.id,
            result,
        })
    }
}

/// A response line the client cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// Not a response object.
    #[error("the daemon's reply is not a protocol response: {0}")]
    Json(serde_json::Error),
    /// Another protocol version.
    #[error("the daemon answered with protocol v {0}; this client speaks v {VERSION}: use the xlb binary of the running daemon")]
    Version(u64),
    /// `ok` disagrees with `result` / `error`.
    #[error("the daemon's reply has ok and result/error that disagree")]
    Envelope,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;
    use crate::config::Protocol;

    const VIP: &str = "198.18.1.1:80/tcp";

    fn vip_id() -> VipId {
        VIP.parse().expect("test VIP parses")
    }

    #[track_caller]
    fn ok(line: &str) -> Request {
        match decode_request(line.as_bytes()).request {
            Ok(r) => r,
            Err(e) => panic!("{line}: refused: {e}"),
        }
    }

    #[track_caller]
    fn refused(line: &[u8]) -> ControlError {
        match decode_request(line).request {
            Ok(r) => panic!("{}: accepted as {r:?}", String::from_utf8_lossy(line)),
            Err(e) => e,
        }
    }

    #[test]
    fn every_op_parses_from_its_example() {
        let b11: IpAddr = "198.18.0.11".parse().unwrap();
        let cases: Vec<(&str, Request)> = vec![
            (
                r#"{"v":1,"id":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":80,"protocol":"tcp","backends":[{"address":"198.18.0.11"},{"address":"198.18.0.12","weight":3}]}}"#,
                Request::VipAdd(VipAdd {
                    vip: VipConfig {
                        name: None,
                        address: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                        port: 80,
                        protocol: Protocol::Tcp,
                        scheduler: Scheduler::Maglev,
                        table_size: None,
                        encap: Default::default(),
                        source: Default::default(),
                        health_check: None,
                        agent: None,
                        idle_timeout_s: None,
                        slow_start_s: None,
                        allowed_sources: Vec::new(),
                        stateless: false,
                        quic: None,
                        new_flow_rate_limit: None,
                        client_flow_rate_limit: None,
                        backends: vec![
                            BackendConfig {
                                max_conns: None,
                                quic_server_id: None,
                                address: b11,
                                weight: 1,
                                drained: false,
                                backup: false,
                            },
                            BackendConfig {
                                max_conns: None,
                                quic_server_id: None,
                                address: "198.18.0.12".parse().unwrap(),
                                weight: 3,
                                drained: false,
                                backup: false,
                            },
                        ],
                    },
                }),
            ),
            (
                r#"{"v":1,"op":"vip.remove","vip":"198.18.1.1:80/tcp"}"#,
                Request::VipRemove(VipRef { vip: vip_id() }),
            ),
            (
                r#"{"v":1,"op":"vip.scheduler","vip":"198.18.1.1:80/tcp","scheduler":"sh"}"#,
                Request::VipScheduler(VipScheduler {
                    vip: vip_id(),
                    scheduler: Scheduler::Sh,
                }),
            ),
            (
                r#"{"v":1,"op":"vip.idle_timeout","vip":"198.18.1.1:80/tcp","idle_timeout_s":3600}"#,
                Request::VipIdleTimeout(VipIdleTimeout {
                    vip: vip_id(),
                    idle_timeout_s: Some(3600),
                }),
            ),
            (
                r#"{"v":1,"op":"vip.flow_limit","vip":"198.18.1.1:80/tcp","new_flow_rate_limit":500}"#,
                Request::VipFlowLimit(VipFlowLimit {
                    vip: vip_id(),
                    new_flow_rate_limit: Some(500),
                }),
            ),
            (
                r#"{"v":1,"op":"vip.client_flow_limit","vip":"198.18.1.1:80/tcp","client_flow_rate_limit":null}"#,
                Request::VipClientFlowLimit(VipClientFlowLimit {
                    vip: vip_id(),
                    client_flow_rate_limit: None,
                }),
            ),
            (
                r#"{"v":1,"op":"vip.idle_timeout","vip":"198.18.1.1:80/tcp","idle_timeout_s":null}"#,
                Request::VipIdleTimeout(VipIdleTimeout {
                    vip: vip_id(),
                    idle_timeout_s: None,
                }),
            ),
            (
                r#"{"v":1,"op":"vip.sources","vip":"198.18.1.1:80/tcp","allowed_sources":["198.18.0.0/15","198.19.7.1"]}"#,
                Request::VipSources(VipSources {
                    vip: vip_id(),
                    allowed_sources: vec![
                        "198.18.0.0/15".parse().unwrap(),
                        "198.19.7.1/32".parse().unwrap(),
                    ],
                    cut: false,
                }),
            ),
            (
                r#"{"v":1,"op":"vip.sources","vip":"198.18.1.1:80/tcp","allowed_sources":["198.18.0.0/15"],"cut":true}"#,
                Request::VipSources(VipSources {
                    vip: vip_id(),
                    allowed_sources: vec!["198.18.0.0/15".parse().unwrap()],
                    cut: true,
                }),
            ),
            (
                r#"{"v":1,"op":"flows.forget","vip":"198.18.1.1:80/tcp","client":"198.18.0.0/24"}"#,
                Request::FlowsForget(FlowsQuery {
                    vip: Some(vip_id()),
                    backend: None,
                    client: Some("198.18.0.0/24".parse().unwrap()),
                    limit: None,
                    idle_over_s: None,
                }),
            ),
            (
                r#"{"v":1,"op":"vip.health_check","vip":"198.18.1.1:80/tcp","health_check":null}"#,
                Request::VipHealthCheck(VipHealthCheck {
                    vip: vip_id(),
                    health_check: None,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.add","vip":"198.18.1.1:80/tcp","backend":{"address":"198.18.0.11","weight":2}}"#,
                Request::BackendAdd(BackendAdd {
                    vip: vip_id(),
                    backend: BackendConfig {
                        max_conns: None,
                        quic_server_id: None,
                        address: b11,
                        weight: 2,
                        drained: false,
                        backup: false,
                    },
                }),
            ),
            (
                r#"{"v":1,"op":"backend.max_conns","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","max_conns":500}"#,
                Request::BackendMaxConns(BackendMaxConns {
                    vip: vip_id(),
                    address: b11,
                    max_conns: Some(500),
                }),
            ),
            (
                r#"{"v":1,"op":"backend.max_conns","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","max_conns":null}"#,
                Request::BackendMaxConns(BackendMaxConns {
                    vip: vip_id(),
                    address: b11,
                    max_conns: None,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.remove","vip":"198.18.1.1:80/tcp","address":"198.18.0.11"}"#,
                Request::BackendRemove(BackendRemove {
                    vip: vip_id(),
                    address: b11,
                    drain_s: None,
                    quiet_s: None,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.remove","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","drain_s":300,"quiet_s":10}"#,
                Request::BackendRemove(BackendRemove {
                    vip: vip_id(),
                    address: b11,
                    drain_s: Some(300),
                    quiet_s: Some(10),
                }),
            ),
            (
                r#"{"v":1,"op":"backend.weight","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","weight":5}"#,
                Request::BackendWeight(BackendWeight {
                    vip: vip_id(),
                    address: b11,
                    weight: 5,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.drain","vip":"198.18.1.1:80/tcp","address":"198.18.0.11"}"#,
                Request::BackendDrain(BackendRef {
                    vip: vip_id(),
                    address: b11,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.undrain","vip":"198.18.1.1:80/tcp","address":"198.18.0.11"}"#,
                Request::BackendUndrain(BackendRef {
                    vip: vip_id(),
                    address: b11,
                }),
            ),
            (
                r#"{"v":1,"op":"backend.backup","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","backup":false}"#,
                Request::BackendBackup(BackendBackup {
                    vip: vip_id(),
                    address: b11,
                    backup: false,
                }),
            ),
            (r#"{"v":1,"op":"status"}"#, Request::Status(Empty {})),
            (r#"{"v":1,"id":"s","op":"stats"}"#, Request::Stats(Empty {})),
            (
                r#"{"v":1,"op":"flow","vip":"198.18.1.1:80/tcp","client":"198.18.0.10:40000"}"#,
                Request::Flow(FlowRef {
                    vip: vip_id(),
                    client: "198.18.0.10:40000".parse().unwrap(),
                }),
            ),
            (
                r#"{"v":1,"op":"flows"}"#,
                Request::Flows(FlowsQuery::default()),
            ),
            (
                r#"{"v":1,"op":"reload"}"#,
                Request::Reload(ReloadRequest::default()),
            ),
            (r#"{"v":1,"op":"config"}"#, Request::Config(Empty {})),
            (
                r#"{"v":1,"op":"reload","dry_run":true}"#,
                Request::Reload(ReloadRequest {
                    dry_run: true,
                    cut: false,
                }),
            ),
            (
                r#"{"v":1,"op":"reload","cut":true}"#,
                Request::Reload(ReloadRequest {
                    dry_run: false,
                    cut: true,
                }),
            ),
            (
                r#"{"v":1,"op":"flows","vip":"198.18.1.1:80/tcp","backend":"198.18.0.11","limit":5}"#,
                Request::Flows(FlowsQuery {
                    vip: Some(vip_id()),
                    backend: Some(b11),
                    client: None,
                    limit: Some(5),
                    idle_over_s: None,
                }),
            ),
            (
                r#"{"v":1,"op":"flows","vip":"198.18.1.1:80/tcp","idle_over_s":300}"#,
                Request::Flows(FlowsQuery {
                    vip: Some(vip_id()),
                    backend: None,
                    client: None,
                    limit: None,
                    idle_over_s: Some(300),
                }),
            ),
            (
                r#"{"v":1,"op":"drops"}"#,
                Request::Drops(DropsQuery::default()),
            ),
            (
                r#"{"v":1,"op":"drops","reason":"no_backend","since":7,"limit":5}"#,
                Request::Drops(DropsQuery {
                    reason: Some("no_backend".into()),
                    since: Some(7),
                    limit: Some(5),
                    ..DropsQuery::default()
                }),
            ),
            (
                r#"{"v":1,"op":"drops","vip":"198.18.1.1:*/tcp","client":"198.18.0.0/24"}"#,
                Request::Drops(DropsQuery {
                    vip: Some("198.18.1.1:*/tcp".parse().unwrap()),
                    client: Some("198.18.0.0/24".parse().unwrap()),
                    ..DropsQuery::default()
                }),
            ),
            (
                r#"{"v":1,"op":"flows","client":"198.18.0.0/24"}"#,
                Request::Flows(FlowsQuery {
                    client: Some("198.18.0.0/24".parse().unwrap()),
                    ..FlowsQuery::default()
                }),
            ),
        ];
        let mut seen: Vec<&str> = Vec::new();
        for (line, want) in &cases {
            assert_eq!(&ok(line), want, "{line}");
            // And back: what a client sends decodes to the same request.
            let again = want.to_line(&json!(7));
            assert!(again.ends_with('\n') && !again[..again.len() - 1].contains('\n'));
            let decoded = decode_request(again.trim_end().as_bytes());
            assert_eq!(decoded.id, json!(7));
            assert_eq!(decoded.request.as_ref(), Ok(want));
            seen.push(want.op());
        }
        seen.sort_unstable();
        seen.dedup();
        let mut all = OPS.to_vec();
        all.sort_unstable();
        assert_eq!(seen, all, "every op has an example");
    }

    #[test]
    fn ids_are_echoed_whatever_their_type() {
        for id in [json!(1), json!("abc"), json!({"k": [1, 2]}), json!(null)] {
            let line = json!({"v": 1, "id": id, "op": "status"}).to_string();
            assert_eq!(decode_request(line.as_bytes()).id, id);
        }
        // Even a refused request keeps its id, so a pipelining client can match the error.
        let d = decode_request(br#"{"v":1,"id":42,"op":"nope"}"#);
        assert_eq!(d.id, json!(42));
        assert!(d.request.is_err());
        assert_eq!(decode_request(br#"{"id":42,"op":"status"}"#).id, json!(42));
    }

    #[test]
    fn each_bad_input_has_its_code_and_says_where() {
        let cases: &[(&[u8], &str, &[&str])] = &[
            (b"garbage", code::BAD_JSON, &["JSON"]),
            (b"{\"v\":1,", code::BAD_JSON, &["EOF"]),
            (b"\xff\xfe", code::BAD_JSON, &[]),
            (b"", code::BAD_JSON, &[]),
            (b"[1,2]", code::BAD_REQUEST, &["an array"]),
            (br#"{"op":"status"}"#, code::UNSUPPORTED_VERSION, &["missing", "v 1"]),
            (br#"{"v":2,"op":"status"}"#, code::UNSUPPORTED_VERSION, &["version 2", "v 1"]),
            (br#"{"v":"1","op":"status"}"#, code::UNSUPPORTED_VERSION, &["\"1\""]),
            (br#"{"v":1}"#, code::BAD_REQUEST, &["missing field `op`", "vip.add"]),
            (br#"{"v":1,"op":7}"#, code::BAD_REQUEST, &["op:", "string"]),
            (br#"{"v":1,"op":"vip.ad"}"#, code::BAD_REQUEST, &["unknown op \"vip.ad\"", "vip.add"]),
            (br#"{"v":1,"op":"status","verbose":true}"#, code::BAD_REQUEST, &["unknown field `verbose`"]),
            (
                br#"{"v":1,"op":"backend.drain","vip":"198.18.1.1:80/tcp","adress":"198.18.0.11"}"#,
                code::BAD_REQUEST,
                &["unknown field `adress`", "`address`"],
            ),
            (br#"{"v":1,"op":"vip.remove"}"#, code::BAD_REQUEST, &["missing field `vip`"]),
            (br#"{"v":1,"op":"vip.remove","vip":"198.18.1.1:0/tcp"}"#, code::BAD_REQUEST, &["vip:", "port 0"]),
            (
                br#"{"v":1,"op":"backend.weight","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","weight":"5"}"#,
                code::BAD_REQUEST,
                &["weight: invalid type: string"],
            ),
            (
                br#"{"v":1,"op":"backend.weight","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","weight":-1}"#,
                code::BAD_REQUEST,
                &["weight:"],
            ),
            (
                br#"{"v":1,"op":"backend.max_conns","vip":"198.18.1.1:80/tcp","address":"198.18.0.11"}"#,
                code::BAD_REQUEST,
                &["missing field `max_conns`"],
            ),
            (
                br#"{"v":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":"80","protocol":"tcp"}}"#,
                code::BAD_REQUEST,
                &["vip.port: invalid type"],
            ),
            (
                br#"{"v":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":80,"protocol":"tcp","backends":[{"address":"198.18.0.11"},{"address":"198.18.0.12","wieght":2}]}}"#,
                code::BAD_REQUEST,
                &["vip.backends[1]", "unknown field `wieght`"],
            ),
            (
                br#"{"v":1,"op":"vip.scheduler","vip":"198.18.1.1:80/tcp","scheduler":"random"}"#,
                code::BAD_REQUEST,
                &["scheduler: unknown variant `random`"],
            ),
        ];
        for (line, want_code, needles) in cases {
            let e = refused(line);
            let shown = String::from_utf8_lossy(line);
            assert_eq!(e.code, *want_code, "{shown}: {e}");
            for n in *needles {
                assert!(e.message.contains(n), "{shown}: {e} (wanted {n:?})");
            }
        }
    }

    #[test]
    fn responses_round_trip_and_bad_ones_are_refused() {
        let good = Response {
            id: json!(3),
            result: Ok(json!({"vips": []})),
        };
        let line = good.to_line();
        assert_eq!(
            line,
            "{\"v\":1,\"id\":3,\"ok\":true,\"result\":{\"vips\":[]}}\n"
        );
        assert_eq!(Response::from_line(&line).unwrap(), good);

        let bad = Response {
            id: Value::Null,
            result: Err(ControlError::new("busy", "later")),
        };
        let line = bad.to_line();
        assert_eq!(line, "{\"v\":1,\"id\":null,\"ok\":false,\"error\":{\"code\":\"busy\",\"message\":\"later\"}}\n");
        assert_eq!(Response::from_line(&line).unwrap(), bad);

        assert!(matches!(
            Response::from_line("{\"v\":2,\"id\":1,\"ok\":true}"),
            Err(ResponseError::Version(2))
        ));
        assert!(matches!(
            Response::from_line("{\"v\":1,\"ok\":false}"),
            Err(ResponseError::Envelope)
        ));
        assert!(matches!(
            Response::from_line("nope"),
            Err(ResponseError::Json(_))
        ));
    }

    #[test]
    fn core_errors_keep_their_code() {
        let e = CoreError::UnknownVip { vip: vip_id() };
        let c = ControlError::from(&e);
        assert_eq!(c.code, "unknown_vip");
        assert_eq!(c.message, e.to_string());
    }

    /// The documentation is part of the contract: every `→` request line in
    /// docs/control-protocol.md decodes, or is refused with the code its `←` line shows, and
    /// every `←` line is a valid response.
    #[test]
    fn documented_examples_hold() {
        let doc = include_str!("../../../docs/control-protocol.md");
        let mut requests = 0;
        let mut ops = std::collections::BTreeSet::new();
        let mut lines = doc.lines().map(str::trim).peekable();
        while let Some(line) = lines.next() {
            let Some(req) = line.strip_prefix("→ ") else {
                continue;
            };
            let Some(resp) = lines.peek().and_then(|l| l.strip_prefix("← ")) else {
                panic!("doc: request without a response line after it: {req}");
            };
            let resp = Response::from_line(resp)
                .unwrap_or_else(|e| panic!("doc: bad response {resp}: {e}"));
            let decoded = decode_request(req.as_bytes());
            assert_eq!(decoded.id, resp.id, "doc: id not echoed: {req}");
            match (&decoded.request, &resp.result) {
                (Ok(r), _) => {
                    ops.insert(r.op());
                }
                // The protocol's own refusals are documented word for word.
                (Err(got), Err(want)) => assert_eq!(got, want, "doc: {req}"),
                (Err(got), Ok(_)) => panic!("doc: {req} is refused ({got}) but documented as ok"),
            }
            if let (Ok(_), Err(want)) = (&decoded.request, &resp.result) {
                // Refused by the daemon (unknown_vip, …), not by the protocol.
                assert!(
                    ![code::BAD_JSON, code::BAD_REQUEST, code::UNSUPPORTED_VERSION]
                        .contains(&want.code.as_str()),
                    "doc: {req} decodes but is documented as {}",
                    want.code
                );
            }
            requests += 1;
        }
        assert!(requests >= OPS.len(), "doc has {requests} examples");
        assert_eq!(
            ops.len(),
            OPS.len(),
            "doc has an example of every op: {ops:?}"
        );
    }
}
