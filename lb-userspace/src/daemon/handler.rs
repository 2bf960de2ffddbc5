//! Control-socket requests → daemon operations.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::sync::Notify;

use super::{
    config_file::{ConfigFile, FileReloadError},
    state::Daemon,
};
use crate::{
    config::ConfigError,
    control::{
        protocol::{code, DropsQuery, FlowsQuery, Request, VipSources},
        server::Handler,
        ControlError,
    },
    core::CoreError,
    drops::{self, DropLog},
    flows, graceful, reload,
};

/// `backend.remove`'s `quiet_s` and `drain_s` as periods (`None`: remove at once), or why
/// they are refused.
fn graceful_periods(
    drain_s: Option<u64>,
    quiet_s: Option<u64>,
) -> Result<Option<(Duration, Duration)>, CoreError> {
    let invalid = |field: &str, m: String| CoreError::Invalid(ConfigError::new(field, m));
    let Some(drain_s) = drain_s else {
        return match quiet_s {
            Some(_) => Err(invalid(
                "quiet_s",
                "only with drain_s (a graceful removal)".into(),
            )),
            None => Ok(None),
        };
    };
    let deadline = graceful::check_secs(drain_s).map_err(|m| invalid("drain_s", m))?;
    let quiet = graceful::check_secs(quiet_s.unwrap_or(graceful::DEFAULT_QUIET_S))
        .map_err(|m| invalid("quiet_s", m))?;
    Ok(Some((quiet, deadline)))
}

/// What `vip.sources` says it did.
fn sources_done(r: &VipSources) -> String {
    if r.allowed_sources.is_empty() {
        return format!("VIP {} admits new flows from every client", r.vip);
    }
    let listed: Vec<String> = r.allowed_sources.iter().map(|p| p.to_string()).collect();
    format!(
        "VIP {} admits new flows from {}; others are dropped (source_denied)",
        r.vip,
        listed.join(", ")
    )
}

/// "1 flow", "2 flows".
fn flows_word(n: u64) -> String {
    format!("{n} flow{}", if n == 1 { "" } else { "s" })
}

/// `flows.forget`'s scope in words, for its answer and the log.
fn forget_scope(q: &FlowsQuery) -> String {
    let mut parts = Vec::new();
    if let Some(vip) = q.vip {
        parts.push(format!("to {vip}"));
    }
    if let Some(b) = q.backend {
        parts.push(format!("on backend {b}"));
    }
    if let Some(c) = q.client {
        parts.push(format!("of clients in {c}"));
    }
    if let Some(n) = q.idle_over_s {
        parts.push(format!("idle for over {n} s"));
    }
    parts.join(" ")
}

/// Serves requests against the shared daemon state.
pub struct DaemonHandler {
    daemon: Arc<Mutex<Daemon>>,
    /// What `reload` reads: the daemon's `--config` (none: nothing to reload).
    config_file: ConfigFile,
    /// What `drops` lists, filled by the daemon's drop sampler.
    drop_log: Arc<Mutex<DropLog>>,
    /// Wakes the daemon's least-connection recount (none in tests without one).
    recount: Option<Arc<Notify>>,
}

impl DaemonHandler {
    /// Wraps the shared state, for a daemon without a config file.
    pub fn new(daemon: Arc<Mutex<Daemon>>) -> Self {
        Self {
            daemon,
            config_file: ConfigFile::new(None),
            drop_log: Arc::new(Mutex::new(DropLog::new(0))),
            recount: None,
        }
    }

    /// What wakes the daemon's least-connection recount: `flows.forget` rings it when
    /// it deleted flows that held counts, so that their backends' counts drop now rather
    /// than at the next periodic recount.
    pub fn with_recount(self, recount: Arc<Notify>) -> Self {
        Self {
            recount: Some(recount),
            ..self
        }
    }

    /// The log of drop samples `drops` lists (without one, it answers that sampling is
    /// off).
    pub fn with_drop_log(self, drop_log: Arc<Mutex<DropLog>>) -> Self {
        Self { drop_log, ..self }
    }

