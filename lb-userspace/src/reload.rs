//! Config reload (SIGHUP): the steps that turn the running VIPs into a config file's.
//!
//! The file is the truth: VIPs and backends it lacks are removed, new ones added, and
//! weights, drains, schedulers, idle timeouts, slow starts and allowed sources set to its
//! values (overwriting what the control socket changed since), as are the MTU, the rate
//! limits, `icmp_too_big`, `icmp_echo` and `drop_samples`. What the running balancer cannot change in
//! place is refused before any step runs: the outer sources (what every backend's tunnels
//! come from) and a VIP's table size, tunnel, source mode, agent and name. Those need a
//! restart, or the VIP removed and added again.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    config::{BackendConfig, Config, ConfigError, Scheduler, SourcePrefix, VipConfig, VipId},
    core::{BackendState, Core, CoreError, Settings},
    dataplane::Dataplane,
    health::HealthCheckConfig,
};

/// A balancer-wide setting a reload changes in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `mtu` as the file says it (`None`: the interface's), and what that is in bytes.
    Mtu {
        /// The file's `mtu`.
        file: Option<u32>,
        /// The largest IP packet towards backends from now on.
        bytes: u32,
    },
    /// `icmp_too_big`: answer packets too big for the tunnel with ICMP (true) or drop them.
    IcmpTooBig(bool),
    /// `icmp_echo`: answer echo requests to VIP addresses (true) or leave them to the host.
    IcmpEcho(bool),
    /// `record_rate_limit` in force (0: none).
    RecordRateLimit(u32),
    /// `icmp_rate_limit` in force (0: none).
    IcmpRateLimit(u32),
    /// `drop_samples` in force (0: sampling off).
    DropSamples(u32),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_cpu_second = |f: &mut std::fmt::Formatter<'_>, what: &str, n: u32| match n {
            0 => write!(f, "no limit"),
            n => write!(f, "{n} {what} per CPU and second"),
        };
        match *self {
            Self::Mtu {
                file: Some(bytes), ..
            } => write!(f, "mtu: {bytes}"),
            Self::Mtu { file: None, bytes } => write!(f, "mtu: the interface's ({bytes})"),
            Self::IcmpTooBig(true) => {
                write!(f, "icmp_too_big: oversized packets answered with ICMP")
            }
            Self::IcmpTooBig(false) => {
                write!(f, "icmp_too_big: oversized packets dropped unanswered")
            }
            Self::IcmpEcho(true) => write!(f, "icmp_echo: VIP addresses answer ping"),
            Self::IcmpEcho(false) => {
                write!(f, "icmp_echo: echo requests to VIPs left to the host")
            }
            Self::RecordRateLimit(n) => {
                write!(f, "record_rate_limit: ")?;
                per_cpu_second(f, "new flows recorded", n)
            }
            Self::IcmpRateLimit(n) => {
                write!(f, "icmp_rate_limit: ")?;
                per_cpu_second(f, "ICMP errors", n)
            }
            Self::DropSamples(0) => write!(f, "drop_samples: sampling off"),
            Self::DropSamples(n) => write!(f, "drop_samples: {n} per CPU and second"),
        }
    }
}

impl Setting {
    /// The settings that differ from `now` to `new`, in the file's order (`iface_mtu`: the
    /// interface's MTU, which a file without `mtu` means).
    fn changed(now: &Config, new: &Config, iface_mtu: u32) -> Vec<Setting> {
        let mtu = Self::Mtu {
            file: new.mtu,
            bytes: new.mtu.unwrap_or(iface_mtu),
        };
        let pairs = [
            (now.mtu != new.mtu, mtu),
            (
                now.icmp_too_big != new.icmp_too_big,
                Self::IcmpTooBig(new.icmp_too_big),
            ),
            (
                now.icmp_echo != new.icmp_echo,
                Self::IcmpEcho(new.icmp_echo),
            ),
            (
                now.record_rate_limit() != new.record_rate_limit(),
                Self::RecordRateLimit(new.record_rate_limit()),
            ),
            (
                now.icmp_rate_limit() != new.icmp_rate_limit(),
                Self::IcmpRateLimit(new.icmp_rate_limit()),
            ),
            (
                now.drop_samples() != new.drop_samples(),
                Self::DropSamples(new.drop_samples()),
            ),
        ];
        pairs
            .into_iter()
            .filter_map(|(differs, s)| differs.then_some(s))
            .collect()
    }

    /// Writes the setting into the data plane's `settings` (`Core::set_limits`); the drop
    /// samples' rate is the sampler's, not the data plane's: nothing to write.
    pub fn write_settings(self, settings: &mut Settings) {
        match self {
            Self::Mtu { bytes, .. } => settings.mtu = bytes,
            Self::IcmpTooBig(on) => settings.icmp_too_big = on,
            Self::IcmpEcho(on) => settings.icmp_echo = on,
            Self::RecordRateLimit(n) => settings.record_rate_limit = n,
            Self::IcmpRateLimit(n) => settings.icmp_rate_limit = n,
            Self::DropSamples(_) => {}
        }
    }

    /// Writes the setting into `cfg`, as the file that asked for it spells it.
    pub fn write_into(self, cfg: &mut Config) {
        match self {
            Self::Mtu { file, .. } => cfg.mtu = file,
            Self::IcmpTooBig(on) => cfg.icmp_too_big = on,
            Self::IcmpEcho(on) => cfg.icmp_echo = on,
            Self::RecordRateLimit(n) => cfg.record_rate_limit = Some(n),
            Self::IcmpRateLimit(n) => cfg.icmp_rate_limit = Some(n),
            Self::DropSamples(n) => cfg.drop_samples = Some(n),
        }
    }
}

