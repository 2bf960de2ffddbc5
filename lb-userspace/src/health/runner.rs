//! One tokio task per checked target: sleep, probe, fold the result into the
//! [`HealthState`], publish the state, report transitions.
//!
//! Cancellation: each task holds the receiving half of a `oneshot` whose sender lives in the
//! [`HealthHandle`]. Dropping the handle (or calling [`HealthHandle::stop`]) drops the sender,
//! which wakes the task at its next `select!` — during a sleep or in the middle of a probe,
//! whose sockets are then closed. That makes "drop the handle" the one way to stop, with no
//! extra crate (tokio-util's `CancellationToken`) and no reliance on `JoinHandle::abort`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{sleep_until, Instant},
};

use super::{
    config::{CheckKind, HealthCheckConfig, HealthConfigError},
    probe::{build_probe, Probe},
    state::{HealthState, Transition},
};

/// The first check of a target waits at most this long, however long the interval.
const MAX_FIRST_CHECK_DELAY: Duration = Duration::from_secs(10);

/// Sent on every Up/Down transition of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The caller's id for the (VIP, backend) pair, as passed to [`HealthChecker::spawn`].
    pub target_id: u64,
    /// The address actually probed (backend IP, health-check port).
    pub target: SocketAddr,
    pub transition: Transition,
    /// Latency of the check that caused the transition; `None` when it failed.
    pub latency: Option<Duration>,
    /// Why the check that caused the transition failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// Starts health-check tasks; holds the settings shared by all of them.
#[derive(Debug, Clone, Default)]
pub struct HealthChecker {
    /// Source address for probes to IPv4 backends; `None` lets the kernel choose by route.
    pub source_v4: Option<Ipv4Addr>,
    /// Source address for probes to IPv6 backends; `None` lets the kernel choose by route.
    pub source_v6: Option<Ipv6Addr>,
    /// Source of an IPv4 VIP's `tcp_tunnel` SYNs to IPv6 backends (IPv4 in IPv6): an address
    /// of this host's where the backend's IPv4 answer comes back (the daemon gives its IPv4
    /// outer source); `None` lets the kernel choose by its route to the VIP.
    pub tunnel_source_v4: Option<Ipv4Addr>,
    /// The same for an IPv6 VIP's SYNs to IPv4 backends (IPv6 in IPv4).
    pub tunnel_source_v6: Option<Ipv6Addr>,
}

impl HealthChecker {
    /// Starts checking `addr` (the backend's IP with the VIP's port; `cfg.port`, when set,
    /// replaces the port), a backend of the VIP at `vip`, from the state `start` (`HealthState::new` for a new backend; a
    /// check that replaces another starts from `HealthState::continued` of that one's, so
    /// that only `rise` or `fall` results change the verdict) and returns the handle that
    /// owns the task. Fails when `cfg` is
    /// invalid or no port is known for a port-based check. Must be called inside a tokio
    /// runtime. Transitions go to `events`; a closed receiver only stops the events,
    /// not the checks, since the snapshot is still served.
    pub fn spawn(
        &self,
        target_id: u64,
        vip: IpAddr,
        addr: SocketAddr,
        cfg: &HealthCheckConfig,
        events: mpsc::Sender<HealthEvent>,
        start: HealthState,
    ) -> Result<HealthHandle, HealthConfigError> {
        let target = cfg.probe_target(addr)?;
        // A tunnel check's SYN is of the VIP's family, whatever the backend's.
        let across = cfg.kind == CheckKind::TcpTunnel && vip.is_ipv4() != target.is_ipv4();
        let bind = match (target.ip(), across) {
            (IpAddr::V4(_), false) => self.source_v4.map(IpAddr::V4),
            (IpAddr::V6(_), false) => self.source_v6.map(IpAddr::V6),
            (IpAddr::V6(_), true) => self.tunnel_source_v4.map(IpAddr::V4),
            (IpAddr::V4(_), true) => self.tunnel_source_v6.map(IpAddr::V6),
        };
        let probe = build_probe(cfg, bind, vip);
        Self::spawn_with_probe(target_id, target, cfg, probe, events, start)
    }