    /// The config file `reload` reads.
    pub fn with_config_file(self, config_file: ConfigFile) -> Self {
        Self {
            config_file,
            ..self
        }
    }
}

impl DaemonHandler {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Daemon>, ControlError> {
        self.daemon.lock().map_err(|_| {
            ControlError::new("internal", "daemon state poisoned by a panic; restart xlb")
        })
    }
}

impl Handler for DaemonHandler {
    fn handle(&self, req: Request) -> Result<Value, ControlError> {
        // `status` counts each backend's flows with a scan of the connection tables (about
        // 0.4 µs per flow): made before taking the lock, so that a large table does not
        // hold up health events and other requests meanwhile.
        let census = match &req {
            Request::Status(_) => {
                let tables = self.lock()?.core().dataplane().conn_tables();
                tables
                    .census()
                    .map_err(|e| log::warn!("counting flows per backend: {e}"))
                    .ok()
            }
            _ => None,
        };
        match &req {
            Request::Flows(q) => return self.flows(q),
            Request::FlowsForget(q) => return self.forget(q),
            Request::VipSources(r) if r.cut => return self.sources_cut(r),
            Request::Reload(r) => return self.reload(r.dry_run, r.cut),
            Request::Drops(q) => return self.drops(q),
            _ => {}
        }
        let mut d = self.lock()?;
        let done = |what: String| Ok(json!({ "done": what }));
        match req {
            Request::VipAdd(r) => {
                let id = r.vip.id();
                d.add_vip(r.vip)?;
                done(format!("added VIP {id}"))
            }
            Request::VipRemove(r) => {
                d.remove_vip(&r.vip)?;
                done(format!("removed VIP {}", r.vip))
            }
            Request::VipScheduler(r) => {
                d.set_scheduler(&r.vip, r.scheduler)?;
                done(format!(
                    "VIP {} now schedules with {}",
                    r.vip,
                    r.scheduler.name()
                ))
            }
            Request::VipIdleTimeout(r) => {
                d.set_idle_timeout(&r.vip, r.idle_timeout_s)?;
                let idle = d.core().vip(&r.vip).map(|v| v.config.idle_timeout())?;
                done(match r.idle_timeout_s {
                    Some(_) => format!("VIP {}: idle flows stop counting after {idle} s", r.vip),
                    None => format!(
                        "VIP {}: idle flows stop counting after {idle} s (the protocol's default)",
                        r.vip
                    ),
                })
            }
            Request::VipFlowLimit(r) => {
                d.set_new_flow_rate_limit(&r.vip, r.new_flow_rate_limit)?;
                done(r.done())
            }
            Request::VipClientFlowLimit(r) => {
                d.set_client_flow_rate_limit(&r.vip, r.client_flow_rate_limit)?;
                done(r.done())
            }
            Request::VipSources(r) => {
                let said = sources_done(&r);
                d.set_sources(&r.vip, r.allowed_sources)?;
                done(said)
            }
            Request::VipHealthCheck(r) => {
                let kind = r
                    .health_check
                    .as_ref()
                    .map_or("the default", |hc| hc.kind.as_str());
                d.set_health_check(&r.vip, r.health_check)?;
                done(format!(
                    "VIP {}: health checks restarted ({kind} check)",
                    r.vip
                ))
            }
            Request::BackendAdd(r) => {
                let (a, backup) = (r.backend.address, r.backend.backup);
                d.add_backend(&r.vip, r.backend)?;
                let kind = if backup { "backup" } else { "backend" };
                done(format!("added {kind} {a} to {}", r.vip))
            }
            Request::BackendRemove(r) => {
                let Some((quiet, deadline)) = graceful_periods(r.drain_s, r.quiet_s)? else {
                    d.remove_backend(&r.vip, r.address)?;
                    return done(format!("removed backend {} from {}", r.address, r.vip));
                };
                let now = std::time::Instant::now();
                let again = d.remove_gracefully(&r.vip, r.address, quiet, deadline, now)?;
                let (q, s) = (quiet.as_secs(), deadline.as_secs());
                done(format!(
                    "draining backend {} of {}: removed once it has carried no packet for {q} s, \
                     or in {s} s at most{}",
                    r.address,
                    r.vip,
                    if again {
                        " (the removal under way starts over)"
                    } else {
                        ""
                    }
                ))
            }
            Request::BackendWeight(r) => {
                d.set_weight(&r.vip, r.address, r.weight)?;
                done(format!(
                    "backend {} of {} now has weight {}",
                    r.address, r.vip, r.weight
                ))
            }
            Request::BackendMaxConns(r) => {
                d.set_max_conns(&r.vip, r.address, r.max_conns)?;
                done(match r.max_conns {
                    Some(n) => format!(
                        "backend {} of {} takes at most {n} active flows",
                        r.address, r.vip
                    ),
                    None => format!("backend {} of {} has no flow limit", r.address, r.vip),
                })
            }
            Request::BackendDrain(r) => {
                d.set_drained(&r.vip, r.address, true)?;
                done(format!("drained backend {} of {}", r.address, r.vip))
            }
            Request::BackendUndrain(r) => {
                let cancelled = d.set_drained(&r.vip, r.address, false)?;
                done(format!(
                    "undrained backend {} of {}{}",
                    r.address,
                    r.vip,
                    if cancelled {
                        "; its graceful removal is cancelled"
                    } else {
                        ""
                    }
                ))
            }
            Request::BackendBackup(r) => {
                d.set_backup(&r.vip, r.address, r.backup)?;
                done(if r.backup {
                    format!(
                        "backend {} of {} is a backup: new flows only while no other backend takes them",
                        r.address, r.vip
                    )
                } else {
                    format!("backend {} of {} is no longer a backup", r.address, r.vip)
                })
            }
            Request::Status(_) => Ok(d.status(census.as_ref())),
            Request::Stats(_) => Ok(d.stats()),
            Request::Flow(r) => d.flow(&r.vip, r.client),
            Request::Flows(_)
            | Request::FlowsForget(_)
            | Request::Reload(_)
            | Request::Drops(_) => {
                unreachable!("answered before the lock")
            }
            Request::Config(_) => serde_json::to_value(d.running_config()).map_err(|e| {
                ControlError::new(code::INTERNAL, format!("encoding the config: {e}"))
            }),
        }
    }
}