/// One change, in the order [`plan`] lists them.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A balancer-wide setting (first: nothing else depends on them).
    Setting(Setting),
    /// A VIP the file no longer has.
    RemoveVip(VipId),
    /// A backend the file no longer lists.
    RemoveBackend(VipId, IpAddr),
    /// A backend the file adds to a running VIP.
    AddBackend(VipId, BackendConfig),
    /// A backend's new weight.
    Weight(VipId, IpAddr, u32),
    /// A backend drained (true) or undrained.
    Drain(VipId, IpAddr, bool),
    /// A backend made a backup (true) or a regular one.
    Backup(VipId, IpAddr, bool),
    /// A backend's new `max_conns` (`None`: no limit).
    MaxConns(VipId, IpAddr, Option<u32>),
    /// A VIP's new scheduler.
    Scheduler(VipId, Scheduler),
    /// A VIP's new idle timeout (`None`: the protocol's default).
    IdleTimeout(VipId, Option<u32>),
    /// A VIP's new `client_flow_rate_limit` (`None`: no limit).
    ClientFlowRateLimit(VipId, Option<u32>),
    /// A VIP's new `new_flow_rate_limit` (`None`: no limit).
    NewFlowRateLimit(VipId, Option<u32>),
    /// A VIP's new slow start (`None`: none). Turned off before a scheduler change and on
    /// after one, since the schedulers that ignore weights refuse a slow start.
    SlowStart(VipId, Option<u32>),
    /// A VIP's new client prefixes (empty: every client).
    Sources(VipId, Vec<SourcePrefix>),
    /// A VIP's new health check (`None`: the default); its backends' checks restart from
    /// their current verdicts. Before the VIP's backend steps, so added backends start
    /// with it.
    HealthCheck(VipId, Option<Box<HealthCheckConfig>>),
    /// A VIP the file adds, with its backends (boxed: the other steps are small).
    AddVip(Box<VipConfig>),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Setting(s) => write!(f, "{s}"),
            Self::RemoveVip(id) => write!(f, "remove VIP {id}"),
            Self::RemoveBackend(id, a) => write!(f, "remove backend {a} from {id}"),
            Self::AddBackend(id, b) => {
                let kind = if b.backup { "backup" } else { "backend" };
                write!(f, "add {kind} {} (weight {}) to {id}", b.address, b.weight)?;
                if b.drained {
                    write!(f, ", drained")?;
                }
                Ok(())
            }
            Self::Weight(id, a, w) => write!(f, "backend {a} of {id}: weight {w}"),
            Self::Drain(id, a, true) => write!(f, "drain backend {a} of {id}"),
            Self::Drain(id, a, false) => write!(f, "undrain backend {a} of {id}"),
            Self::Backup(id, a, true) => write!(f, "backend {a} of {id}: a backup"),
            Self::Backup(id, a, false) => write!(f, "backend {a} of {id}: no longer a backup"),
            Self::MaxConns(id, a, Some(n)) => {
                write!(f, "backend {a} of {id}: at most {n} active flows")
            }
            Self::MaxConns(id, a, None) => write!(f, "backend {a} of {id}: no flow limit"),
            Self::Scheduler(id, s) => write!(f, "VIP {id}: scheduler {}", s.name()),
            Self::IdleTimeout(id, Some(t)) => write!(f, "VIP {id}: idle timeout {t} s"),
            Self::IdleTimeout(id, None) => write!(f, "VIP {id}: idle timeout back to the default"),
            Self::NewFlowRateLimit(id, Some(n)) => {
                write!(f, "VIP {id}: at most {n} new flows a second on each CPU")
            }
            Self::NewFlowRateLimit(id, None) => write!(f, "VIP {id}: no new-flow limit"),
            Self::ClientFlowRateLimit(id, Some(n)) => write!(
                f,
                "VIP {id}: at most {n} new flows a second from one client"
            ),
            Self::ClientFlowRateLimit(id, None) => {
                write!(f, "VIP {id}: no per-client new-flow limit")
            }
            Self::SlowStart(id, Some(t)) => write!(f, "VIP {id}: slow start over {t} s"),
            Self::SlowStart(id, None) => write!(f, "VIP {id}: no slow start"),
            Self::Sources(id, s) if s.is_empty() => write!(f, "VIP {id}: admits every client"),
            Self::Sources(id, s) => write!(f, "VIP {id}: admits clients from {} prefixes", s.len()),
            Self::HealthCheck(id, _) => write!(f, "VIP {id}: new health check, checks restarted"),
            Self::AddVip(v) => write!(f, "add VIP {} with {} backends", v.id(), v.backends.len()),
        }
    }
}

/// A running VIP as the plan sees it: its definition (backends left out) and its backends.
pub struct Running<'a> {
    /// The VIP's definition.
    pub config: &'a VipConfig,
    /// Its backends by address.
    pub backends: &'a BTreeMap<IpAddr, BackendState>,
}