    /// Like [`HealthChecker::spawn`] with a given probe, checking `target` exactly as given;
    /// for tests and for probe kinds built elsewhere.
    pub fn spawn_with_probe(
        target_id: u64,
        target: SocketAddr,
        cfg: &HealthCheckConfig,
        probe: Arc<dyn Probe>,
        events: mpsc::Sender<HealthEvent>,
        start: HealthState,
    ) -> Result<HealthHandle, HealthConfigError> {
        // An invalid config (a zero interval, a timeout longer than the interval) would make
        // the loop spin or checks overlap; refuse it here rather than trust every caller.
        cfg.validate()?;
        let (state_tx, state_rx) = watch::channel(start);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            target_id,
            target,
            cfg: cfg.clone(),
            probe,
            events,
            state: state_tx,
        };
        Ok(HealthHandle {
            target_id,
            target,
            state: state_rx,
            _stop: stop_tx,
            task: tokio::spawn(task.run(stop_rx)),
        })
    }
}

/// Owns one target's checking task; dropping it stops the task.
#[derive(Debug)]
pub struct HealthHandle {
    target_id: u64,
    target: SocketAddr,
    state: watch::Receiver<HealthState>,
    /// Never sent on: its drop is the stop signal.
    _stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HealthHandle {
    /// The target's current health state (a copy).
    pub fn snapshot(&self) -> HealthState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state update, for callers that want to await changes.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.state.clone()
    }

    pub fn target_id(&self) -> u64 {
        self.target_id
    }

    /// The address being probed.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops the task without waiting for it; same as dropping the handle.
    pub fn stop(self) {
        drop(self);
    }

    /// Stops the task and waits until it has exited (its sockets closed).
    pub async fn stopped(self) {
        // Drop the sender explicitly: fields left in a `..` pattern would live until the end
        // of this function, and the task would never hear the stop it is awaited for.
        let HealthHandle {
            _stop: stop, task, ..
        } = self;
        drop(stop);
        // The task never panics by design; a JoinError here would only repeat a panic that
        // the runtime has already reported.
        let _ = task.await;
    }

    /// Whether the task has exited.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// What one checking task owns.
struct Task {
    target_id: u64,
    target: SocketAddr,
    cfg: HealthCheckConfig,
    probe: Arc<dyn Probe>,
    events: mpsc::Sender<HealthEvent>,
    state: watch::Sender<HealthState>,
}

impl Task {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut state = self.state.borrow().clone();
        let mut next = Instant::now() + first_check_delay(self.target_id, self.target, &self.cfg);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = sleep_until(next) => {}
            }
            let started = Instant::now();
            let result = tokio::select! {
                _ = &mut stop => break,
                result = self.probe.check(self.target) => result,
            };
            let transition = state.record(&result, std::time::Instant::now(), &self.cfg);
            self.state.send_replace(state.clone());
            // Scheduled from the start of this check, so the period does not drift by the
            // probe's latency and targets keep the phases their first delay gave them.
            next = started + state.next_check_in(&self.cfg);

            let Some(transition) = transition else {
                continue;
            };
            let event = HealthEvent {
                target_id: self.target_id,
                target: self.target,
                transition,
                latency: result.as_ref().ok().copied(),
                error: result.as_ref().err().map(ToString::to_string),
            };
            self.log(&event);
            tokio::select! {
                _ = &mut stop => break,
                sent = self.events.send(event) => if sent.is_err() {
                    log::debug!("health: event receiver for target {} is gone", self.target_id);
                },
            }
        }
        log::debug!(
            "health: stopped checking target {} ({})",
            self.target_id,
            self.target
        );
    }

    fn log(&self, event: &HealthEvent) {
        let kind = self.probe.kind();
        match (event.transition, &event.error, event.latency) {
            (Transition::Down, error, _) => log::info!(
                "health: target {} {} ({kind}) DOWN after {} failed checks: {}",
                self.target_id,
                self.target,
                self.cfg.fall,
                error.as_deref().unwrap_or("unknown error"),
            ),
            (Transition::Up, _, latency) => log::info!(
                "health: target {} {} ({kind}) UP after {} good checks, latency {:?}",
                self.target_id,
                self.target,
                self.cfg.rise,
                latency.unwrap_or_default(),
            ),
        }
    }
}

/// Delay before a target's first check: a fixed fraction of the interval (capped at
/// [`MAX_FIRST_CHECK_DELAY`]) derived by hashing the target, so targets spawned together at
/// config load are checked spread over the interval instead of in one burst. Derived rather
/// than random so a given target always gets the same phase, which keeps tests and packet
/// captures reproducible.
fn first_check_delay(target_id: u64, target: SocketAddr, cfg: &HealthCheckConfig) -> Duration {
    let span = cfg.interval().min(MAX_FIRST_CHECK_DELAY);
    let span_nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(fnv1a(target_id, target) % span_nanos)
}