impl DaemonHandler {
    /// `reload`: the file is read before the lock is taken (`ConfigFile::reload`). With
    /// `cut`, each VIP whose list of allowed sources changed then loses its flows of clients
    /// outside the new list (`dry_run`: they are only counted).
    fn reload(&self, dry_run: bool, cut: bool) -> Result<Value, ControlError> {
        let path = self.config_file.path().map(|p| p.display().to_string());
        let outcome = self.config_file.reload(&self.daemon, dry_run);
        if !dry_run {
            self.config_file
                .record(&self.daemon, "xlb reload", &outcome);
        }
        match outcome {
            Ok(steps) => {
                let path = path.unwrap_or_default();
                let n = steps.len();
                let done = match (dry_run, n) {
                    (true, 0) => format!("{path}: nothing to change"),
                    (true, _) => format!("{path} would make {n} changes; nothing applied"),
                    (false, 0) => format!("reloaded {path}: nothing changed"),
                    (false, _) => format!("reloaded {path}: {n} changes"),
                };
                let changes: Vec<String> = steps.iter().map(ToString::to_string).collect();
                let mut answer =
                    json!({"done": done, "file": path, "applied": !dry_run, "changes": changes});
                if cut {
                    let n = self.cut_after_reload(&steps, dry_run)?;
                    answer["forgotten"] = json!(n);
                    let said = if dry_run { "would forget" } else { "forgot" };
                    answer["done"] = json!(format!(
                        "{done}; {said} {} of clients the new allowed sources leave out",
                        flows_word(n)
                    ));
                }
                Ok(answer)
            }
            // Steps before the failure stay: not the request's fault, and not "nothing
            // changed".
            Err(e) if e.partly_applied() => Err(ControlError::new(code::INTERNAL, e.to_string())),
            Err(e @ FileReloadError::Poisoned) => {
                Err(ControlError::new(code::INTERNAL, e.to_string()))
            }
            Err(e) => Err(ControlError::new(code::CONFIG_FILE, e.to_string())),
        }
    }

