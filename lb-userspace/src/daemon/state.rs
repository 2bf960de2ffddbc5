//! The daemon's state: the core plus one health checker per (VIP, backend), and the
//! operations the control socket offers. Every operation validates before it changes
//! anything; a refused one leaves core, checkers and data plane as they were.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use lb_common::counters::{Drop, Event, Pass, COUNTER_SLOTS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::config_file::{unix_s, FileReloadError, ReloadHistory, ReloadResult};
use crate::conntable::Census;
use crate::{
    config::{BackendConfig, Config, ConfigError, Scheduler, VipConfig, VipId},
    control::{protocol::FlowsQuery, ControlError},
    core::{AgentReport, Core, CoreError, NextHop},
    dataplane::{AyaDataplane, Counters, Dataplane},
    drops::DropLog,
    flows,
    graceful::{Outcome, Removal, Verdict},
    health::{
        CheckKind, HealthCheckConfig, HealthChecker, HealthEvent, HealthHandle, HealthState,
        Transition,
    },
    reload, slow_start,
};

/// A running health check.
struct Check {
    handle: HealthHandle,
    kind: CheckKind,
}

/// Health transitions seen, for metrics.
#[derive(Default, Clone, Copy)]
pub struct TransitionCounts {
    /// Up transitions.
    pub up: u64,
    /// Down transitions.
    pub down: u64,
}

/// A backend slot whose active-flow count the recount corrects, as read before the scan.
#[derive(Clone, Copy, Debug)]
pub struct CountedSlot {
    /// Backend index.
    pub index: u32,
    /// Its generation: the scan counts only entries recorded under it.
    pub generation: u32,
    /// `BACKEND_ACTIVE[index]` before the scan (raw, see `conntable::corrected`).
    pub before: u64,
    /// Its VIP's idle timeout in seconds (`VipConfig::idle_timeout`).
    pub idle_s: u32,
}

/// Why a reload stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file asks for something only a restart can change; nothing was applied.
    #[error("refused, nothing changed: {0}")]
    Refused(ConfigError),
    /// A step would fail on what the balancer has (outer sources, free slots); nothing was
    /// applied.
    #[error("refused, nothing changed: {step} would fail: {source}")]
    Unfit {
        /// The step that would fail.
        step: reload::Step,
        /// Why (boxed, as in `Step`).
        #[source]
        source: Box<CoreError>,
    },
    /// A step failed; the `done` steps before it were applied.
    #[error("{step} failed, after {done} changes were applied: {source}")]
    Step {
        /// The step that failed.
        step: reload::Step,
        /// How many steps were applied before it.
        done: usize,
        /// Why (boxed: a core error is large, and a reload error rare).
        #[source]
        source: Box<CoreError>,
    },
}

/// The idle timeout of each slot of `slots`, as `ConnTables::open_counted` takes them.
pub fn idle_timeouts(slots: &[CountedSlot]) -> HashMap<u32, u32> {
    slots.iter().map(|s| (s.index, s.idle_s)).collect()
}

/// How many ended graceful removals `status` and `stats` list.
pub const RECENT_REMOVALS: usize = 16;

/// A graceful removal that ended: listed by `status` and `stats`, where a client waiting
/// for it (`xlb backend remove --drain`) reads how it ended.
#[derive(Clone, Debug)]
struct EndedRemoval {
    vip: VipId,
    address: IpAddr,
    outcome: Outcome,
    drained: Duration,
    at: Instant,
}

/// Everything the daemon owns.
pub struct Daemon {
    core: Core<AyaDataplane>,
    checker: HealthChecker,
    events: mpsc::Sender<HealthEvent>,
    checks: BTreeMap<(VipId, IpAddr), Check>,
    targets: HashMap<u64, (VipId, IpAddr)>,
    next_target: u64,
    transitions: TransitionCounts,
    removals: BTreeMap<(VipId, IpAddr), Removal>,
    ended: VecDeque<EndedRemoval>,
    /// Backends in slow start, and when each began its ramp.
    ramps: BTreeMap<(VipId, IpAddr), Instant>,
    /// A stop is under way (`--shutdown-grace`): not ready.
    stopping: bool,
    /// Config reloads so far.
    reloads: ReloadHistory,
    /// The global settings in force: the config the daemon started with (its VIPs left
    /// out), as reloads changed them since. What `reload` plans from and `config` shows.
    globals: Config,
    /// The MTU a config without `mtu` means: the interface's when the daemon started.
    iface_mtu: u32,
    /// The drop samples' log, whose rate the sampler refills each CPU's budget to
    /// (`drop_samples`); `None` in tests without a sampler.
    drop_log: Option<Arc<Mutex<DropLog>>>,
}

impl Daemon {
    /// Wraps a core; health events go to `events` (the daemon feeds them back through
    /// [`Daemon::on_health_event`]).
    pub fn new(
        core: Core<AyaDataplane>,
        checker: HealthChecker,
        events: mpsc::Sender<HealthEvent>,
    ) -> Self {
        // Until `with_globals` says otherwise: the MTU the core was built with.
        let iface_mtu = core.settings().mtu;
        Self {
            core,
            checker,
            events,
            checks: BTreeMap::new(),
            targets: HashMap::new(),
            next_target: 1,
            transitions: TransitionCounts::default(),
            removals: BTreeMap::new(),
            ended: VecDeque::new(),
            ramps: BTreeMap::new(),
            stopping: false,
            reloads: ReloadHistory::new(SystemTime::now()),
            globals: Config::default(),
            iface_mtu,
            drop_log: None,
        }
    }

    /// The daemon with the global settings of the config it started with (`core` was
    /// built from them, and from the interface's MTU `iface_mtu`).
    pub fn with_globals(self, started: &Config, iface_mtu: u32) -> Self {
        let globals = Config {
            vips: Vec::new(),
            ..started.clone()
        };
        Self {
            globals,
            iface_mtu,
            ..self
        }
    }

    /// The daemon with the drop samples' log, for reloads of `drop_samples`.
    pub fn with_drop_log(self, drop_log: Arc<Mutex<DropLog>>) -> Self {
        Self {
            drop_log: Some(drop_log),
            ..self
        }
    }

    /// Notes a config reload's outcome (`ConfigFile::record`).
    pub fn note_reload(
        &mut self,
        by: &'static str,
        outcome: &Result<Vec<reload::Step>, FileReloadError>,
    ) {
        self.reloads.note(SystemTime::now(), by, outcome);
    }

    /// Config reloads so far.
    pub fn reloads(&self) -> &ReloadHistory {
        &self.reloads
    }

    /// Marks the daemon as stopping (`--shutdown-grace`): `/ready` answers 503 from now on.
    pub fn set_stopping(&mut self) {
        self.stopping = true;
    }

    /// Whether the daemon is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The core (read-only).
    pub fn core(&self) -> &Core<AyaDataplane> {
        &self.core
    }

    /// Starts health checks for every backend the core has (after the initial config),
    /// each from the core's verdict: healthy, or down for a backend that was down when the
    /// last daemon stopped (`Core::inherit_down`), which then needs `rise` passing checks.
    pub fn start_all_checks(&mut self) -> Result<(), CoreError> {
        for (vip, addr) in self.core.backend_pairs() {
            let healthy = self.core.backend(&vip, addr)?.healthy;
            let start = HealthState {
                healthy,
                ..HealthState::new(Instant::now())
            };
            self.start_check(&vip, addr, start)?;
        }
        Ok(())
    }

    fn health_config(&self, vip: &VipId) -> Result<HealthCheckConfig, CoreError> {
        Ok(self
            .core
            .vip(vip)?
            .config
            .health_check
            .clone()
            .unwrap_or_default())
    }

    /// Starts checking a backend from `start` (see `HealthChecker::spawn`).
    fn start_check(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        start: HealthState,
    ) -> Result<(), CoreError> {
        let cfg = self.health_config(vip)?;
        let id = self.next_target;
        self.next_target += 1;
        let handle = self
            .checker
            .spawn(
                id,
                vip.address,
                SocketAddr::new(addr, vip.port),
                &cfg,
                self.events.clone(),
                start,
            )
            .map_err(|e| crate::config::ConfigError::new("health_check", e.to_string()))?;
        self.targets.insert(id, (*vip, addr));
        self.checks.insert(
            (*vip, addr),
            Check {
                handle,
                kind: cfg.kind,
            },
        );
        Ok(())
    }

    fn stop_check(&mut self, vip: &VipId, addr: IpAddr) {
        if let Some(c) = self.checks.remove(&(*vip, addr)) {
            self.targets.remove(&c.handle.target_id());
            c.handle.stop();
        }
    }

    /// Applies a health transition reported by a checker. Events of checks that were
    /// stopped meanwhile (backend removed) are ignored.
    pub fn on_health_event(&mut self, ev: &HealthEvent) {
        let Some((vip, addr)) = self.targets.get(&ev.target_id).copied() else {
            return;
        };
        let healthy = ev.transition == Transition::Up;
        self.apply_verdict(&vip, addr, healthy, ev.latency, ev.error.as_deref());
    }

    /// Makes a check's verdict the core's, counted and logged as a transition if it is one.
    fn apply_verdict(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        healthy: bool,
        latency: Option<Duration>,
        error: Option<&str>,
    ) {
        let was_healthy = self.core.backend(vip, addr).ok().map(|b| b.healthy);
        if healthy && was_healthy == Some(false) {
            // Lowered before it rejoins, so that its first table already carries the ramp.
            self.begin_ramp(vip, addr, Instant::now());
        }
        match self.core.set_health(vip, addr, healthy) {
            Ok(true) => {
                if healthy {
                    self.transitions.up += 1;
                    log::info!("backend {addr} of {vip} is up ({latency:?})");
                } else {
                    self.transitions.down += 1;
                    log::warn!(
                        "backend {addr} of {vip} is down: {}",
                        error.unwrap_or("check failed")
                    );
                }
            }
            Ok(false) => {}
            Err(e) => log::error!("applying health of {addr} ({vip}): {e}"),
        }
    }