/// The steps from the running VIPs (under the global settings of `globals`: those the
/// daemon started with, as reloads changed them since) to `new`, which has been validated;
/// an error names the first field that cannot change without a restart, and then nothing
/// may be applied. `iface_mtu` is the MTU a file without `mtu` means (the interface's at
/// start). Settings come first, then removals, so that the slots they free are there for
/// what is added.
pub fn plan<'a>(
    globals: &Config,
    iface_mtu: u32,
    running: impl IntoIterator<Item = Running<'a>>,
    new: &Config,
) -> Result<Vec<Step>, ConfigError> {
    let restart = "changes only with a restart of xlb";
    if new.outer_source != globals.outer_source {
        return Err(ConfigError::new("outer_source", restart));
    }
    if new.hashed_source != globals.hashed_source {
        return Err(ConfigError::new("hashed_source", restart));
    }
    if new.gue_port() != globals.gue_port() {
        return Err(ConfigError::new("gue_port", restart));
    }
    let running: BTreeMap<VipId, Running<'a>> =
        running.into_iter().map(|r| (r.config.id(), r)).collect();
    let wanted: BTreeSet<VipId> = new.vips.iter().map(VipConfig::id).collect();

    let mut steps: Vec<Step> = Setting::changed(globals, new, iface_mtu)
        .into_iter()
        .map(Step::Setting)
        .collect();
    steps.extend(
        running
            .keys()
            .filter(|id| !wanted.contains(id))
            .map(|id| Step::RemoveVip(*id)),
    );
    let mut added = Vec::new();
    for (i, vip) in new.vips.iter().enumerate() {
        let id = vip.id();
        let Some(now) = running.get(&id) else {
            added.push(Step::AddVip(Box::new(vip.clone())));
            continue;
        };
        fixed_fields_unchanged(now.config, vip, &format!("vips[{i}]"))?;
        server_ids_unchanged(now.backends, vip, &format!("vips[{i}]"))?;
        if vip.health_check != now.config.health_check {
            steps.push(Step::HealthCheck(
                id,
                vip.health_check.clone().map(Box::new),
            ));
        }
        let backends = backend_steps(&id, now.backends, &vip.backends);
        let mut scheduler = Vec::new();
        let slow_start = (vip.slow_start_s != now.config.slow_start_s)
            .then_some(Step::SlowStart(id, vip.slow_start_s));
        let slow_start_off = vip.slow_start_s.is_none();
        if slow_start_off {
            scheduler.extend(slow_start.clone());
        }
        let new_scheduler = vip.scheduler != now.config.scheduler;
        if new_scheduler {
            scheduler.push(Step::Scheduler(id, vip.scheduler));
        }
        if !slow_start_off {
            scheduler.extend(slow_start);
        }
        // Backends' `max_conns` need a scheduler that counts: one that starts counting comes
        // before the limits the file sets (on backends added or kept), one that stops after
        // the limits are lifted.
        let limited = vip.backends.iter().any(|b| b.max_conns.is_some());
        if new_scheduler && limited && crate::sched::picks_by_count(vip.scheduler) {
            steps.extend(scheduler);
            steps.extend(backends);
        } else {
            steps.extend(backends);
            steps.extend(scheduler);
        }
        if vip.allowed_sources != now.config.allowed_sources {
            steps.push(Step::Sources(id, vip.allowed_sources.clone()));
        }
        if vip.idle_timeout_s != now.config.idle_timeout_s {
            steps.push(Step::IdleTimeout(id, vip.idle_timeout_s));
        }
        if vip.client_flow_rate_limit != now.config.client_flow_rate_limit {
            steps.push(Step::ClientFlowRateLimit(id, vip.client_flow_rate_limit));
        }
        if vip.new_flow_rate_limit != now.config.new_flow_rate_limit {
            steps.push(Step::NewFlowRateLimit(id, vip.new_flow_rate_limit));
        }
    }
    steps.extend(added);
    Ok(steps)
}

/// Refuses, before any step runs, steps the balancer could not take where they stand in
/// `steps`: a backend with no outer source for its family, more VIPs or backends than
/// the slots free once the removals before them are done, or an MTU that an IPv6 VIP's
/// tunnel to one of its backends could not carry IPv6's smallest packet through (the
/// backends the reload keeps and those it adds). Taken as they come, such a step would stop
/// the reload half done: a VIP whose old backends were removed before its new ones were
/// refused is left with none. (A data-plane write can still fail mid-way.)
pub fn check_fits<D: Dataplane>(
    core: &Core<D>,
    steps: &[Step],
) -> Result<(), Box<(Step, CoreError)>> {
    let cap = core.capacity();
    let (mut vips, mut slots) = (cap.free_vips, cap.free_backends);
    let mut mtu = core.settings().mtu;
    let refuse = |step: &Step, e: CoreError| Err(Box::new((step.clone(), e)));
    let full_backends = CoreError::TooManyBackends {
        max: cap.max_backends,
    };
    // Backends this reload removes do not hold a new MTU back. They go a moment after it
    // takes effect (settings come first); a large IPv6 packet to one meanwhile is answered
    // "too big" below 1280 bytes, and its sender tries again.
    let removed = |vip: &VipId, addr: IpAddr| {
        steps.iter().any(|s| match s {
            Step::RemoveVip(id) => id == vip,
            Step::RemoveBackend(id, a) => id == vip && *a == addr,
            _ => false,
        })
    };
    for step in steps {
        match step {
            Step::Setting(Setting::Mtu { bytes, .. }) => {
                mtu = *bytes;
                let kept = core.vips().flat_map(|v| {
                    v.backends
                        .keys()
                        .filter(|a| !removed(&v.config.id(), **a))
                        .map(move |a| (&v.config, *a))
                });
                for (vip, addr) in kept {
                    if let Err(e) = core.check_ipv6_minimum(vip, &addr, mtu) {
                        return refuse(step, e);
                    }
                }
            }
            Step::RemoveVip(id) => {
                vips += 1;
                slots += core.vip(id).map_or(0, |v| v.backends.len());
            }
            Step::RemoveBackend(..) => slots += 1,
            Step::AddBackend(id, b) => {
                let vip = match core.vip(id) {
                    Ok(v) => v,
                    Err(e) => return refuse(step, e),
                };
                if let Err(e) = core.check_backend_at(&vip.config, &b.address, mtu) {
                    return refuse(step, e);
                }
                if slots == 0 {
                    return refuse(step, full_backends);
                }
                slots -= 1;
            }
            Step::AddVip(v) => {
                if let Err(e) = core.check_vip_address(v) {
                    return refuse(step, e);
                }
                for b in &v.backends {
                    if let Err(e) = core.check_backend_at(v, &b.address, mtu) {
                        return refuse(step, e);
                    }
                }
                if vips == 0 {
                    return refuse(step, CoreError::TooManyVips { max: cap.max_vips });
                }
                if slots < v.backends.len() {
                    return refuse(step, full_backends);
                }
                vips -= 1;
                slots -= v.backends.len();
            }
            Step::Setting(_)
            | Step::MaxConns(..)
            | Step::Weight(..)
            | Step::Drain(..)
            | Step::Backup(..)
            | Step::Scheduler(..)
            | Step::IdleTimeout(..)
            | Step::NewFlowRateLimit(..)
            | Step::ClientFlowRateLimit(..)
            | Step::SlowStart(..)
            | Step::Sources(..)
            | Step::HealthCheck(..) => {}
        }
    }
    Ok(())
}

/// Refuses a change to what a running VIP cannot change in place.
fn fixed_fields_unchanged(now: &VipConfig, new: &VipConfig, at: &str) -> Result<(), ConfigError> {
    let readd = "cannot change on a running VIP: remove the VIP and add it again \
                 (`xlb vip remove`, then reload; its flows are scheduled anew)";
    let fields: [(&str, bool); 7] = [
        ("name", now.name == new.name),
        ("stateless", now.stateless == new.stateless),
        ("quic", now.quic == new.quic),
        ("table_size", now.table_size == new.table_size),
        ("encap", now.encap == new.encap),
        ("source", now.source == new.source),
        ("agent", now.agent == new.agent),
    ];
    match fields.iter().find(|(_, same)| !same) {
        Some((field, _)) => Err(ConfigError::new(format!("{at}.{field}"), readd)),
        None => Ok(()),
    }
}