/// FNV-1a over the target id, IP and port: small, stable across Rust releases (unlike
/// `DefaultHasher`), and plenty for spreading start times.
fn fnv1a(target_id: u64, target: SocketAddr) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let ip = match target.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    };
    target_id
        .to_be_bytes()
        .iter()
        .chain(ip.iter())
        .chain(target.port().to_be_bytes().iter())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashSet,
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
    };

    use tokio::net::TcpListener;

    use super::*;
    use crate::health::{
        config::CheckKind,
        probe::{ProbeError, ProbeFuture},
    };

    const WAIT: Duration = Duration::from_secs(10);

    /// A probe whose answer the test flips; counts its checks.
    #[derive(Default)]
    struct Switch {
        failing: AtomicBool,
        checks: AtomicU64,
    }

    impl Probe for Switch {
        fn check<'a>(&'a self, _target: SocketAddr) -> ProbeFuture<'a> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            let failing = self.failing.load(Ordering::SeqCst);
            Box::pin(async move {
                if failing {
                    Err(ProbeError::Refused)
                } else {
                    Ok(Duration::from_millis(1))
                }
            })
        }

        fn kind(&self) -> &'static str {
            "switch"
        }
    }

    /// A new backend's starting state.
    fn fresh() -> HealthState {
        HealthState::new(std::time::Instant::now())
    }

    fn fast_cfg() -> HealthCheckConfig {
        HealthCheckConfig {
            interval_ms: 10,
            down_interval_ms: 20,
            timeout_ms: 5,
            rise: 2,
            fall: 2,
            ..Default::default()
        }
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
    }

    #[track_caller]
    fn expect_event(
        event: Result<Option<HealthEvent>, tokio::time::error::Elapsed>,
    ) -> HealthEvent {
        match event {
            Ok(Some(event)) => event,
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no health event within {WAIT:?}"),
        }
    }

    #[test]
    fn first_check_delay_is_stable_bounded_and_spread() {
        let cfg = HealthCheckConfig::default();
        let a = first_check_delay(1, loopback(80), &cfg);
        assert_eq!(a, first_check_delay(1, loopback(80), &cfg));
        let delays: HashSet<_> = (0..100)
            .map(|port| first_check_delay(1, loopback(port), &cfg))
            .collect();
        assert!(delays.len() > 90, "targets get distinct phases");
        assert!(delays.iter().all(|d| *d < cfg.interval()));
        let slow = HealthCheckConfig {
            interval_ms: 3_600_000,
            down_interval_ms: 3_600_000,
            ..Default::default()
        };
        assert!(
            (0..100).all(|id| first_check_delay(id, loopback(80), &slow) < MAX_FIRST_CHECK_DELAY)
        );
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let (tx, _rx) = mpsc::channel(1);
        let cfg = HealthCheckConfig {
            interval_ms: 0,
            ..Default::default()
        };
        let err = HealthChecker::default()
            .spawn(1, loopback(80).ip(), loopback(80), &cfg, tx, fresh())
            .expect_err("zero interval");
        assert_eq!(err.to_string(), "interval_ms must be 10..=3600000, got 0");
    }

    #[tokio::test]
    async fn reports_down_then_up_and_stops() {
        let probe = Arc::new(Switch::default());
        probe.failing.store(true, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::channel(8);
        let handle = HealthChecker::spawn_with_probe(
            7,
            loopback(9),
            &fast_cfg(),
            probe.clone(),
            tx,
            fresh(),
        )
        .expect("valid config");
        assert!(handle.snapshot().healthy, "starts healthy");

        let down = expect_event(tokio::time::timeout(WAIT, rx.recv()).await);
        assert_eq!(down.target_id, 7);
        assert_eq!(down.target, loopback(9));
        assert_eq!(down.transition, Transition::Down);
        assert_eq!(down.latency, None);
        assert_eq!(down.error, Some(ProbeError::Refused.to_string()));
        let snap = handle.snapshot();
        assert!(!snap.healthy);
        assert!(snap.checks_failed >= 2);

        probe.failing.store(false, Ordering::SeqCst);
        let up = expect_event(tokio::time::timeout(WAIT, rx.recv()).await);
        assert_eq!(up.transition, Transition::Up);
        assert_eq!(up.latency, Some(Duration::from_millis(1)));
        assert_eq!(up.error, None);
        assert!(handle.snapshot().healthy);
        assert_eq!(handle.snapshot().transitions, 2);

        handle.stopped().await;
        let checks = probe.checks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            probe.checks.load(Ordering::SeqCst),
            checks,
            "no checks after stop"
        );
    }

    #[tokio::test]
    async fn a_check_started_down_stays_down_until_rise_successes() {
        // A replacing check (new health-check settings) starts from the old one's verdict
        // and totals: a backend that was down must not take flows before `rise` successes,
        // a failing one started down reports nothing, and the counts go on.
        let probe = Arc::new(Switch::default());
        probe.failing.store(true, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::channel(8);
        let old = HealthState {
            healthy: false,
            consecutive_ok: 1,
            checks_ok: 40,
            checks_failed: 7,
            transitions: 3,
            ..fresh()
        };
        let handle = HealthChecker::spawn_with_probe(
            5,
            loopback(9),
            &fast_cfg(),
            probe.clone(),
            tx,
            old.continued(),
        )
        .expect("valid config");
        assert!(!handle.snapshot().healthy, "starts down");
        assert_eq!(
            handle.snapshot().checks_ok,
            40,
            "starts from the old totals"
        );
        let quiet = tokio::time::timeout(Duration::from_millis(150), rx.recv()).await;
        assert!(
            quiet.is_err(),
            "failures of a down backend are no transition: {quiet:?}"
        );
        assert!(probe.checks.load(Ordering::SeqCst) >= 3);
        probe.failing.store(false, Ordering::SeqCst);
        let up = expect_event(tokio::time::timeout(WAIT, rx.recv()).await);
        assert_eq!(up.transition, Transition::Up);
        let snap = handle.snapshot();
        assert!(snap.healthy);
        assert!(
            snap.checks_ok >= 42,
            "after rise = 2 successes: {}",
            snap.checks_ok
        );
        assert!(
            snap.checks_failed >= 10,
            "3 failures more: {}",
            snap.checks_failed
        );
        assert_eq!(snap.transitions, 4);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        let (tx, mut rx) = mpsc::channel(1);
        let probe = Arc::new(Switch::default());
        let handle =
            HealthChecker::spawn_with_probe(1, loopback(9), &fast_cfg(), probe, tx, fresh())
                .expect("valid config");
        drop(handle);
        // The task owned the only sender: the channel closes once the task has exited.
        let closed = tokio::time::timeout(WAIT, rx.recv()).await;
        assert!(matches!(closed, Ok(None)), "task still running: {closed:?}");
    }

    #[tokio::test]
    async fn real_tcp_backend_going_away_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let cfg = HealthCheckConfig {
            kind: CheckKind::Tcp,
            fall: 1,
            interval_ms: 20,
            down_interval_ms: 20,
            timeout_ms: 10,
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel(8);
        // The caller passes the VIP port; cfg.port is unset, so that port is probed.
        let handle = HealthChecker {
            tunnel_source_v4: None,
            tunnel_source_v6: None,
            source_v4: Some(Ipv4Addr::LOCALHOST),
            source_v6: None,
        }
        .spawn(3, loopback(port).ip(), loopback(port), &cfg, tx, fresh())
        .expect("valid config");
        assert_eq!(handle.target(), loopback(port));

        let mut updates = handle.subscribe();
        // Copy out of the watch's `Ref` at once: holding it would block the task's next
        // state update (and, on this single-threaded runtime, the whole test).
        let checks_ok = tokio::time::timeout(WAIT, updates.wait_for(|s| s.checks_ok > 0))
            .await
            .map(|seen| seen.map(|state| state.checks_ok));
        assert!(
            matches!(checks_ok, Ok(Ok(n)) if n > 0),
            "no successful check"
        );
        assert!(handle.snapshot().healthy);

        drop(listener);
        let down = expect_event(tokio::time::timeout(WAIT, rx.recv()).await);
        assert_eq!((down.target_id, down.transition), (3, Transition::Down));
        assert!(!handle.snapshot().healthy);
        handle.stopped().await;
    }

    #[tokio::test]
    async fn configured_port_overrides_the_vip_port() {
        let (tx, _rx) = mpsc::channel(1);
        let cfg = HealthCheckConfig {
            port: Some(8080),
            kind: CheckKind::None,
            ..Default::default()
        };
        let handle = HealthChecker::default()
            .spawn(1, loopback(80).ip(), loopback(80), &cfg, tx, fresh())
            .expect("valid config");
        assert_eq!(handle.target(), loopback(8080));
        assert!(!handle.is_finished());
    }
}