    /// Adds a VIP and starts checking its backends.
    pub fn add_vip(&mut self, cfg: VipConfig) -> Result<(), CoreError> {
        let id = cfg.id();
        let addrs: Vec<IpAddr> = cfg.backends.iter().map(|b| b.address).collect();
        self.core.add_vip(cfg)?;
        for a in addrs {
            self.start_check(&id, a, HealthState::new(Instant::now()))?;
        }
        Ok(())
    }

    /// Removes a VIP and stops its checks (and its backends' graceful removals).
    pub fn remove_vip(&mut self, id: &VipId) -> Result<(), CoreError> {
        let cfg = self.core.remove_vip(id)?;
        for b in cfg.backends {
            self.stop_check(id, b.address);
            self.removals.remove(&(*id, b.address));
            self.ramps.remove(&(*id, b.address));
        }
        Ok(())
    }

    /// Adds a backend and starts checking it; with a slow start, at the ramp's first step.
    pub fn add_backend(&mut self, vip: &VipId, b: BackendConfig) -> Result<(), CoreError> {
        let addr = b.address;
        let now = Instant::now();
        match self.slow_start(vip) {
            Some(period) => {
                let first = slow_start::ramp_pct(Duration::ZERO, period);
                self.core.add_backend_ramped(vip, b, first)?;
                self.ramp_started(vip, addr, now, period);
            }
            None => self.core.add_backend(vip, b)?,
        }
        self.start_check(vip, addr, HealthState::new(now))
    }

    /// The VIP's slow start, if it has one.
    fn slow_start(&self, vip: &VipId) -> Option<Duration> {
        let v = self.core.vip(vip).ok()?;
        v.config
            .slow_start_s
            .map(|s| Duration::from_secs(u64::from(s)))
    }

    /// Starts (or starts over) a backend's slow start at `now`, if its VIP has one: its
    /// weight drops to the ramp's first step.
    fn begin_ramp(&mut self, vip: &VipId, addr: IpAddr, now: Instant) {
        let Some(period) = self.slow_start(vip) else {
            return;
        };
        let first = slow_start::ramp_pct(Duration::ZERO, period);
        match self.core.set_ramp(vip, addr, first) {
            Ok(_) => self.ramp_started(vip, addr, now, period),
            Err(e) => log::warn!(
                "slow start of backend {addr} of {vip}: {e}; it comes in at its whole weight"
            ),
        }
    }

    /// Records a ramp begun at `now` (its first step written) for [`Self::refresh_ramps`].
    fn ramp_started(&mut self, vip: &VipId, addr: IpAddr, now: Instant, period: Duration) {
        self.ramps.insert((*vip, addr), now);
        log::info!(
            "backend {addr} of {vip}: slow start, all of its weight in {} s",
            period.as_secs()
        );
    }

    /// Steps every slow start to its share at `now` (called once a second); a ramp whose
    /// period is over (or whose VIP dropped its slow start) ends at 100 %.
    pub fn refresh_ramps(&mut self, now: Instant) {
        let ramps: Vec<((VipId, IpAddr), Instant)> =
            self.ramps.iter().map(|(k, t)| (*k, *t)).collect();
        for ((vip, addr), began) in ramps {
            let pct = self.slow_start(&vip).map_or(100, |period| {
                slow_start::ramp_pct(now.saturating_duration_since(began), period)
            });
            match self.core.set_ramp(&vip, addr, pct) {
                Ok(_) if pct == 100 => {
                    self.ramps.remove(&(vip, addr));
                    log::info!("backend {addr} of {vip}: slow start done, all of its weight");
                }
                Ok(_) => {}
                // Removed meanwhile: its ramp goes with it.
                Err(CoreError::UnknownVip { .. } | CoreError::UnknownBackend { .. }) => {
                    self.ramps.remove(&(vip, addr));
                }
                // A write that failed: the next second tries again.
                Err(e) => log::warn!("slow start of backend {addr} of {vip}: {e}"),
            }
        }
    }

    /// Sets a VIP's slow start; turned off, its ramps end at once (whole weights).
    pub fn set_slow_start(
        &mut self,
        vip: &VipId,
        slow_start_s: Option<u32>,
    ) -> Result<(), CoreError> {
        self.core.set_slow_start(vip, slow_start_s)?;
        if slow_start_s.is_none() {
            self.refresh_ramps(Instant::now());
        }
        Ok(())
    }

    /// Removes a backend and stops its check (and its graceful removal, if one runs).
    pub fn remove_backend(&mut self, vip: &VipId, addr: IpAddr) -> Result<(), CoreError> {
        self.core.remove_backend(vip, addr)?;
        self.stop_check(vip, addr);
        self.removals.remove(&(*vip, addr));
        self.ramps.remove(&(*vip, addr));
        Ok(())
    }

    /// Starts a graceful removal (`graceful`) at `now`: drains the backend;
    /// [`Self::advance_removals`] removes it once it has carried no packet for `quiet`, or at
    /// `deadline`. One already running for the backend starts over with these periods.
    /// Returns whether one was.
    pub fn remove_gracefully(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        quiet: Duration,
        deadline: Duration,
        now: Instant,
    ) -> Result<bool, CoreError> {
        let slot = self.core.backend(vip, addr)?.index;
        self.core.set_drained(vip, addr, true)?;
        let removal = Removal::new(slot, quiet, deadline, now);
        Ok(self.removals.insert((*vip, addr), removal).is_some())
    }

    /// Follows the graceful removals: removes each backend that has gone quiet or reached
    /// its deadline by `now`. Called every [`crate::graceful::POLL`].
    pub fn advance_removals(&mut self, now: Instant) {
        let keys: Vec<(VipId, IpAddr)> = self.removals.keys().copied().collect();
        for key in keys {
            let (vip, addr) = key;
            let dp = self.core.dataplane();
            let current = self
                .core
                .backend(&vip, addr)
                .ok()
                .map(|b| (b.index, dp.backend(b.index).packets));
            let Some(r) = self.removals.get_mut(&key) else {
                continue;
            };
            let verdict = r.observe(now, current);
            let drained = r.draining(now);
            let outcome = match verdict {
                Verdict::Busy => continue,
                // Removed or replaced by other means, which dropped the removal already;
                // kept for safety.
                Verdict::Gone => {
                    self.removals.remove(&key);
                    continue;
                }
                Verdict::Quiet => Outcome::Quiet,
                Verdict::TimedOut => Outcome::Deadline,
            };
            self.removals.remove(&key);
            let secs = drained.as_secs_f64();
            let outcome = match (self.remove_backend(&vip, addr), outcome) {
                (Ok(()), Outcome::Quiet) => {
                    log::info!(
                        "removed backend {addr} of {vip}: no packet for the quiet period, after {secs:.1} s of draining"
                    );
                    Outcome::Quiet
                }
                (Ok(()), _) => {
                    log::warn!(
                        "removed backend {addr} of {vip} at the end of its {secs:.0} s drain; it still carried traffic"
                    );
                    Outcome::Deadline
                }
                (Err(e), _) => {
                    log::error!(
                        "removing backend {addr} of {vip} after its drain: {e}; it stays, drained"
                    );
                    Outcome::Failed
                }
            };
            if self.ended.len() == RECENT_REMOVALS {
                self.ended.pop_front();
            }
            self.ended.push_back(EndedRemoval {
                vip,
                address: addr,
                outcome,
                drained,
                at: now,
            });
        }
    }

    /// Whether a graceful removal of the backend runs.
    pub fn removing(&self, vip: &VipId, addr: IpAddr) -> bool {
        self.removals.contains_key(&(*vip, addr))
    }

    /// The graceful removal of a backend, where it stands (`null`: none runs).
    fn removal_view(&self, vip: &VipId, addr: IpAddr, now: Instant) -> Value {
        self.removals
            .get(&(*vip, addr))
            .map_or(Value::Null, |r| json!(r.view(now)))
    }

    /// The graceful removals that ended lately, newest last.
    fn ended_removals(&self, now: Instant) -> Value {
        let ended: Vec<Value> = self
            .ended
            .iter()
            .map(|e| {
                json!({
                    "vip": e.vip,
                    "address": e.address,
                    "outcome": e.outcome,
                    "drained_s": e.drained.as_secs_f64(),
                    "ago_s": now.saturating_duration_since(e.at).as_secs_f64(),
                })
            })
            .collect();
        Value::Array(ended)
    }

    /// Sets a weight.
    pub fn set_weight(&mut self, vip: &VipId, addr: IpAddr, weight: u32) -> Result<(), CoreError> {
        self.core.set_weight(vip, addr, weight)
    }

    /// Drains or undrains. Undraining cancels the backend's graceful removal: returns
    /// whether one was running.
    pub fn set_drained(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        drained: bool,
    ) -> Result<bool, CoreError> {
        if !drained && self.core.backend(vip, addr)?.drained {
            self.begin_ramp(vip, addr, Instant::now());
        }
        self.core.set_drained(vip, addr, drained)?;
        let cancelled = !drained && self.removals.remove(&(*vip, addr)).is_some();
        if cancelled {
            log::info!("backend {addr} of {vip} undrained: its graceful removal is cancelled");
        }
        Ok(cancelled)
    }

    /// Makes a backend a backup or a regular one (no flow moves).
    pub fn set_backup(&mut self, vip: &VipId, addr: IpAddr, backup: bool) -> Result<(), CoreError> {
        self.core.set_backup(vip, addr, backup)
    }