    /// `drops`: the sampler's log, without the daemon's lock (it has its own).
    fn drops(&self, q: &DropsQuery) -> Result<Value, ControlError> {
        let invalid = |field: &str, m: String| {
            ControlError::from(CoreError::Invalid(ConfigError::new(field, m)))
        };
        let query = drops::Query {
            reason: q
                .reason
                .as_deref()
                .map(drops::check_reason)
                .transpose()
                .map_err(|m| invalid("reason", m))?,
            vip: q.vip,
            client: q.client,
            since: q.since,
            limit: drops::check_limit(q.limit).map_err(|m| invalid("limit", m))?,
        };
        let answer = self
            .drop_log
            .lock()
            .map_err(|_| ControlError::new(code::INTERNAL, "drop log poisoned by a panic"))?
            .query(&query);
        serde_json::to_value(answer)
            .map_err(|e| ControlError::new(code::INTERNAL, format!("encoding the drops: {e}")))
    }

    /// `flows.forget`: as `flows`, the scope under the lock and the scan without it; then
    /// the matching entries are deleted and the flow caches told.
    fn forget(&self, q: &FlowsQuery) -> Result<Value, ControlError> {
        if q.limit.is_some() {
            return Err(CoreError::Invalid(ConfigError::new(
                "limit",
                "flows.forget forgets every flow that matches; `flows` lists them, with a limit",
            ))
            .into());
        }
        if q.vip.is_none() && q.backend.is_none() && q.client.is_none() {
            return Err(CoreError::Invalid(ConfigError::new(
                "vip",
                "name a VIP, a backend or a client prefix (or several): one request does not \
                 forget every flow of every VIP"
                    .to_owned(),
            ))
            .into());
        }
        // The listing's scope (its limit refused above).
        let (names, filter, _) = self.lock()?.flows_scope(q)?;
        let f = self.forget_matching(names, filter, true)?;
        let scope = forget_scope(q);
        log::info!(
            "flows.forget: forgot {} of {} flows {scope}",
            f.forgotten,
            f.matched
        );
        let mut answer = serde_json::to_value(&f)
            .map_err(|e| ControlError::new(code::INTERNAL, format!("encoding the answer: {e}")))?;
        answer["done"] = json!(format!(
            "forgot {} {scope} ({} entries in the connection tables); their next packets are \
             scheduled anew, or dropped where the VIP no longer admits the client",
            flows_word(f.forgotten),
            f.scanned
        ));
        Ok(answer)
    }

    /// `vip.sources` with `cut`: the new list first (no new flow from outside it from
    /// then on), then the VIP's flows of clients outside it forgotten.
    fn sources_cut(&self, r: &VipSources) -> Result<Value, ControlError> {
        let said = sources_done(r);
        let (names, mut filter) = {
            let mut d = self.lock()?;
            d.set_sources(&r.vip, r.allowed_sources.clone())?;
            d.flows_filter(Some(r.vip), None, None)?
        };
        if r.allowed_sources.is_empty() {
            return Ok(json!({"done": said, "forgotten": 0}));
        }
        filter.outside = Some(r.allowed_sources.clone());
        let f = self.forget_matching(names, filter, true)?;
        log::info!(
            "vip.sources: {said}; forgot {} of its flows from other clients",
            f.forgotten
        );
        Ok(json!({
            "done": format!("{said}; forgot {} of other clients", flows_word(f.forgotten)),
            "forgotten": f.forgotten,
        }))
    }