/// Refuses a new QUIC server ID for a running backend: the connections it serves carry
/// the old one in their IDs, and a server that changes its own would have to as well.
fn server_ids_unchanged(
    now: &BTreeMap<IpAddr, BackendState>,
    new: &VipConfig,
    at: &str,
) -> Result<(), ConfigError> {
    for (j, b) in new.backends.iter().enumerate() {
        if now
            .get(&b.address)
            .is_some_and(|s| s.quic_server_id != b.quic_server_id)
        {
            return Err(ConfigError::new(
                format!("{at}.backends[{j}].quic_server_id"),
                "cannot change on a running backend: its connections carry the old one; \
                 remove the backend and add it again (`xlb backend remove`, then reload)",
            ));
        }
    }
    Ok(())
}

/// Backend removals, additions, weights, drains and backup roles that make `now` the
/// file's `want`.
fn backend_steps(
    id: &VipId,
    now: &BTreeMap<IpAddr, BackendState>,
    want: &[BackendConfig],
) -> Vec<Step> {
    let wanted: BTreeSet<IpAddr> = want.iter().map(|b| b.address).collect();
    let mut steps: Vec<Step> = now
        .keys()
        .filter(|a| !wanted.contains(a))
        .map(|a| Step::RemoveBackend(*id, *a))
        .collect();
    for b in want {
        match now.get(&b.address) {
            None => steps.push(Step::AddBackend(*id, b.clone())),
            Some(s) => {
                if s.weight != b.weight {
                    steps.push(Step::Weight(*id, b.address, b.weight));
                }
                if s.drained != b.drained {
                    steps.push(Step::Drain(*id, b.address, b.drained));
                }
                if s.backup != b.backup {
                    steps.push(Step::Backup(*id, b.address, b.backup));
                }
                if s.max_conns != b.max_conns {
                    steps.push(Step::MaxConns(*id, b.address, b.max_conns));
                }
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::DEFAULT_RECORD_RATE_LIMIT,
        core::Core,
        dataplane::{Recorder, Write},
        testing::Lcg,
    };
    use lb_common::maps::{LbConfig, CFG_F_ICMP_ECHO, CFG_F_ICMP_TOO_BIG};

    const STARTED: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
        {"address": "198.18.1.1", "port": 80, "protocol": "tcp",
         "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12", "weight": 2}]},
        {"address": "198.18.1.1", "port": 53, "protocol": "udp",
         "backends": [{"address": "198.18.0.11"}]}]}"#;

    /// The running state a config gives: every backend as configured.
    fn running(cfg: &Config) -> Vec<(VipConfig, BTreeMap<IpAddr, BackendState>)> {
        cfg.vips
            .iter()
            .map(|v| {
                let backends = v
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b.address, BackendState::new(i as u32 + 1, 1, 1, b)))
                    .collect();
                let mut config = v.clone();
                config.backends.clear();
                (config, backends)
            })
            .collect()
    }

    fn plan_for(new: &str) -> Result<Vec<Step>, ConfigError> {
        let started = Config::from_json(STARTED).unwrap();
        let now = running(&started);
        let new = Config::from_json(new).unwrap();
        plan(
            &started,
            1500,
            now.iter()
                .map(|(config, backends)| Running { config, backends }),
            &new,
        )
    }

    fn id(s: &str) -> VipId {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A VIP moving to `lc` with limits on its backends changes its scheduler before the
    /// limits; one moving back to `maglev` lifts them first. Both apply in that order.
    #[test]
    fn a_scheduler_that_allows_limits_comes_before_them_and_after_their_lifting() {
        let file = |scheduler: &str, limit: &str| {
            Config::from_json(&format!(
                r#"{{"outer_source": {{"v4": "198.18.0.2"}}, "vips": [
                {{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "{scheduler}",
                  "backends": [{{"address": "198.18.0.11" {limit}}},
                               {{"address": "198.18.0.12"}}]}}]}}"#
            ))
            .unwrap()
        };
        let plain = file("maglev", "");
        let limited = file("lc", r#", "max_conns": 10"#);
        let mut core =
            Core::new(Recorder::default(), Settings::resolve(&plain, &[], 1500, 4)).unwrap();
        core.apply(&plain).unwrap();
        let id = plain.vips[0].id();
        let b11: IpAddr = "198.18.0.11".parse().unwrap();
        let steps_to = |core: &Core<Recorder>, from: &Config, to: &Config| {
            let running = core.vips().map(|v| Running {
                config: &v.config,
                backends: &v.backends,
            });
            plan(from, 1500, running, to).unwrap()
        };
        let there = steps_to(&core, &plain, &limited);
        assert_eq!(
            there,
            [
                Step::Scheduler(id, Scheduler::Lc),
                Step::MaxConns(id, b11, Some(10))
            ]
        );
        assert_eq!(
            there[1].to_string(),
            format!("backend {b11} of {id}: at most 10 active flows")
        );
        for s in there {
            apply(&mut core, s).unwrap();
        }
        let back = steps_to(&core, &limited, &plain);
        assert_eq!(
            back,
            [
                Step::MaxConns(id, b11, None),
                Step::Scheduler(id, Scheduler::Maglev)
            ]
        );
        for s in back {
            apply(&mut core, s).unwrap();
        }
        assert_eq!(shape_of_core(&core), shape_of_file(&plain));
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(plan_for(STARTED).unwrap(), []);
    }

    #[test]
    fn every_difference_becomes_one_step_removals_first() {
        let new = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
            {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "wlc",
             "idle_timeout_s": 3600,
             "backends": [{"address": "198.18.0.12", "weight": 5, "drained": true},
                          {"address": "198.18.0.13"}]},
            {"address": "198.18.1.2", "port": 80, "protocol": "tcp",
             "backends": [{"address": "198.18.0.14"}]}]}"#;
        let web = id("198.18.1.1:80/tcp");
        let b13 = BackendConfig {
            max_conns: None,
            quic_server_id: None,
            address: ip("198.18.0.13"),
            weight: 1,
            drained: false,
            backup: false,
        };
        let steps = plan_for(new).unwrap();
        assert_eq!(
            steps[..7],
            [
                Step::RemoveVip(id("198.18.1.1:53/udp")),
                Step::RemoveBackend(web, ip("198.18.0.11")),
                Step::Weight(web, ip("198.18.0.12"), 5),
                Step::Drain(web, ip("198.18.0.12"), true),
                Step::AddBackend(web, b13),
                Step::Scheduler(web, Scheduler::Wlc),
                Step::IdleTimeout(web, Some(3600)),
            ]
        );
        assert!(
            matches!(&steps[7..], [Step::AddVip(v)] if v.id() == id("198.18.1.2:80/tcp")),
            "{steps:?}"
        );
    }

    #[test]
    fn a_new_health_check_comes_before_the_vips_backends() {
        let new = STARTED.replace(
            r#""protocol": "tcp","#,
            r#""protocol": "tcp", "health_check": {"kind": "http", "path": "/healthz"},"#,
        );
        let new = new.replace(
            r#"{"address": "198.18.0.12", "weight": 2}"#,
            r#"{"address": "198.18.0.13"}"#,
        );
        let steps = plan_for(&new).unwrap();
        let web = id("198.18.1.1:80/tcp");
        assert!(
            matches!(&steps[0], Step::HealthCheck(v, Some(hc)) if *v == web && hc.path == "/healthz"),
            "{steps:?}"
        );
        assert_eq!(steps[1], Step::RemoveBackend(web, ip("198.18.0.12")));
        assert!(
            matches!(&steps[2], Step::AddBackend(v, b) if *v == web && b.address == ip("198.18.0.13"))
        );
        assert_eq!(steps.len(), 3);
    }

    #[test]
    fn what_cannot_change_in_place_is_refused_by_field() {
        let vip = |extra: &str| {
            format!(
                r#"{{"outer_source": {{"v4": "198.18.0.2"}}, "vips": [
                {{"address": "198.18.1.1", "port": 80, "protocol": "tcp", {extra}
                 "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
            )
        };
        let cases = [
            (vip(r#""table_size": 251,"#), "vips[0].table_size"),
            (vip(r#""name": "web","#), "vips[0].name"),
            (vip(r#""agent": {"port": 5555},"#), "vips[0].agent"),
            (vip(r#""stateless": true,"#), "vips[0].stateless"),
            (STARTED.replace("198.18.0.2", "198.18.0.3"), "outer_source"),
            (
                STARTED.replace(r#""vips""#, r#""gue_port": 5555, "vips""#),
                "gue_port",
            ),
            (
                STARTED.replace(
                    r#""vips""#,
                    r#""hashed_source": {"v4": "198.19.0.0/16"}, "vips""#,
                ),
                "hashed_source",
            ),
        ];
        for (file, field) in cases {
            let Err(e) = plan_for(&file) else {
                panic!("{field}: accepted");
            };
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.len() > 20, "{e}");
        }
        // The default spelled out is no change.
        let same = format!(r#""record_rate_limit": {DEFAULT_RECORD_RATE_LIMIT}, "vips""#);
        assert_eq!(plan_for(&STARTED.replace(r#""vips""#, &same)).unwrap(), []);
        // Each new-flow limit changes in place: one step.
        let web: VipId = "198.18.1.1:80/tcp".parse().unwrap();
        for (field, step) in [
            (
                r#""new_flow_rate_limit": 100"#,
                Step::NewFlowRateLimit(web, Some(100)),
            ),
            (
                r#""client_flow_rate_limit": 5"#,
                Step::ClientFlowRateLimit(web, Some(5)),
            ),
        ] {
            let limited = STARTED.replace(
                r#""port": 80, "protocol": "tcp","#,
                &format!(r#""port": 80, "protocol": "tcp", {field},"#),
            );
            assert_eq!(plan_for(&limited).unwrap(), [step], "{field}");
        }
        // QUIC routing on the running UDP VIP.
        let quic = STARTED.replace(
            r#""port": 53, "protocol": "udp","#,
            r#""port": 53, "protocol": "udp", "quic": {},"#,
        );
        assert_eq!(plan_for(&quic).unwrap_err().field, "vips[1].quic");
    }

    /// A running backend's QUIC server ID stays (its connections carry it); a new backend
    /// brings its own.
    #[test]
    fn a_running_backends_quic_server_id_is_fixed() {
        let file = |ids: [u32; 2]| {
            Config::from_json(&format!(
                r#"{{"vips": [{{"address": "198.18.1.1", "port": 443, "protocol": "udp", "quic": {{}},
                   "backends": [{{"address": "198.18.0.11", "quic_server_id": {}}},
                                {{"address": "198.18.0.12", "quic_server_id": {}}}]}}]}}"#,
                ids[0], ids[1]
            ))
            .unwrap()
        };
        let started = file([1, 2]);
        let now = running(&started);
        let plan = |new: &Config| {
            plan(
                &started,
                1500,
                now.iter()
                    .map(|(config, backends)| Running { config, backends }),
                new,
            )
        };
        assert_eq!(plan(&file([1, 2])).unwrap(), []);
        let e = plan(&file([1, 3])).unwrap_err();
        assert_eq!(e.field, "vips[0].backends[1].quic_server_id", "{e}");
        let mut replaced = file([1, 3]);
        replaced.vips[0].backends[1].address = "198.18.0.13".parse().unwrap();
        let steps = plan(&replaced).unwrap();
        assert!(
            matches!(&steps[..], [Step::RemoveBackend(..), Step::AddBackend(_, b)] if b.quic_server_id == Some(3)),
            "{steps:?}"
        );
    }

    /// The rate limits, `icmp_too_big`, `icmp_echo` and `drop_samples` change in place: one
    /// step each,
    /// before any VIP's, written into the data plane's config (all but the sampler's rate)
    /// with the other settings and the all-ports flag as they were.
    #[test]
    fn settings_change_in_place_before_the_vips() {
        let file = STARTED.replace(
            r#""vips""#,
            r#""mtu": 1400, "icmp_too_big": false, "icmp_echo": false, "record_rate_limit": 5,
               "icmp_rate_limit": 0, "drop_samples": 7, "vips""#,
        );
        let file = file.replace(r#""weight": 2"#, r#""weight": 3"#);
        let steps = plan_for(&file).unwrap();
        let settings: Vec<Step> = [
            Setting::Mtu {
                file: Some(1400),
                bytes: 1400,
            },
            Setting::IcmpTooBig(false),
            Setting::IcmpEcho(false),
            Setting::RecordRateLimit(5),
            Setting::IcmpRateLimit(0),
            Setting::DropSamples(7),
        ]
        .into_iter()
        .map(Step::Setting)
        .collect();
        assert_eq!(steps[..6], settings[..]);
        assert!(steps.len() > 6, "the VIPs' steps follow: {steps:?}");
        let said: Vec<String> = steps[..6].iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "mtu: 1400",
                "icmp_too_big: oversized packets dropped unanswered",
                "icmp_echo: echo requests to VIPs left to the host",
                "record_rate_limit: 5 new flows recorded per CPU and second",
                "icmp_rate_limit: no limit",
                "drop_samples: 7 per CPU and second",
            ]
        );

        let started = Config::from_json(STARTED).unwrap();
        let mut core = Core::new(
            Recorder::default(),
            Settings::resolve(&started, &[], 1500, 8),
        )
        .unwrap();
        let before = crate::core::lb_config(core.settings());
        let mut globals = started.clone();
        for step in &steps[..6] {
            let Step::Setting(s) = step else {
                unreachable!()
            };
            apply(&mut core, step.clone()).unwrap();
            s.write_into(&mut globals);
        }
        let Some(Write::Config(written)) = core.dataplane().writes.last() else {
            panic!("no config written: {:?}", core.dataplane().writes);
        };
        assert_eq!(written.flags & CFG_F_ICMP_TOO_BIG, 0);
        assert_eq!(before.flags & CFG_F_ICMP_ECHO, CFG_F_ICMP_ECHO);
        assert_eq!(written.flags & CFG_F_ICMP_ECHO, 0);
        assert_eq!((written.record_rate_limit, written.icmp_rate_limit), (5, 0));
        assert_eq!(written.mtu, 1400);
        let rest = |c: &LbConfig| (c.src_v4, c.src_v6, c.hashed_src_v4);
        assert_eq!(rest(written), rest(&before));
        // Planned again from the settings now in force: nothing left to do.
        let new = Config::from_json(&file).unwrap();
        let now = running(&new);
        let again = plan(
            &globals,
            1500,
            now.iter()
                .map(|(config, backends)| Running { config, backends }),
            &new,
        )
        .unwrap();
        assert_eq!(again, []);
        // A file without `mtu` again means the interface's.
        let back = plan(
            &globals,
            1500,
            now.iter()
                .map(|(config, backends)| Running { config, backends }),
            &Config::from_json(&file.replace(r#""mtu": 1400,"#, "")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            back,
            [Step::Setting(Setting::Mtu {
                file: None,
                bytes: 1500
            })]
        );
        assert_eq!(back[0].to_string(), "mtu: the interface's (1500)");
    }

    #[test]
    fn a_slow_start_goes_off_before_and_on_after_a_scheduler_change() {
        let file = |scheduler: &str, slow: &str| {
            format!(
                r#"{{"outer_source": {{"v4": "198.18.0.2"}}, "vips": [
                {{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                  "scheduler": "{scheduler}" {slow}, "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
            )
        };
        let web = id("198.18.1.1:80/tcp");
        let weighted = Config::from_json(&file("wlc", r#", "slow_start_s": 30"#)).unwrap();
        let plain = Config::from_json(&file("lc", "")).unwrap();
        let steps = |from: &Config, to: &Config| {
            let now = running(from);
            plan(
                from,
                1500,
                now.iter()
                    .map(|(config, backends)| Running { config, backends }),
                to,
            )
            .unwrap()
        };
        assert_eq!(
            steps(&weighted, &plain),
            [
                Step::SlowStart(web, None),
                Step::Scheduler(web, Scheduler::Lc)
            ]
        );
        assert_eq!(
            steps(&plain, &weighted),
            [
                Step::Scheduler(web, Scheduler::Wlc),
                Step::SlowStart(web, Some(30))
            ]
        );
        // And a file that pairs them is refused as a whole.
        let e = Config::from_json(&file("lc", r#", "slow_start_s": 30"#)).unwrap_err();
        assert_eq!(e.field, "vips[0].slow_start_s");
        assert!(e.message.contains("use wlc"), "{}", e.message);
    }

    /// A random config file over a small universe of VIPs and backends; now and then with a
    /// field that cannot change in place (`table_size`, `name`).
    fn random_file(rng: &mut Lcg) -> String {
        let vips = [
            r#""address": "198.18.1.1", "port": 80, "protocol": "tcp""#,
            r#""address": "198.18.1.1", "port": 53, "protocol": "udp""#,
            r#""address": "198.18.1.2", "port": 80, "protocol": "tcp""#,
            r#""address": "fd00:1::1", "port": 443, "protocol": "tcp""#,
        ];
        let backends = [
            "198.18.0.11",
            "198.18.0.12",
            "198.18.0.13",
            "fd00::11",
            "fd00::12",
        ];
        let mut out = Vec::new();
        for v in vips {
            if rng.below(10) < 3 {
                continue;
            }
            let mut fields = vec![v.to_string()];
            let scheduler = rng.pick(&["maglev", "rr", "wrr", "lc", "wlc", "sh"]);
            fields.push(format!(r#""scheduler": "{scheduler}""#));
            fields.push(format!(
                r#""table_size": {}"#,
                if rng.below(20) == 0 { 251 } else { 1009 }
            ));
            if rng.below(20) == 0 {
                fields.push(r#""name": "renamed""#.into());
            }
            match rng.below(3) {
                0 => {}
                1 => fields.push(r#""idle_timeout_s": 60"#.into()),
                _ => fields.push(r#""idle_timeout_s": 3600"#.into()),
            }
            let v6 = v.contains("fd00");
            match rng.below(4) {
                0 if v6 => fields.push(r#""allowed_sources": ["fd00::/8"]"#.into()),
                0 => fields.push(r#""allowed_sources": ["198.18.0.0/15", "198.19.7.1"]"#.into()),
                1 if !v6 => fields.push(r#""allowed_sources": ["198.18.0.0/24"]"#.into()),
                _ => {}
            }
            // Refused with rr and lc: the file is then drawn again.
            if rng.below(3) == 0 {
                let secs = rng.pick(&[10, 60]);
                fields.push(format!(r#""slow_start_s": {secs}"#));
            }
            if rng.below(3) == 0 {
                let rise = rng.pick(&[1, 2, 3]);
                fields.push(format!(
                    r#""health_check": {{"kind": "tcp", "rise": {rise}}}"#
                ));
            }
            let mut bs = Vec::new();
            for a in backends {
                if rng.below(2) == 0 {
                    continue;
                }
                bs.push(format!(
                    r#"{{"address": "{a}", "weight": {}, "drained": {}, "backup": {}}}"#,
                    rng.pick(&[0, 1, 2, 5]),
                    rng.below(4) == 0,
                    rng.below(4) == 0
                ));
            }
            fields.push(format!(r#""backends": [{}]"#, bs.join(", ")));
            out.push(format!("{{{}}}", fields.join(", ")));
        }
        format!(
            r#"{{"outer_source": {{"v4": "198.18.0.2", "v6": "fd00::2"}}, "vips": [{}]}}"#,
            out.join(", ")
        )
    }

    /// What a config says of its VIPs, as comparable values: each VIP's definition without
    /// backends, and its backends' (weight, drained, backup).
    type Shape = BTreeMap<VipId, (VipConfig, BTreeMap<IpAddr, (u32, bool, bool)>)>;

    /// The shape of VIPs given as (definition without backends, backends).
    fn shape_of<'a>(
        vips: impl Iterator<Item = (&'a VipConfig, &'a BTreeMap<IpAddr, BackendState>)>,
    ) -> Shape {
        vips.map(|(config, backends)| {
            let backends = backends
                .iter()
                .map(|(a, b)| (*a, (b.weight, b.drained, b.backup)))
                .collect();
            (config.id(), (config.clone(), backends))
        })
        .collect()
    }

    fn shape_of_file(cfg: &Config) -> Shape {
        shape_of(running(cfg).iter().map(|(c, b)| (c, b)))
    }

    fn shape_of_core(core: &Core<Recorder>) -> Shape {
        shape_of(core.vips().map(|v| (&v.config, &v.backends)))
    }

    /// Applies a step to a core, as `Daemon::reload` does (less the health checkers).
    fn apply(core: &mut Core<Recorder>, step: Step) -> Result<(), crate::core::CoreError> {
        match step {
            Step::Setting(s) => core.set_limits(|settings| s.write_settings(settings)),
            Step::RemoveVip(id) => core.remove_vip(&id).map(|_| ()),
            Step::RemoveBackend(id, a) => core.remove_backend(&id, a),
            Step::AddBackend(id, b) => core.add_backend(&id, b),
            Step::Weight(id, a, w) => core.set_weight(&id, a, w),
            Step::Drain(id, a, d) => core.set_drained(&id, a, d),
            Step::Backup(id, a, b) => core.set_backup(&id, a, b),
            Step::MaxConns(id, a, n) => core.set_max_conns(&id, a, n),
            Step::Scheduler(id, s) => core.set_scheduler(&id, s),
            Step::IdleTimeout(id, t) => core.set_idle_timeout(&id, t),
            Step::NewFlowRateLimit(id, n) => core.set_new_flow_rate_limit(&id, n),
            Step::ClientFlowRateLimit(id, n) => core.set_client_flow_rate_limit(&id, n),
            Step::SlowStart(id, t) => core.set_slow_start(&id, t),
            Step::Sources(id, s) => core.set_sources(&id, s),
            Step::HealthCheck(id, hc) => core.set_health_check(&id, hc.map(|b| *b)),
            Step::AddVip(v) => core.add_vip(*v),
        }
    }

    #[test]
    fn random_reloads_reach_the_file_or_refuse_and_change_nothing() {
        let mut rng = Lcg(0x7265_6c6f_6164);
        let (mut applied, mut refused, mut steps_taken) = (0, 0, 0);
        for _run in 0..20 {
            let started = loop {
                if let Ok(c) = Config::from_json(&random_file(&mut rng)) {
                    break c;
                }
            };
            let settings = crate::core::Settings::resolve(&started, &[], 1500, 8);
            let mut core = Core::new(Recorder::default(), settings).unwrap();
            core.apply(&started).unwrap();
            for _reload in 0..25 {
                let file = random_file(&mut rng);
                let Ok(new) = Config::from_json(&file) else {
                    continue;
                };
                let before = shape_of_core(&core);
                let writes = core.dataplane().writes.len();
                let running = core.vips().map(|v| Running {
                    config: &v.config,
                    backends: &v.backends,
                });
                match plan(&started, 1500, running, &new) {
                    Err(e) => {
                        refused += 1;
                        assert!(
                            e.field.ends_with(".table_size") || e.field.ends_with(".name"),
                            "refused for {e}"
                        );
                        assert_eq!(
                            shape_of_core(&core),
                            before,
                            "a refused plan changed the core"
                        );
                        assert_eq!(core.dataplane().writes.len(), writes);
                    }
                    Ok(steps) => {
                        applied += 1;
                        steps_taken += steps.len();
                        // Nothing that applies is refused as unfit.
                        if let Err(refusal) = check_fits(&core, &steps) {
                            let (step, e) = *refusal;
                            panic!("{step} refused: {e}\n{file}");
                        }
                        for step in steps {
                            let shown = step.to_string();
                            apply(&mut core, step)
                                .unwrap_or_else(|e| panic!("{shown}: {e}\n{file}"));
                        }
                        assert_eq!(shape_of_core(&core), shape_of_file(&new), "{file}");
                        // The data plane admits exactly the listed clients, and only the
                        // VIPs with a list look them up.
                        let admitted: BTreeSet<crate::core::RangeKey> = core
                            .vips()
                            .flat_map(|v| crate::core::range_keys(v.id, &v.config.allowed_sources))
                            .collect();
                        assert_eq!(core.dataplane().source_ranges, admitted, "{file}");
                        for v in core.vips() {
                            let info = core.dataplane().vips[&crate::core::vip_key(&v.config.id())];
                            let flagged = info.flags & lb_common::maps::VIP_F_SRC_RANGES != 0;
                            assert_eq!(flagged, !v.config.allowed_sources.is_empty(), "{file}");
                        }
                        // And the data plane agrees: every VIP's live table points only at
                        // its own backends that take new flows.
                        for v in core.vips() {
                            let takers: BTreeSet<u32> = v
                                .backends
                                .values()
                                .filter(|b| b.in_table())
                                .map(|b| b.index)
                                .collect();
                            // Index 0 is "none": the table of a VIP without takers.
                            let live: BTreeSet<u32> =
                                v.table().iter().copied().filter(|&i| i != 0).collect();
                            assert!(
                                live.is_subset(&takers),
                                "{}: table {live:?}, takers {takers:?}",
                                v.config.id()
                            );
                            assert_eq!(live.is_empty(), takers.is_empty(), "{}", v.config.id());
                        }
                    }
                }
            }
        }
        assert!(
            applied > 200 && refused > 20 && steps_taken > 1000,
            "{applied} / {refused} / {steps_taken}"
        );
    }

    #[test]
    fn steps_that_would_fail_are_refused_before_any_runs() {
        let two = |second: &str| {
            Config::from_json(&format!(
                r#"{{"vips": [
                {{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                  "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
                {second}]}}"#
            ))
            .unwrap()
        };
        let started = two(r#"{"address": "198.18.1.2", "port": 80, "protocol": "tcp",
                "backends": [{"address": "198.18.0.21"}]}"#);
        // An IPv4 outer source only, and room for two VIPs.
        let addrs: Vec<IpAddr> = vec!["198.18.0.2".parse().unwrap()];
        let settings = crate::core::Settings::resolve(&started, &addrs, 1500, 2);
        let mut core = Core::new(Recorder::default(), settings).unwrap();
        core.apply(&started).unwrap();
        let steps_for = |core: &Core<Recorder>, new: &Config| {
            let running = core.vips().map(|v| Running {
                config: &v.config,
                backends: &v.backends,
            });
            plan(&started, 1500, running, new).unwrap()
        };
        // web moves to IPv6 backends, which have no outer source here, and the second VIP
        // goes: taken step by step, web would lose its backends before the refusal.
        let v6 = Config::from_json(
            r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                "backends": [{"address": "fd00::11"}, {"address": "fd00::12"}]}]}"#,
        )
        .unwrap();
        let steps = steps_for(&core, &v6);
        let (step, e) = *check_fits(&core, &steps).unwrap_err();
        assert_eq!(e.code(), "no_source", "{step}: {e}");
        assert!(matches!(step, Step::AddBackend(_, ref b) if b.address.is_ipv6()));
        // Two VIPs more where one leaves: the second is one too many.
        let three = two(r#"{"address": "198.18.1.3", "port": 80, "protocol": "tcp",
                "backends": [{"address": "198.18.0.31"}]},
               {"address": "198.18.1.4", "port": 80, "protocol": "tcp",
                "backends": [{"address": "198.18.0.41"}]}"#);
        let steps = steps_for(&core, &three);
        let (step, e) = *check_fits(&core, &steps).unwrap_err();
        assert_eq!(e.code(), "capacity", "{step}: {e}");
        assert!(matches!(step, Step::AddVip(ref v) if v.address.to_string() == "198.18.1.4"));
        // One in, one out: fits, and applies.
        let swapped = two(r#"{"address": "198.18.1.3", "port": 80, "protocol": "tcp",
                "backends": [{"address": "198.18.0.31"}]}"#);
        let steps = steps_for(&core, &swapped);
        check_fits(&core, &steps).unwrap();
        for step in steps {
            apply(&mut core, step).unwrap();
        }
        assert_eq!(shape_of_core(&core), shape_of_file(&swapped));
    }

    /// An MTU that an IPv6 VIP's tunnel to a backend could not carry IPv6's smallest packet
    /// through (1280 + 40 bytes for an IPv6 backend) is refused before any step, unless the
    /// same reload removes that backend; a VIP the reload adds is checked against the MTU it
    /// will run under.
    #[test]
    fn an_mtu_too_small_for_an_ipv6_vip_is_refused_before_any_step() {
        let file = |mtu: u32, vips: &str| {
            Config::from_json(&format!(
                r#"{{"mtu": {mtu}, "vips": [
                {{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                  "backends": [{{"address": "198.18.0.11"}}]}}{vips}]}}"#
            ))
            .unwrap()
        };
        let v6 = r#", {"address": "fd00::1:1", "port": 80, "protocol": "tcp",
                  "backends": [{"address": "fd00::11"}]}"#;
        let started = file(1500, v6);
        let addrs: Vec<IpAddr> = vec!["198.18.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let mut core = Core::new(
            Recorder::default(),
            crate::core::Settings::resolve(&started, &addrs, 1500, 4),
        )
        .unwrap();
        core.apply(&started).unwrap();
        let steps_for = |core: &Core<Recorder>, from: &Config, new: &Config| {
            let running = core.vips().map(|v| Running {
                config: &v.config,
                backends: &v.backends,
            });
            plan(from, 1500, running, new).unwrap()
        };

        let small = file(1300, v6);
        let steps = steps_for(&core, &started, &small);
        let (step, e) = *check_fits(&core, &steps).unwrap_err();
        assert!(
            matches!(step, Step::Setting(Setting::Mtu { bytes: 1300, .. })),
            "{step}"
        );
        assert!(
            e.to_string().contains("fd00::11") && e.to_string().contains("1320"),
            "{e}"
        );

        // Without the IPv6 VIP, 1300 is fine: applied, the data plane's MTU follows.
        let v4_only = file(1300, "");
        let steps = steps_for(&core, &started, &v4_only);
        check_fits(&core, &steps).unwrap();
        for step in steps {
            apply(&mut core, step).unwrap();
        }
        assert_eq!(core.settings().mtu, 1300);

        // Back to 1500 with the IPv6 VIP added: checked against 1500, not 1300.
        let steps = steps_for(&core, &v4_only, &started);
        check_fits(&core, &steps).unwrap();
        // Adding it while staying at 1300 is refused at the VIP.
        let steps = steps_for(&core, &v4_only, &small);
        let (step, _) = *check_fits(&core, &steps).unwrap_err();
        assert!(matches!(step, Step::AddVip(_)), "{step}");
    }
}