    /// Sets a backend's `max_conns` (`None`: no limit).
    pub fn set_max_conns(
        &mut self,
        vip: &VipId,
        addr: IpAddr,
        max_conns: Option<u32>,
    ) -> Result<(), CoreError> {
        self.core.set_max_conns(vip, addr, max_conns)
    }

    /// Switches the scheduler.
    pub fn set_scheduler(&mut self, vip: &VipId, s: Scheduler) -> Result<(), CoreError> {
        self.core.set_scheduler(vip, s)
    }

    /// Sets a VIP's health check and restarts its backends' checks with it. Each new check
    /// starts from the verdict of the one it replaces: a down backend stays out until
    /// `rise` successes of the new check, an up one stays in until `fall` failures.
    pub fn set_health_check(
        &mut self,
        vip: &VipId,
        check: Option<HealthCheckConfig>,
    ) -> Result<(), CoreError> {
        self.core.set_health_check(vip, check)?;
        let backends: Vec<(IpAddr, bool)> = self
            .core
            .vip(vip)?
            .backends
            .iter()
            .map(|(a, b)| (*a, b.healthy))
            .collect();
        for (addr, healthy) in backends {
            // The old check's verdict and totals go on; without one, the core's verdict.
            let start = match self.checks.get(&(*vip, addr)) {
                Some(c) => c.handle.snapshot().continued(),
                None => HealthState {
                    healthy,
                    ..HealthState::new(Instant::now())
                },
            };
            self.stop_check(vip, addr);
            if start.healthy != healthy {
                // The old check flipped, and its event waits for the lock this change
                // holds: once the check is stopped, that event is ignored, and the new check,
                // starting from the flipped verdict, would never report it again. Applied
                // here instead, so that core and checker agree.
                self.apply_verdict(
                    vip,
                    addr,
                    start.healthy,
                    start.last_latency,
                    start.last_error.as_deref(),
                );
            }
            self.start_check(vip, addr, start)?;
        }
        Ok(())
    }

    /// See `Core::set_sources`.
    pub fn set_sources(
        &mut self,
        vip: &VipId,
        sources: Vec<crate::config::SourcePrefix>,
    ) -> Result<(), CoreError> {
        self.core.set_sources(vip, sources)
    }

    /// See `Core::refresh_flow_caches`.
    pub fn refresh_flow_caches(
        &mut self,
        slots: &std::collections::BTreeSet<(u32, u32)>,
    ) -> Result<usize, CoreError> {
        self.core.refresh_flow_caches(slots)
    }

    /// See `Core::set_idle_timeout`.
    pub fn set_idle_timeout(&mut self, vip: &VipId, idle_s: Option<u32>) -> Result<(), CoreError> {
        self.core.set_idle_timeout(vip, idle_s)
    }

    /// Sets or lifts a VIP's `client_flow_rate_limit`.
    pub fn set_client_flow_rate_limit(
        &mut self,
        vip: &VipId,
        limit: Option<u32>,
    ) -> Result<(), CoreError> {
        self.core.set_client_flow_rate_limit(vip, limit)
    }

    /// Sets or lifts a VIP's `new_flow_rate_limit`.
    pub fn set_new_flow_rate_limit(
        &mut self,
        vip: &VipId,
        limit: Option<u32>,
    ) -> Result<(), CoreError> {
        self.core.set_new_flow_rate_limit(vip, limit)
    }

    /// Makes the running VIPs and settings the config file's `new` (validated): see
    /// `reload`. A change that needs a restart is refused before anything changes. A step
    /// that fails (out of slots, no outer source) stops the reload there: the error says
    /// which, and the steps before it stay. Returns the steps taken.
    pub fn reload(&mut self, new: &Config) -> Result<Vec<reload::Step>, ReloadError> {
        let steps = self.plan_reload(new)?;
        for (done, step) in steps.iter().enumerate() {
            let applied = match step.clone() {
                reload::Step::Setting(s) => self.set_setting(s),
                reload::Step::RemoveVip(id) => self.remove_vip(&id),
                reload::Step::RemoveBackend(id, a) => self.remove_backend(&id, a),
                reload::Step::AddBackend(id, b) => self.add_backend(&id, b),
                reload::Step::Weight(id, a, w) => self.set_weight(&id, a, w),
                reload::Step::Drain(id, a, d) => self.set_drained(&id, a, d).map(|_| ()),
                reload::Step::Backup(id, a, b) => self.set_backup(&id, a, b),
                reload::Step::MaxConns(id, a, n) => self.set_max_conns(&id, a, n),
                reload::Step::Scheduler(id, s) => self.set_scheduler(&id, s),
                reload::Step::IdleTimeout(id, t) => self.set_idle_timeout(&id, t),
                reload::Step::NewFlowRateLimit(id, n) => self.set_new_flow_rate_limit(&id, n),
                reload::Step::ClientFlowRateLimit(id, n) => self.set_client_flow_rate_limit(&id, n),
                reload::Step::SlowStart(id, t) => self.set_slow_start(&id, t),
                reload::Step::Sources(id, s) => self.set_sources(&id, s),
                reload::Step::HealthCheck(id, hc) => self.set_health_check(&id, hc.map(|b| *b)),
                reload::Step::AddVip(v) => self.add_vip(*v),
            };
            if let Err(source) = applied {
                return Err(ReloadError::Step {
                    step: step.clone(),
                    done,
                    source: Box::new(source),
                });
            }
        }
        Ok(steps)
    }

    /// Changes a balancer-wide setting in place (a reload's step): the data plane's config
    /// for the MTU, `icmp_too_big` and the rate limits, the sampler's rate for
    /// `drop_samples` (each CPU's budget is refilled to it within a second).
    fn set_setting(&mut self, setting: reload::Setting) -> Result<(), CoreError> {
        match setting {
            reload::Setting::DropSamples(n) => {
                if let Some(log) = &self.drop_log {
                    // A panic elsewhere cannot leave a number half written.
                    log.lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .set_per_second(n);
                }
            }
            other => self.core.set_limits(|s| other.write_settings(s))?,
        }
        setting.write_into(&mut self.globals);
        Ok(())
    }

    /// The running VIPs and backends as a config file (`dump-config`): the global settings
    /// in force (the file's the daemon started with, as reloads changed them since) and
    /// every VIP as it runs now, with what the control socket changed. Reloading it
    /// changes nothing.
    pub fn running_config(&self) -> Config {
        Config {
            vips: self.core.vips().map(|v| v.running_config()).collect(),
            ..self.globals.clone()
        }
    }

    /// The steps [`Daemon::reload`] would take to make the running VIPs and settings
    /// `new`'s, changing nothing; refused as `reload` refuses before its first step.
    pub fn plan_reload(&self, new: &Config) -> Result<Vec<reload::Step>, ReloadError> {
        let running = self.core.vips().map(|v| reload::Running {
            config: &v.config,
            backends: &v.backends,
        });
        let steps = reload::plan(&self.globals, self.iface_mtu, running, new)
            .map_err(ReloadError::Refused)?;
        reload::check_fits(&self.core, &steps).map_err(|refusal| {
            let (step, e) = *refusal;
            ReloadError::Unfit {
                step,
                source: Box::new(e),
            }
        })?;
        Ok(steps)
    }

    /// Every (VIP, backend) pair, for next-hop refreshes.
    pub fn backends(&self) -> Vec<(VipId, IpAddr)> {
        self.core.backend_pairs()
    }

    /// Records a next hop (or its loss); unknown pairs (removed meanwhile) are ignored.
    pub fn set_nexthop(&mut self, vip: &VipId, addr: IpAddr, hop: Option<NextHop>) {
        record_nexthop(&mut self.core, vip, addr, hop);
    }

    /// Registers the egress interface of a backend whose neighbour is still unresolved
    /// (`Core::add_tx_port`).
    pub fn add_tx_port(&mut self, ifindex: u32) {
        add_tx_port(&mut self.core, ifindex);
    }

    /// Agent endpoints of every `agent` VIP's backends, with the VIP's poll interval.
    pub fn agent_targets(&self) -> Vec<(VipId, IpAddr, SocketAddr, Duration)> {
        let mut out = Vec::new();
        for v in self.core.vips() {
            if v.config.scheduler != Scheduler::Agent {
                continue;
            }
            let Some(agent) = &v.config.agent else {
                continue;
            };
            for addr in v.backends.keys() {
                out.push((
                    v.config.id(),
                    *addr,
                    SocketAddr::new(*addr, agent.port),
                    Duration::from_millis(agent.interval_ms),
                ));
            }
        }
        out
    }

    /// Applies an agent's report (a failed poll changes nothing: health checks decide
    /// whether the backend itself is down).
    pub fn apply_agent(&mut self, vip: &VipId, addr: IpAddr, report: &anyhow::Result<AgentReport>) {
        let held_back = self
            .core
            .backend(vip, addr)
            .is_ok_and(|b| b.agent_down || b.agent_drain);
        if let Ok(r) = report {
            if held_back && !r.down && !r.drain {
                // Back in service by its agent's word: a slow start, as after a health check.
                self.begin_ramp(vip, addr, Instant::now());
            }
        }
        match report {
            Ok(r) => match self.core.set_agent(vip, addr, *r) {
                Ok(true) => log::info!("agent of {addr} ({vip}) reports {r:?}"),
                Ok(false)
                | Err(CoreError::UnknownVip { .. } | CoreError::UnknownBackend { .. }) => {}
                Err(e) => log::error!("applying the agent of {addr} ({vip}): {e}"),
            },
            Err(e) => log::debug!("agent of {addr} ({vip}): {e:#}"),
        }
    }