    /// `reload`'s `cut`: for each VIP whose allowed sources the reload set to a list, its
    /// flows of clients outside it, forgotten (or with `dry_run`, counted). How many.
    fn cut_after_reload(&self, steps: &[reload::Step], dry_run: bool) -> Result<u64, ControlError> {
        let mut total = 0;
        for step in steps {
            let reload::Step::Sources(vip, list) = step else {
                continue;
            };
            if list.is_empty() {
                continue;
            }
            let (names, mut filter) = self.lock()?.flows_filter(Some(*vip), None, None)?;
            filter.outside = Some(list.clone());
            let f = self.forget_matching(names, filter, !dry_run)?;
            if !dry_run {
                log::info!(
                    "reload: VIP {vip}: forgot {} flows of clients outside its new allowed sources",
                    f.forgotten
                );
            }
            total += if dry_run { f.matched } else { f.forgotten };
        }
        Ok(total)
    }

    /// Scans the tables without the lock, deletes the flows `filter` matches (unless not
    /// `delete`: then only counts them), and has the flow caches stop serving copies of
    /// their entries.
    fn forget_matching(
        &self,
        names: flows::Names,
        filter: flows::Filter,
        delete: bool,
    ) -> Result<flows::Forgotten, ControlError> {
        let internal = |m: String| ControlError::new(code::INTERNAL, m);
        let tables = self.lock()?.core().dataplane().conn_tables();
        let now_s = crate::conntable::monotonic_coarse_s();
        let mut forgetting = flows::Forgetting::new(names, filter, now_s);
        tables
            .for_each_flow(|k, e| forgetting.add(k, e))
            .map_err(|e| internal(format!("scanning the connection tables: {e}")))?;
        if !delete {
            return Ok(forgetting.finish(0));
        }
        let forgotten = tables
            .forget(forgetting.keys())
            .map_err(|e| internal(format!("forgetting flows: {e}")))?;
        if forgotten > 0 {
            self.lock()?.refresh_flow_caches(forgetting.slots())?;
            if forgetting.counted_open() {
                if let Some(recount) = &self.recount {
                    recount.notify_one();
                }
            }
        }
        Ok(forgetting.finish(forgotten))
    }

    /// `flows`: the scope is read under the lock, the tables scanned without it (as for
    /// `status`: a large table must not hold up health events and other requests).
    fn flows(&self, q: &FlowsQuery) -> Result<Value, ControlError> {
        let (names, filter, limit, tables) = {
            let d = self.lock()?;
            let (names, filter, limit) = d.flows_scope(q)?;
            (names, filter, limit, d.core().dataplane().conn_tables())
        };
        let mut listing =
            flows::Listing::new(names, filter, limit, crate::conntable::monotonic_coarse_s());
        tables
            .for_each_flow(|k, e| listing.add(k, e))
            .map_err(|e| {
                ControlError::new(
                    code::INTERNAL,
                    format!("scanning the connection tables: {e}"),
                )
            })?;
        serde_json::to_value(listing.finish())
            .map_err(|e| ControlError::new(code::INTERNAL, format!("encoding the flows: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graceful_periods_are_checked_before_anything_changes() {
        let s = Duration::from_secs;
        assert_eq!(graceful_periods(None, None).unwrap(), None);
        assert_eq!(
            graceful_periods(Some(300), None).unwrap(),
            Some((s(5), s(300)))
        );
        assert_eq!(
            graceful_periods(Some(60), Some(10)).unwrap(),
            Some((s(10), s(60)))
        );
        for (drain, quiet, field) in [
            (None, Some(5), "quiet_s"),
            (Some(0), None, "drain_s"),
            (Some(86_401), None, "drain_s"),
            (Some(60), Some(0), "quiet_s"),
        ] {
            let e = ControlError::from(graceful_periods(drain, quiet).unwrap_err());
            assert_eq!(e.code, "invalid");
            assert!(
                e.message.starts_with(field),
                "{drain:?} {quiet:?}: {}",
                e.message
            );
        }
    }
}