    /// The backend slots whose active-flow counts a recount corrects (those of VIPs whose
    /// scheduler counts: `lc`, `wlc`, `lrt`), with each slot's generation and its counter
    /// as stored now: the `before` of [`Daemon::apply_recount`]. Empty when no VIP counts.
    pub fn counted_slots(&self) -> Vec<CountedSlot> {
        let dp = self.core.dataplane();
        self.core
            .counted_backends()
            .map(|(vip, b)| CountedSlot {
                index: b.index,
                generation: b.generation,
                before: dp.active_counter(b.index),
                idle_s: vip.idle_timeout(),
            })
            .collect()
    }

    /// Writes the recounted active-flow counts: for each slot of `slots` (read before the
    /// scan) that still holds the same backend, the open counted flows the scan found
    /// (`tally`, by slot and generation) plus what the data plane counted during the scan
    /// (`conntable::corrected`). Returns the slots written and the drift taken out (the
    /// counts' sum before less after).
    pub fn apply_recount(
        &mut self,
        slots: &[CountedSlot],
        tally: &HashMap<(u32, u32), u64>,
    ) -> (usize, i64) {
        let (mut written, mut drift) = (0, 0i64);
        for slot in slots {
            let now = self.core.dataplane().active_counter(slot.index);
            let open = tally
                .get(&(slot.index, slot.generation))
                .copied()
                .unwrap_or(0);
            let value = crate::conntable::corrected(slot.before, now, open);
            if value == now {
                continue;
            }
            match self
                .core
                .set_active_count(slot.index, slot.generation, value)
            {
                Ok(true) => {
                    written += 1;
                    drift += (now as i64).wrapping_sub(value as i64);
                }
                Ok(false) => {}
                Err(e) => log::warn!("recount of backend slot {}: {e}", slot.index),
            }
        }
        (written, drift)
    }

    /// `lrt` VIPs: scales each backend's weight by how its expected response time compares
    /// with the best one's. Expected response time = health-check latency (EWMA) × (1 +
    /// active flows); factor = 100 % × best / own, at least 1 %. Backends without a latency
    /// sample yet keep 100 %.
    pub fn refresh_lrt(&mut self) {
        let dp = self.core.dataplane();
        let mut updates = Vec::new();
        for v in self.core.vips() {
            if v.config.scheduler != Scheduler::Lrt {
                continue;
            }
            let id = v.config.id();
            let scores: Vec<(IpAddr, Option<f64>)> = v
                .backends
                .iter()
                .map(|(addr, b)| {
                    let lat = self
                        .health(&id, *addr)
                        .and_then(|(_, h)| h.latency_ewma)
                        .map(|d| d.as_secs_f64());
                    (
                        *addr,
                        lat.map(|l| l * (1.0 + dp.active_flows(b.index) as f64)),
                    )
                })
                .collect();
            let best = scores
                .iter()
                .filter_map(|(_, s)| *s)
                .fold(f64::INFINITY, f64::min);
            for (addr, score) in scores {
                let pct = match score {
                    Some(s) if s > 0.0 && best.is_finite() => {
                        ((best / s) * 100.0).round().clamp(1.0, 100.0) as u32
                    }
                    _ => 100,
                };
                updates.push((id, addr, pct));
            }
        }
        for (id, addr, pct) in updates {
            match self.core.set_factor(&id, addr, pct) {
                Ok(true) => log::info!("lrt: backend {addr} of {id} now gets {pct}% of its weight"),
                Ok(false) => {}
                Err(e) => log::error!("lrt factor of {addr} ({id}): {e}"),
            }
        }
    }

    /// Health snapshot of one backend.
    pub fn health(&self, vip: &VipId, addr: IpAddr) -> Option<(CheckKind, HealthState)> {
        self.checks
            .get(&(*vip, addr))
            .map(|c| (c.kind, c.handle.snapshot()))
    }

    /// Health transitions so far.
    pub fn transitions(&self) -> TransitionCounts {
        self.transitions
    }

    /// The `status` result: VIPs, backends, weights, health, counters; `census`: the
    /// connection tables' entries per backend slot and how full each table is (scanned by
    /// the caller without the lock; `None` when the scan failed: no flows counted).
    pub fn status(&self, census: Option<&Census>) -> Value {
        let no_flows = HashMap::new();
        let flows = census.map_or(&no_flows, |c| &c.per_backend);
        let dp = self.core.dataplane();
        let now = Instant::now();
        let vips: Vec<Value> = self
            .core
            .vips()
            .map(|v| {
                let id = v.config.id();
                let t = v.traffic(dp);
                let backends: Vec<Value> = v
                    .backends
                    .iter()
                    .map(|(addr, b)| {
                        let bt = dp.backend(b.index);
                        let removal = self.removal_view(&id, *addr, now);
                        let state = if !b.active() {
                            "down"
                        } else if !removal.is_null() {
                            "removing"
                        } else if b.drained || b.agent_drain {
                            "drained"
                        } else if b.standby {
                            "standby"
                        } else {
                            "up"
                        };
                        let health = self.health(&id, *addr).map(|(kind, h)| {
                            json!({
                                "kind": kind,
                                "checks_ok": h.checks_ok,
                                "checks_failed": h.checks_failed,
                                "latency_ms": h.latency_ewma.map(|d| d.as_secs_f64() * 1000.0),
                                "last_error": h.last_error,
                            })
                        });
                        json!({
                            "address": addr,
                            "backup": b.backup,
                            "weight": b.weight,
                            "effective_weight": b.effective_weight(),
                            "state": state,
                            "agent": {"down": b.agent_down, "drain": b.agent_drain, "pct": b.factor_pct},
                            "slow_start_pct": b.ramp_pct,
                            "active_flows": flows.get(&b.index).copied().unwrap_or(0),
                            "active_estimate": dp.active_flows(b.index),
                            "max_conns": b.max_conns,
                            "quic_server_id": b.quic_server_id,
                            "packets": bt.packets,
                            "bytes": bt.bytes,
                            "new_flows": bt.new_flows,
                            "next_hop": b.nexthop.map(|h| mac_string(&h.dmac)),
                            "path_mtu": b.nexthop.map(|h| h.mtu),
                            "health": health,
                            "removal": removal,
                        })
                    })
                    .collect();
                json!({
                    "vip": id,
                    "name": v.config.name,
                    "scheduler": v.config.scheduler,
                    "stateless": v.config.stateless,
                    "encap": v.config.encap,
                    "quic": v.config.quic,
                    "new_flow_rate_limit": v.config.new_flow_rate_limit,
                    "client_flow_rate_limit": v.config.client_flow_rate_limit,
                    "table_size": v.config.table_size.unwrap_or(lb_common::maps::DEFAULT_TABLE_SIZE),
                    "slow_start_s": v.config.slow_start_s,
                    "allowed_sources": v.config.allowed_sources,
                    "idle_timeout_s": crate::sched::counts_active(v.config.scheduler)
                        .then(|| v.config.idle_timeout()),
                    "packets": t.packets,
                    "bytes": t.bytes,
                    "new_flows": t.new_flows,
                    "new_flows_limited": {
                        "vip": v.limited(dp).vip,
                        "client": v.limited(dp).client,
                    },
                    "backends": backends,
                })
            })
            .collect();
        // How full the tables are: beyond, the kernel evicts the least recently used flows
        // to record new ones (`--max-conns` sizes them).
        let conn_tables = census.map(|c| json!({"v4": c.v4, "v6": c.v6}));
        json!({ "vips": vips, "ended_removals": self.ended_removals(now),
                "config": self.reload_view(), "conn_tables": conn_tables })
    }

    /// `status`' `config`: when the running config was loaded, the reloads by result, and
    /// the last one.
    fn reload_view(&self) -> Value {
        let h = &self.reloads;
        let last = h.last().map(|l| {
            json!({"at_unix_s": unix_s(l.at), "by": l.by, "result": l.result.name(), "error": l.error})
        });
        let counts: serde_json::Map<String, Value> = ReloadResult::ALL
            .iter()
            .map(|r| (r.name().to_owned(), json!(h.count(*r))))
            .collect();
        json!({"loaded_at_unix_s": unix_s(h.loaded_at()), "reloads": counts, "last_reload": last})
    }

    /// Where the flow from `client` to `vip` goes (`flow`): its connection-table entry and
    /// the backend of its next packet (`crate::placement`). A client of the other family is
    /// refused: no such flow can exist.
    pub fn flow(&self, vip: &VipId, client: SocketAddr) -> Result<Value, ControlError> {
        if vip.all_ports() {
            return Err(ControlError::new(
                crate::control::protocol::code::BAD_REQUEST,
                format!(
                    "{vip} serves every port: name the port the client connects to, e.g. {}",
                    VipId { port: 80, ..*vip }
                ),
            ));
        }
        // As the data plane: the VIP on the port, else its address's all-ports VIP.
        let state = match self.core.vip(vip) {
            Ok(state) => state,
            Err(e) => self.core.vip(&vip.on_all_ports()).map_err(|_| e)?,
        };
        if client.is_ipv4() != vip.address.is_ipv4() {
            return Err(ControlError::new(
                crate::control::protocol::code::BAD_REQUEST,
                format!(
                    "client {client} and VIP {vip} are of different families: no flow joins them"
                ),
            ));
        }
        let key = lb_common::flow::FlowKey::between(
            client.ip(),
            client.port(),
            vip.address,
            vip.port,
            vip.protocol.number(),
        );
        let dp = self.core.dataplane();
        let p = crate::placement::place(
            state,
            &key,
            dp.conn(&key),
            |i| dp.active_flows(i),
            crate::conntable::monotonic_coarse_s(),
        );
        Ok(json!({
            "vip": vip.to_string(),
            "service": state.config.id().to_string(),
            "client": client.to_string(),
            "scheduler": state.config.scheduler.name(),
            "stateless": state.config.stateless,
            "recorded": p.recorded,
            "next": p.next,
        }))
    }

    /// What a `flows` scan needs from the core: the names of its entries, the filter the
    /// request asks for and its limit; or why the request is refused (a VIP or backend that
    /// does not exist, a limit out of range).
    pub fn flows_scope(
        &self,
        q: &FlowsQuery,
    ) -> Result<(flows::Names, flows::Filter, usize), ControlError> {
        let limit = flows::check_limit(q.limit)
            .map_err(|m| CoreError::Invalid(ConfigError::new("limit", m)))?;
        let (names, mut filter) = self.flows_filter(q.vip, q.backend, q.client)?;
        filter.idle_over_s = q.idle_over_s;
        Ok((names, filter, limit))
    }

    /// The names of the tables' entries and the filter for the flows of `vip`, on
    /// `backend`, of clients in `client` (each optional); or why they are refused (a VIP or
    /// backend that does not exist).
    pub fn flows_filter(
        &self,
        vip: Option<VipId>,
        backend: Option<IpAddr>,
        client: Option<crate::config::SourcePrefix>,
    ) -> Result<(flows::Names, flows::Filter), ControlError> {
        // As `flow`: the VIP on the port, else its address's all-ports VIP, whose flows to
        // that port are meant.
        let vip = match vip {
            None => None,
            Some(id) => Some(match self.core.vip(&id) {
                Ok(state) => (state, None),
                Err(e) if !id.all_ports() => {
                    let state = self.core.vip(&id.on_all_ports()).map_err(|_| e)?;
                    (state, Some(id.port))
                }
                Err(e) => return Err(e.into()),
            }),
        };
        if let Some(addr) = backend {
            match vip {
                Some((state, _)) => {
                    self.core.backend(&state.config.id(), addr)?;
                }
                None if self.core.vips().any(|v| v.backends.contains_key(&addr)) => {}
                None => {
                    return Err(ControlError::new(
                        "unknown_backend",
                        format!("no VIP has backend {addr}; `xlb status` lists them"),
                    ))
                }
            }
        }
        let filter = flows::Filter {
            vip: vip.map(|(state, port)| (state.id, port)),
            backend,
            client,
            outside: None,
            idle_over_s: None,
        };
        Ok((flows::Names::of(self.core.vips()), filter))
    }

    /// The `stats` result: counters by reason, per-VIP traffic.
    pub fn stats(&self) -> Value {
        let dp = self.core.dataplane();
        let now = Instant::now();
        let reasons = dp.reasons();
        let mut by_name = serde_json::Map::new();
        for slot in 0..COUNTER_SLOTS {
            if let Some(name) = lb_common::counters::slot_name(slot) {
                by_name.insert(
                    name.to_string(),
                    json!(reasons.get(slot as usize).copied().unwrap_or(0)),
                );
            }
        }
        let vips: Vec<Value> = self
            .core
            .vips()
            .map(|v| {
                let t = v.traffic(dp);
                // Per backend too: `stats` reads counters only (no table scan, unlike
                // `status`), so it is what a client polls (`xlb backend drain --wait`,
                // `xlb backend remove --drain`).
                let id = v.config.id();
                let backends: Vec<Value> = v
                    .backends
                    .iter()
                    .map(|(addr, b)| {
                        let bt = dp.backend(b.index);
                        json!({"address": addr, "packets": bt.packets, "bytes": bt.bytes, "new_flows": bt.new_flows,
                               "removal": self.removal_view(&id, *addr, now)})
                    })
                    .collect();
                json!({"vip": v.config.id(), "packets": t.packets, "bytes": t.bytes, "new_flows": t.new_flows, "backends": backends})
            })
            .collect();
        json!({ "reasons": by_name, "vips": vips, "health_transitions": {"up": self.transitions.up, "down": self.transitions.down},
                "ended_removals": self.ended_removals(now) })
    }
}

/// `Core::add_tx_port`, logged: a port that cannot be registered leaves the FIB path to
/// that interface dropping (`no_route`) until it can.
pub fn add_tx_port(core: &mut Core<AyaDataplane>, ifindex: u32) {
    if let Err(e) = core.add_tx_port(ifindex) {
        log::warn!("registering interface {ifindex} for XDP_REDIRECT: {e}");
    }
}

/// Records a next hop (or its loss) in `core`, saying so when it changed; unknown pairs
/// (removed meanwhile) are ignored. The daemon's refreshes, and the pass before a
/// takeover (before the daemon exists).
pub fn record_nexthop(
    core: &mut Core<AyaDataplane>,
    vip: &VipId,
    addr: IpAddr,
    hop: Option<NextHop>,
) {
    match core.set_nexthop(vip, addr, hop) {
        Ok(true) => match hop {
            Some(h) => log::info!(
                "next hop of {addr} ({vip}): {} on interface {}, path MTU {}",
                mac_string(&h.dmac),
                h.ifindex,
                h.mtu
            ),
            None => log::info!(
                "next hop of {addr} ({vip}) not resolved: its packets look their route up \
                 in the FIB one by one until it is"
            ),
        },
        Ok(false) | Err(CoreError::UnknownVip { .. } | CoreError::UnknownBackend { .. }) => {}
        Err(e) => log::error!("next hop of {addr} ({vip}): {e}"),
    }
}

/// `aa:bb:…` form of a MAC.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Non-zero counters by name, for the exit summary.
pub fn counter_summary(reasons: &[u64]) -> Vec<(&'static str, &'static str, u64)> {
    let kind = |slot: u32| {
        if Drop::from_slot(slot).is_some() {
            "drop"
        } else if Pass::from_slot(slot).is_some() {
            "pass"
        } else if Event::from_slot(slot).is_some() {
            "event"
        } else {
            "?"
        }
    };
    (0..COUNTER_SLOTS)
        .filter_map(|slot| {
            let v = reasons.get(slot as usize).copied().unwrap_or(0);
            let name = lb_common::counters::slot_name(slot)?;
            (v > 0).then_some((kind(slot), name, v))
        })
        .collect()
}

/// How often next hops are refreshed.
pub const NEXTHOP_REFRESH: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lb_common::{
        flow::{FlowKey, FlowKeyV4},
        maps::ConnEntry,
    };

    use super::*;
    use crate::{
        control::{protocol::Request, server::Handler},
        core::Settings,
        daemon::handler::DaemonHandler,
        health::{CheckKind, Probe, ProbeError, ProbeFuture},
        loader,
    };

    /// A backend that has just died: every check fails.
    struct Dead;

    impl Probe for Dead {
        fn check<'a>(&'a self, _target: SocketAddr) -> ProbeFuture<'a> {
            Box::pin(async { Err(ProbeError::Refused) })
        }

        fn kind(&self) -> &'static str {
            "dead"
        }
    }

    /// A VIP with two backends and no health checks.
    const WEB_11_12: &str = r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
        "health_check": {"kind": "none"},
        "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]}"#;

    /// A daemon over a loaded (not attached) balancer, and its health events' receiver.
    fn daemon() -> (Daemon, mpsc::Receiver<HealthEvent>, aya::Ebpf) {
        let mut ebpf = loader::load_balancer(loader::LoadOptions {
            max_vips: 4,
            max_conns: 1024,
            flow_cache: true,
        })
        .expect("loading the balancer (root, bpffs)");
        let dp = AyaDataplane::new(&mut ebpf).expect("maps");
        let settings = Settings {
            src_v4: Some("198.18.0.2".parse().unwrap()),
            src_v6: Some("fd00::2".parse().unwrap()),
            mtu: 1500,
            max_vips: 4,
            ..Default::default()
        };
        let core = Core::new(dp, settings).expect("core");
        let (tx, rx) = mpsc::channel(16);
        (Daemon::new(core, HealthChecker::default(), tx), rx, ebpf)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verdict_in_flight_when_the_check_changes_is_not_lost() {
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loads BPF, needs root");
            return;
        }
        let (mut d, mut events, _ebpf) = daemon();
        let cfg: VipConfig = serde_json::from_str(
            r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                "health_check": {"kind": "none"}, "backends": [{"address": "198.18.0.11"}]}"#,
        )
        .unwrap();
        let (vip, addr) = (cfg.id(), "198.18.0.11".parse::<IpAddr>().unwrap());
        d.add_vip(cfg).unwrap();
        // Its running check, on a backend that just died (no network: a probe that fails).
        d.stop_check(&vip, addr);
        let fast = HealthCheckConfig {
            interval_ms: 10,
            down_interval_ms: 20,
            timeout_ms: 5,
            fall: 1,
            ..Default::default()
        };
        let tx = d.events.clone();
        let handle = HealthChecker::spawn_with_probe(
            7,
            SocketAddr::new(addr, 80),
            &fast,
            Arc::new(Dead),
            tx,
            HealthState::new(Instant::now()),
        )
        .unwrap();
        d.targets.insert(7, (vip, addr));
        d.checks.insert(
            (vip, addr),
            Check {
                handle,
                kind: CheckKind::Tcp,
            },
        );
        // The check flips down; its event waits, as it would for the daemon's lock, which a
        // control request holds while it changes the VIP's check.
        let t0 = Instant::now();
        while d.health(&vip, addr).is_some_and(|(_, h)| h.healthy) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the check never failed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A new check that would take an hour to say anything.
        let slow = HealthCheckConfig {
            kind: CheckKind::None,
            interval_ms: 3_600_000,
            down_interval_ms: 3_600_000,
            rise: 100,
            ..Default::default()
        };
        d.set_health_check(&vip, Some(slow)).unwrap();
        // The health task gets the lock and applies what was queued.
        while let Ok(ev) = events.try_recv() {
            d.on_health_event(&ev);
        }
        let b = &d.core().vip(&vip).unwrap().backends[&addr];
        let check = d.health(&vip, addr).map(|(_, h)| h.healthy);
        assert_eq!(
            (b.healthy, check),
            (false, Some(false)),
            "core and checker must agree that the backend is down"
        );
        assert!(!b.in_table());
        assert_eq!(d.transitions.down, 1);
    }

    /// A daemon (see [`daemon`]) serving the VIP `vip_json`, unchecked; `None` (the test
    /// skipped) without root.
    fn daemon_with_vip(vip_json: &str) -> Option<(Daemon, VipId, aya::Ebpf)> {
        // SAFETY: no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loads BPF, needs root");
            return None;
        }
        let (mut d, _events, ebpf) = daemon();
        let cfg: VipConfig = serde_json::from_str(vip_json).unwrap();
        let vip = cfg.id();
        d.add_vip(cfg).unwrap();
        Some((d, vip, ebpf))
    }

    #[tokio::test]
    async fn graceful_removals_end_quiet_at_the_deadline_or_cancelled() {
        let Some((mut d, vip, _ebpf)) = daemon_with_vip(
            r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                "health_check": {"kind": "none"},
                "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"},
                             {"address": "198.18.0.13"}, {"address": "198.18.0.14"}]}"#,
        ) else {
            return;
        };
        let b = |n: u8| IpAddr::from([198, 18, 0, n]);
        let secs = Duration::from_secs;
        let state = |d: &Daemon, n: u8| {
            let status = d.status(None);
            status["vips"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["address"] == b(n).to_string())
                .map(|x| x["state"].as_str().unwrap().to_owned())
        };
        let t0 = Instant::now();
        // b11: idle, quiet after 2 s. b12: a deadline (1 s) shorter than its quiet period.
        // b13: cancelled by an undrain. b14: removed at once meanwhile.
        assert!(!d
            .remove_gracefully(&vip, b(11), secs(2), secs(60), t0)
            .unwrap());
        assert!(!d
            .remove_gracefully(&vip, b(12), secs(5), secs(1), t0)
            .unwrap());
        assert!(!d
            .remove_gracefully(&vip, b(13), secs(2), secs(60), t0)
            .unwrap());
        // Asked again: starts over.
        assert!(d
            .remove_gracefully(&vip, b(13), secs(2), secs(60), t0)
            .unwrap());
        assert!(!d
            .remove_gracefully(&vip, b(14), secs(2), secs(60), t0)
            .unwrap());
        for n in 11..=14 {
            assert_eq!(state(&d, n).as_deref(), Some("removing"), "b{n}");
            assert!(d.core().vip(&vip).unwrap().backends[&b(n)].drained);
        }
        assert!(matches!(
            d.remove_gracefully(&vip, b(15), secs(2), secs(60), t0),
            Err(CoreError::UnknownBackend { .. })
        ));
        assert!(d.set_drained(&vip, b(13), false).unwrap());
        assert_eq!(state(&d, 13).as_deref(), Some("up"));
        d.remove_backend(&vip, b(14)).unwrap();

        d.advance_removals(t0 + Duration::from_millis(10));
        d.advance_removals(t0 + Duration::from_millis(500));
        assert_eq!(state(&d, 11).as_deref(), Some("removing"));
        assert_eq!(state(&d, 12).as_deref(), Some("removing"));
        d.advance_removals(t0 + Duration::from_millis(1100));
        assert_eq!(state(&d, 12), None, "b12 removed at its deadline");
        assert_eq!(state(&d, 11).as_deref(), Some("removing"));
        d.advance_removals(t0 + Duration::from_millis(2100));
        assert_eq!(state(&d, 11), None, "b11 removed once quiet");
        assert_eq!(
            state(&d, 13).as_deref(),
            Some("up"),
            "b13's removal was cancelled"
        );
        assert!(d.removals.is_empty());

        let ended = d.stats()["ended_removals"].clone();
        let outcomes: Vec<(String, String)> = ended
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["address"].as_str().unwrap().to_owned(),
                    e["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                ("198.18.0.12".to_owned(), "deadline".to_owned()),
                ("198.18.0.11".to_owned(), "quiet".to_owned())
            ]
        );
        assert_eq!(d.status(None)["ended_removals"], ended);
        // Only the last few are kept.
        for _ in 0..RECENT_REMOVALS {
            d.add_backend(
                &vip,
                serde_json::from_str(r#"{"address": "198.18.0.11"}"#).unwrap(),
            )
            .unwrap();
            d.remove_gracefully(&vip, b(11), secs(1), secs(1), t0)
                .unwrap();
            d.advance_removals(t0 + secs(2));
        }
        let ended = d.stats()["ended_removals"].as_array().unwrap().len();
        assert_eq!(ended, RECENT_REMOVALS);
    }

    #[tokio::test]
    async fn slow_starts_begin_when_a_backend_comes_in_and_step_to_its_weight() {
        let Some((mut d, vip, _ebpf)) = daemon_with_vip(
            r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "slow_start_s": 10,
                "health_check": {"kind": "none"},
                "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12", "drained": true}]}"#,
        ) else {
            return;
        };
        let b = |n: u8| IpAddr::from([198, 18, 0, n]);
        let pct = |d: &Daemon, n: u8| d.core().vip(&vip).unwrap().backends[&b(n)].ramp_pct;
        // The VIP's first backends start together: no ramp.
        assert_eq!((pct(&d, 11), pct(&d, 12)), (100, 100));
        assert!(d.ramps.is_empty());

        // Undrained: from 1 %, a tenth more each second.
        let t0 = Instant::now();
        d.set_drained(&vip, b(12), false).unwrap();
        assert_eq!(pct(&d, 12), 1);
        assert!(d.core().vip(&vip).unwrap().backends[&b(12)].in_table());
        d.refresh_ramps(t0 + Duration::from_millis(5_000));
        assert!((50..=51).contains(&pct(&d, 12)), "{}", pct(&d, 12));
        let status = d.status(None);
        assert_eq!(status["vips"][0]["slow_start_s"], 10);
        assert_eq!(
            status["vips"][0]["backends"][1]["slow_start_pct"],
            pct(&d, 12)
        );
        d.refresh_ramps(t0 + Duration::from_secs(11));
        assert_eq!(pct(&d, 12), 100);
        assert!(d.ramps.is_empty());

        // Up again after failing its checks: a ramp; added at runtime: a ramp.
        d.apply_verdict(&vip, b(11), false, None, Some("refused"));
        assert_eq!(pct(&d, 11), 100, "no ramp while down");
        d.apply_verdict(&vip, b(11), true, None, None);
        assert_eq!(pct(&d, 11), 1);
        d.add_backend(
            &vip,
            serde_json::from_str(r#"{"address": "198.18.0.13"}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(pct(&d, 13), 1);
        assert_eq!(d.ramps.len(), 2);
        // Removed: its ramp goes. The slow start turned off: every ramp ends at once.
        d.remove_backend(&vip, b(13)).unwrap();
        assert_eq!(d.ramps.len(), 1);
        // Its agent said down, then up: a ramp too (a report that keeps it out does not).
        let down = AgentReport {
            down: true,
            ..AgentReport::default()
        };
        d.apply_agent(&vip, b(12), &Ok(down));
        d.apply_agent(&vip, b(12), &Ok(down));
        assert_eq!(pct(&d, 12), 100);
        d.apply_agent(&vip, b(12), &Ok(AgentReport::default()));
        assert_eq!(pct(&d, 12), 1);
        assert_eq!(d.ramps.len(), 2);
        d.set_slow_start(&vip, None).unwrap();
        assert_eq!(pct(&d, 11), 100);
        assert!(d.ramps.is_empty());
        d.set_drained(&vip, b(12), true).unwrap();
        d.set_drained(&vip, b(12), false).unwrap();
        assert_eq!(pct(&d, 12), 100, "no slow start any more");
    }

    /// `flows` through the handler over real maps: the scope is checked first, the tables
    /// scanned, entries named by the core's slots and VIP indexes.
    #[tokio::test]
    async fn flows_lists_the_tables_entries_by_their_backends() {
        let Some((mut d, vip, _ebpf)) = daemon_with_vip(WEB_11_12) else {
            return;
        };
        let any: VipConfig = serde_json::from_str(
            r#"{"address": "198.18.1.2", "port": 0, "protocol": "tcp",
                "health_check": {"kind": "none"}, "backends": [{"address": "198.18.0.12"}]}"#,
        )
        .unwrap();
        let any_id = any.id();
        d.add_vip(any).unwrap();
        let b = |n: u8| IpAddr::from([198, 18, 0, n]);
        let entry = |d: &Daemon, on: &VipId, n: u8| {
            let backend = d.core().backend(on, b(n)).unwrap();
            ConnEntry {
                backend: backend.index,
                generation: backend.generation,
                vip_id: d.core().vip(on).unwrap().id,
                ..Default::default()
            }
        };
        let flows = [
            ("198.18.0.10:40000", "198.18.1.1", 80, entry(&d, &vip, 11)),
            ("198.18.0.10:40001", "198.18.1.1", 80, entry(&d, &vip, 12)),
            (
                "198.18.0.10:40002",
                "198.18.1.2",
                7000,
                entry(&d, &any_id, 12),
            ),
        ];
        let mut conns: aya::maps::HashMap<_, FlowKeyV4, ConnEntry> = aya::maps::HashMap::try_from(
            aya::maps::Map::HashMap(d.core().dataplane().conn_tables().v4_map()),
        )
        .unwrap();
        for (client, to, port, e) in flows {
            let c: SocketAddr = client.parse().unwrap();
            let key = FlowKey::between(c.ip(), c.port(), to.parse().unwrap(), port, 6);
            conns.insert(FlowKeyV4::of(&key), e, 0).unwrap();
        }
        let h = DaemonHandler::new(Arc::new(std::sync::Mutex::new(d)));
        let ask = |q: serde_json::Value| {
            let q = serde_json::from_value(q).unwrap();
            h.handle(Request::Flows(q))
        };
        let listed = |r: &Value| -> Vec<(String, String)> {
            r["flows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["client"].to_string(), f["backend"].to_string()))
                .collect()
        };
        let all = ask(json!({})).unwrap();
        assert_eq!((&all["scanned"], &all["matched"]), (&json!(3), &json!(3)));
        // `status` counts them too, per table, against the tables' size (`--max-conns`).
        let status = h
            .handle(Request::Status(crate::control::protocol::Empty {}))
            .unwrap();
        assert_eq!(
            status["conn_tables"],
            json!({"v4": {"entries": 3, "capacity": 1024}, "v6": {"entries": 0, "capacity": 1024}})
        );
        assert_eq!(
            listed(&all),
            [
                (r#""198.18.0.10:40000""#.into(), r#""198.18.0.11""#.into()),
                (r#""198.18.0.10:40001""#.into(), r#""198.18.0.12""#.into()),
                (r#""198.18.0.10:40002""#.into(), r#""198.18.0.12""#.into()),
            ]
        );
        assert_eq!(all["flows"][2]["service"], "198.18.1.2:*/tcp");
        let on_12 = ask(json!({"backend": "198.18.0.12", "limit": 1})).unwrap();
        assert_eq!(
            (&on_12["matched"], &on_12["truncated"]),
            (&json!(2), &json!(true))
        );
        assert_eq!(on_12["flows"][0]["client"], "198.18.0.10:40001");
        // A port of the all-ports VIP: its flows to that port.
        let port = ask(json!({"vip": "198.18.1.2:7000/tcp"})).unwrap();
        assert_eq!(port["flows"][0]["client"], "198.18.0.10:40002");
        assert_eq!(
            ask(json!({"vip": "198.18.1.2:7001/tcp"})).unwrap()["matched"],
            0
        );
        for (q, code) in [
            (json!({"vip": "198.18.1.9:80/tcp"}), "unknown_vip"),
            (
                json!({"vip": "198.18.1.1:80/tcp", "backend": "198.18.0.13"}),
                "unknown_backend",
            ),
            (json!({"backend": "198.18.0.13"}), "unknown_backend"),
            (json!({"limit": 0}), "invalid"),
            (json!({"limit": 10_001}), "invalid"),
        ] {
            assert_eq!(ask(q.clone()).unwrap_err().code, code, "{q}");
        }
        // Removed: its flow's entry stays (the LRU evicts it) and says so.
        h.handle(Request::BackendRemove(
            crate::control::protocol::BackendRemove {
                vip,
                address: b(11),
                drain_s: None,
                quiet_s: None,
            },
        ))
        .unwrap();
        let after = ask(json!({"vip": "198.18.1.1:80/tcp"})).unwrap();
        assert_eq!(after["flows"][0]["backend"], Value::Null);
        assert_eq!(after["flows"][1]["backend"], "198.18.0.12");
    }

    /// `flows.forget` and `vip.sources` with `cut` through the handler over real tables:
    /// the matching entries leave both tables, the others stay, the backends they were on
    /// get new flow-cache epochs, and a refused request forgets nothing.
    #[tokio::test]
    async fn forgetting_flows_deletes_their_entries_from_both_tables() {
        let Some((mut d, vip, _ebpf)) = daemon_with_vip(WEB_11_12) else {
            return;
        };
        let v6: VipConfig = serde_json::from_str(
            r#"{"address": "fd00:1::1", "port": 80, "protocol": "tcp",
                "health_check": {"kind": "none"}, "backends": [{"address": "fd00::11"}]}"#,
        )
        .unwrap();
        let v6_id = v6.id();
        d.add_vip(v6).unwrap();
        let entry = |d: &Daemon, on: &VipId, addr: &str| {
            let backend = d.core().backend(on, addr.parse().unwrap()).unwrap();
            ConnEntry {
                backend: backend.index,
                generation: backend.generation,
                vip_id: d.core().vip(on).unwrap().id,
                ..Default::default()
            }
        };
        let tables = d.core().dataplane().conn_tables();
        let mut conns4: aya::maps::HashMap<_, FlowKeyV4, ConnEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(tables.v4_map())).unwrap();
        let mut conns6: aya::maps::HashMap<_, FlowKey, ConnEntry> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(tables.v6_map())).unwrap();
        let key = |client: &str, to: &str| {
            let c: SocketAddr = client.parse().unwrap();
            FlowKey::between(c.ip(), c.port(), to.parse().unwrap(), 80, 6)
        };
        for (client, backend) in [
            ("198.18.0.10:40000", "198.18.0.11"),
            ("198.18.0.10:40001", "198.18.0.12"),
            ("198.18.0.20:40000", "198.18.0.12"),
        ] {
            let e = entry(&d, &vip, backend);
            conns4
                .insert(FlowKeyV4::of(&key(client, "198.18.1.1")), e, 0)
                .unwrap();
        }
        // fd00::10's flow holds a least-connection count (as if its VIP counted).
        for (client, flags) in [
            ("[fd00::10]:40000", lb_common::maps::CONN_F_COUNTED),
            ("[fd00::20]:40000", 0),
        ] {
            let e = ConnEntry {
                flags,
                ..entry(&d, &v6_id, "fd00::11")
            };
            conns6.insert(key(client, "fd00:1::1"), e, 0).unwrap();
        }
        let epoch = |d: &Daemon, on: &VipId, addr: &str| {
            d.core()
                .backend(on, addr.parse().unwrap())
                .unwrap()
                .cache_epoch
        };
        let before: Vec<u32> = [
            (&vip, "198.18.0.11"),
            (&vip, "198.18.0.12"),
            (&v6_id, "fd00::11"),
        ]
        .iter()
        .map(|(on, a)| epoch(&d, on, a))
        .collect();
        let d = Arc::new(std::sync::Mutex::new(d));
        let recount = Arc::new(tokio::sync::Notify::new());
        let h = DaemonHandler::new(d.clone()).with_recount(recount.clone());
        // Whether the handler asked for a recount since the last look (a stored permit).
        let rang = || async {
            tokio::time::timeout(Duration::ZERO, recount.notified())
                .await
                .is_ok()
        };
        let forget = |q: serde_json::Value| {
            let q = serde_json::from_value(q).unwrap();
            h.handle(Request::FlowsForget(q))
        };
        let left = |h: &DaemonHandler| -> Vec<String> {
            let all = h.handle(Request::Flows(Default::default())).unwrap();
            all["flows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["client"].as_str().unwrap().to_owned())
                .collect()
        };

        // Refused: nothing named, a VIP or backend that does not exist. Nothing goes.
        for (q, code) in [
            (json!({}), "invalid"),
            (json!({"vip": "198.18.1.9:80/tcp"}), "unknown_vip"),
            (json!({"backend": "198.18.0.13"}), "unknown_backend"),
            (json!({"vip": "198.18.1.1:80/tcp", "limit": 1}), "invalid"),
        ] {
            assert_eq!(forget(q.clone()).unwrap_err().code, code, "{q}");
        }
        assert_eq!(left(&h).len(), 5);

        // One client's flows to the IPv4 VIP: two entries on two backends.
        let r = forget(json!({"vip": "198.18.1.1:80/tcp", "client": "198.18.0.10"})).unwrap();
        assert_eq!(
            (&r["scanned"], &r["matched"], &r["forgotten"]),
            (&json!(5), &json!(2), &json!(2))
        );
        assert!(
            r["done"].as_str().unwrap().starts_with(
                "forgot 2 flows to 198.18.1.1:80/tcp of clients in 198.18.0.10/32 (5 entries"
            ),
            "{r}"
        );
        assert_eq!(
            left(&h),
            ["198.18.0.20:40000", "[fd00::10]:40000", "[fd00::20]:40000"]
        );
        let after: Vec<u32> = {
            let d = d.lock().unwrap();
            [
                (&vip, "198.18.0.11"),
                (&vip, "198.18.0.12"),
                (&v6_id, "fd00::11"),
            ]
            .iter()
            .map(|(on, a)| epoch(&d, on, a))
            .collect()
        };
        assert_ne!(after[0], before[0], "no new epoch for .11");
        assert_ne!(after[1], before[1], "no new epoch for .12");
        assert_eq!(after[2], before[2], "fd00::11 had none of the flows");
        assert!(!rang().await, "a recount for flows that held no count");

        // From the IPv6 table, by backend; again: nothing left to forget. The flow held a
        // count: the daemon's recount is asked to run now.
        let r = forget(json!({"backend": "fd00::11", "client": "fd00::10"})).unwrap();
        assert_eq!(r["forgotten"], 1);
        assert!(rang().await, "no recount for a flow that held a count");
        let r = forget(json!({"backend": "fd00::11", "client": "fd00::10"})).unwrap();
        assert_eq!((&r["matched"], &r["forgotten"]), (&json!(0), &json!(0)));

        // `vip.sources` with `cut`: the VIP's flows of clients outside the new list go. A
        // list of the other family is refused before anything is forgotten.
        let sources = |list: serde_json::Value| {
            let q = json!({"vip": "[fd00:1::1]:80/tcp", "allowed_sources": list, "cut": true});
            let q = serde_json::from_value(q).unwrap();
            h.handle(Request::VipSources(q))
        };
        assert_eq!(
            sources(json!(["198.18.0.0/15"])).unwrap_err().code,
            "invalid"
        );
        assert_eq!(left(&h).len(), 2);
        let r = sources(json!(["fd00::10"])).unwrap();
        assert_eq!(r["forgotten"], 1, "{r}");
        assert_eq!(left(&h), ["198.18.0.20:40000"]);
        let status = d.lock().unwrap().status(None);
        assert_eq!(
            status["vips"][1]["allowed_sources"],
            json!(["fd00::10/128"])
        );
    }

    /// `reload` through the handler over real maps: a dry run changes nothing, the reload
    /// applies the file, and a file that cannot be applied is refused with nothing changed.
    #[tokio::test]
    async fn reload_reads_the_file_plans_and_applies_or_refuses() {
        use super::super::config_file::ConfigFile;
        use crate::control::protocol::ReloadRequest;

        let vip = r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp",
                      "health_check": {"kind": "none"}, "backends": [BACKENDS]}"#;
        let b11 = r#"{"address": "198.18.0.11"}"#;
        let b12 = r#"{"address": "198.18.0.12", "weight": 3}"#;
        let Some((d, id, _ebpf)) = daemon_with_vip(&vip.replace("BACKENDS", b11)) else {
            return;
        };
        let started = Config::default();
        let file = std::env::temp_dir().join(format!("xlb-reload-{}.json", std::process::id()));
        let write = |backends: &str, extra: &str| {
            let v = vip.replace("BACKENDS", backends);
            std::fs::write(&file, format!(r#"{{{extra} "vips": [{v}]}}"#)).unwrap();
        };
        let drop_log = Arc::new(Mutex::new(DropLog::new(started.drop_samples())));
        let d = d
            .with_globals(&started, 1500)
            .with_drop_log(drop_log.clone());
        let daemon = Arc::new(std::sync::Mutex::new(d));
        let h = DaemonHandler::new(daemon.clone())
            .with_config_file(ConfigFile::new(Some(file.clone())));
        let ask = |dry_run| {
            h.handle(Request::Reload(ReloadRequest {
                dry_run,
                cut: false,
            }))
        };
        let backends = || -> Vec<IpAddr> {
            let d = daemon.lock().unwrap();
            d.core()
                .vip(&id)
                .unwrap()
                .backends
                .keys()
                .copied()
                .collect()
        };
        let b = |n: u8| IpAddr::from([198, 18, 0, n]);

        write(&format!("{b11}, {b12}"), "");
        let plan = ask(true).unwrap();
        assert_eq!(plan["applied"], false);
        assert_eq!(
            plan["changes"],
            json!(["add backend 198.18.0.12 (weight 3) to 198.18.1.1:80/tcp"])
        );
        assert_eq!(backends(), [b(11)], "a dry run changed the backends");
        let done = ask(false).unwrap();
        assert_eq!(
            (&done["applied"], &done["changes"]),
            (&json!(true), &plan["changes"])
        );
        assert_eq!(backends(), [b(11), b(12)]);
        assert!(ask(true).unwrap()["done"]
            .as_str()
            .unwrap()
            .ends_with("nothing to change"));

        // With `cut`, a VIP whose allowed sources change loses its flows of clients the
        // new list leaves out; a dry run counts them.
        {
            let d = daemon.lock().unwrap();
            let backend = d.core().backend(&id, b(11)).unwrap();
            let e = ConnEntry {
                backend: backend.index,
                generation: backend.generation,
                vip_id: d.core().vip(&id).unwrap().id,
                ..Default::default()
            };
            let mut conns: aya::maps::HashMap<_, FlowKeyV4, ConnEntry> =
                aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(
                    d.core().dataplane().conn_tables().v4_map(),
                ))
                .unwrap();
            for client in [b(10), b(20)] {
                let key = FlowKey::between(client, 1000, "198.18.1.1".parse().unwrap(), 80, 6);
                conns.insert(FlowKeyV4::of(&key), e, 0).unwrap();
            }
        }
        let flows = || {
            let all = h.handle(Request::Flows(Default::default())).unwrap();
            all["matched"].as_u64().unwrap()
        };
        let restricted = vip.replace("BACKENDS", &format!("{b11}, {b12}")).replace(
            r#""protocol": "tcp","#,
            r#""protocol": "tcp", "allowed_sources": ["198.18.0.20"],"#,
        );
        std::fs::write(&file, format!(r#"{{"vips": [{restricted}]}}"#)).unwrap();
        let cut = |dry_run| h.handle(Request::Reload(ReloadRequest { dry_run, cut: true }));
        let plan = cut(true).unwrap();
        assert_eq!(plan["forgotten"], 1, "{plan}");
        assert!(
            plan["done"]
                .as_str()
                .unwrap()
                .ends_with("would forget 1 flow of clients the new allowed sources leave out"),
            "{plan}"
        );
        assert_eq!(flows(), 2, "a dry run forgot flows");
        let done = cut(false).unwrap();
        assert_eq!(done["forgotten"], 1, "{done}");
        assert_eq!(flows(), 1);
        assert_eq!(
            cut(false).unwrap()["forgotten"],
            0,
            "nothing changed, nothing cut"
        );

        // Rate limits and drop samples change in place, and the running config says so.
        std::fs::write(
            &file,
            format!(r#"{{"icmp_rate_limit": 7, "drop_samples": 3, "vips": [{restricted}]}}"#),
        )
        .unwrap();
        let done = ask(false).unwrap();
        assert_eq!(
            done["changes"],
            json!([
                "icmp_rate_limit: 7 ICMP errors per CPU and second",
                "drop_samples: 3 per CPU and second"
            ])
        );
        assert_eq!(drop_log.lock().unwrap().per_second(), 3);
        assert_eq!(daemon.lock().unwrap().core().settings().icmp_rate_limit, 7);
        let running = h.handle(Request::Config(Default::default())).unwrap();
        assert_eq!(
            (&running["icmp_rate_limit"], &running["drop_samples"]),
            (&json!(7), &json!(3))
        );

        // A setting only a restart changes, a broken file, a missing file: refused,
        // nothing changes.
        write(
            b12,
            r#""outer_source": {"v4": "198.18.0.99"}, "icmp_rate_limit": 9,"#,
        );
        let e = ask(false).unwrap_err();
        assert_eq!(e.code, "config_file");
        assert!(
            e.message.contains("outer_source") && e.message.contains("restart"),
            "{}",
            e.message
        );
        std::fs::write(&file, "{\"vips\": [").unwrap();
        assert_eq!(ask(true).unwrap_err().code, "config_file");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(ask(false).unwrap_err().code, "config_file");
        assert_eq!(backends(), [b(11), b(12)]);
        assert_eq!(daemon.lock().unwrap().core().settings().icmp_rate_limit, 7);
        // Dry runs are not reloads; the two refusals are, and status says the last one's.
        {
            let d = daemon.lock().unwrap();
            let h = d.reloads();
            assert_eq!(
                ReloadResult::ALL.map(|r| h.count(r)),
                [4, 2, 0],
                "applied, refused, failed"
            );
            assert!(!h.last_ok());
            let status = d.status(None);
            let last = &status["config"]["last_reload"];
            assert_eq!(
                (&last["by"], &last["result"]),
                (&json!("xlb reload"), &json!("refused"))
            );
            assert!(last["error"]
                .as_str()
                .unwrap()
                .contains("refused, nothing changed"));
        }
        let without = DaemonHandler::new(daemon.clone());
        let e = without
            .handle(Request::Reload(ReloadRequest::default()))
            .unwrap_err();
        assert_eq!(e.code, "config_file");
        assert!(e.message.contains("without --config"), "{}", e.message);
    }

    /// `dump-config` after changes made at runtime: reloading the dump changes nothing, and
    /// it survives its own file format.
    #[tokio::test]
    async fn the_running_config_reloads_to_no_change() {
        let Some((mut d, vip, _ebpf)) = daemon_with_vip(
            r#"{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "name": "web",
                "health_check": {"kind": "none"},
                "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]}"#,
        ) else {
            return;
        };
        let started = Config::from_json(r#"{"icmp_rate_limit": 500, "vips": []}"#).unwrap();
        let b = |n: u8| IpAddr::from([198, 18, 0, n]);
        d.set_weight(&vip, b(11), 3).unwrap();
        d.set_drained(&vip, b(12), true).unwrap();
        d.add_backend(
            &vip,
            serde_json::from_str(r#"{"address": "198.18.0.13", "backup": true}"#).unwrap(),
        )
        .unwrap();
        d.set_scheduler(&vip, Scheduler::Wrr).unwrap();
        d.set_slow_start(&vip, Some(30)).unwrap();
        d.set_sources(&vip, vec!["198.18.0.0/15".parse().unwrap()])
            .unwrap();
        d.set_idle_timeout(&vip, Some(600)).unwrap();
        d.set_health_check(
            &vip,
            Some(
                serde_json::from_str(r#"{"kind": "tcp", "interval_ms": 700, "timeout_ms": 300}"#)
                    .unwrap(),
            ),
        )
        .unwrap();
        d.add_vip(
            serde_json::from_str(
                r#"{"address": "198.18.1.2", "port": 0, "protocol": "udp",
                    "health_check": {"kind": "none"}, "backends": [{"address": "198.18.0.14"}]}"#,
            )
            .unwrap(),
        )
        .unwrap();

        let d = d.with_globals(&started, 1500);
        let dumped = d.running_config();
        assert_eq!(
            dumped.icmp_rate_limit,
            Some(500),
            "the global settings it runs with"
        );
        let text = serde_json::to_string_pretty(&dumped).unwrap();
        let parsed = Config::from_json(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(parsed, dumped);
        let web = &parsed.vips[0];
        assert_eq!(
            (web.scheduler, web.slow_start_s),
            (Scheduler::Wrr, Some(30))
        );
        let weights: Vec<(IpAddr, u32, bool, bool)> = web
            .backends
            .iter()
            .map(|b| (b.address, b.weight, b.drained, b.backup))
            .collect();
        assert_eq!(
            weights,
            [
                (b(11), 3, false, false),
                (b(12), 1, true, false),
                (b(13), 1, false, true)
            ]
        );
        assert_eq!(d.plan_reload(&parsed).unwrap(), []);
    }
}
