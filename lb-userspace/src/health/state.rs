//! The per-backend health state machine: pure, clock passed in, no I/O, so it is tested with a
//! fake clock. The runner feeds it probe results; nothing else decides up or down.

use std::time::{Duration, Instant};

use super::{config::HealthCheckConfig, probe::ProbeError};

/// A change of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `rise` consecutive successes while down: the backend takes traffic again.
    Up,
    /// `fall` consecutive failures while up: the backend leaves the lookup table.
    Down,
}

/// Everything known about one backend's health; cloned out as a snapshot for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    /// Whether the backend should receive new flows.
    pub healthy: bool,
    /// Successes since the last failure.
    pub consecutive_ok: u32,
    /// Failures since the last success.
    pub consecutive_fail: u32,
    /// When `healthy` last flipped (or the state was created).
    pub last_change: Instant,
    /// Latency of the most recent successful check.
    pub last_latency: Option<Duration>,
    /// Exponentially weighted moving average of successful checks' latency, alpha 0.3.
    pub latency_ewma: Option<Duration>,
    /// Number of Up/Down transitions so far.
    pub transitions: u64,
    /// Successful checks so far.
    pub checks_ok: u64,
    /// Failed checks so far.
    pub checks_failed: u64,
    /// The most recent failure's message, kept until the next success, so status output can
    /// say why a backend is down.
    pub last_error: Option<String>,
}

impl HealthState {
    /// A new backend starts healthy, whatever the check kind: a freshly configured VIP serves
    /// traffic at once, and a dead backend is taken out after `fall` failed checks.
    pub fn new(now: Instant) -> Self {
        Self {
            healthy: true,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_change: now,
            last_latency: None,
            latency_ewma: None,
            transitions: 0,
            checks_ok: 0,
            checks_failed: 0,
            last_error: None,
        }
    }

    /// What a check replacing this one (new health-check settings) starts from: this one's
    /// verdict and running totals (status and metrics go on rather than start again), its
    /// consecutive results forgotten, so that the new check needs `rise` or `fall` results
    /// of its own to change the verdict.
    pub fn continued(&self) -> Self {
        Self {
            consecutive_ok: 0,
            consecutive_fail: 0,
            ..self.clone()
        }
    }

    /// Folds one check result in; returns the transition it caused, if any.
    ///
    /// Counters saturate rather than wrap, so a backend failing for years stays down.
    pub fn record(
        &mut self,
        result: &Result<Duration, ProbeError>,
        now: Instant,
        cfg: &HealthCheckConfig,
    ) -> Option<Transition> {
        match result {
            Ok(latency) => {
                self.checks_ok = self.checks_ok.saturating_add(1);
                self.consecutive_ok = self.consecutive_ok.saturating_add(1);
                self.consecutive_fail = 0;
                self.last_error = None;
                self.last_latency = Some(*latency);
                self.latency_ewma = Some(match self.latency_ewma {
                    None => *latency,
                    Some(avg) => ewma(avg, *latency),
                });
                (!self.healthy && self.consecutive_ok >= cfg.rise)
                    .then(|| self.flip(true, now, Transition::Up))
            }
            Err(err) => {
                self.checks_failed = self.checks_failed.saturating_add(1);
                self.consecutive_fail = self.consecutive_fail.saturating_add(1);
                self.consecutive_ok = 0;
                self.last_error = Some(err.to_string());
                (self.healthy && self.consecutive_fail >= cfg.fall)
                    .then(|| self.flip(false, now, Transition::Down))
            }
        }
    }

    fn flip(&mut self, healthy: bool, now: Instant, transition: Transition) -> Transition {
        self.healthy = healthy;
        self.last_change = now;
        self.transitions = self.transitions.saturating_add(1);
        transition
    }

    /// How long until the next check: `interval` while up, the slower `down_interval` while
    /// down (a dead backend is probed less often; it needs `rise` checks at that pace to
    /// return).
    pub fn next_check_in(&self, cfg: &HealthCheckConfig) -> Duration {
        if self.healthy {
            cfg.interval()
        } else {
            cfg.down_interval()
        }
    }
}

/// `0.3 * sample + 0.7 * avg`, in integer nanoseconds: exact and the same on every machine.
/// Alpha 0.3 lets a real latency shift show within a few checks while one slow check moves
/// the average by less than a third of its excess.
fn ewma(avg: Duration, sample: Duration) -> Duration {
    let nanos = (3 * sample.as_nanos() + 7 * avg.as_nanos()) / 10;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            rise,
            fall,
            interval_ms: 1_000,
            down_interval_ms: 5_000,
            ..Default::default()
        }
    }

    fn ok(ms: u64) -> Result<Duration, ProbeError> {
        Ok(MS * ms as u32)
    }

    fn fail() -> Result<Duration, ProbeError> {
        Err(ProbeError::Refused)
    }

    /// A fake clock: every step is one second later than the last.
    struct Clock(Instant);

    impl Clock {
        fn tick(&mut self) -> Instant {
            self.0 += Duration::from_secs(1);
            self.0
        }
    }

    #[test]
    fn starts_healthy_with_empty_counters() {
        let t0 = Instant::now();
        let s = HealthState::new(t0);
        assert!(s.healthy);
        assert_eq!((s.checks_ok, s.checks_failed, s.transitions), (0, 0, 0));
        assert_eq!(s.last_change, t0);
        assert_eq!(s.latency_ewma, None);
    }

    #[test]
    fn goes_down_after_fall_failures_and_up_after_rise_successes() {
        let cfg = cfg(2, 3);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);

        assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
        assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
        assert!(s.healthy, "two failures are below fall=3");
        let t_down = clock.tick();
        assert_eq!(s.record(&fail(), t_down, &cfg), Some(Transition::Down));
        assert!(!s.healthy);
        assert_eq!(s.last_change, t_down);
        // Further failures while down change nothing.
        assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
        assert_eq!(s.consecutive_fail, 4);

        assert_eq!(s.record(&ok(5), clock.tick(), &cfg), None);
        let t_up = clock.tick();
        assert_eq!(s.record(&ok(5), t_up, &cfg), Some(Transition::Up));
        assert!(s.healthy);
        assert_eq!(s.last_change, t_up);
        assert_eq!(s.transitions, 2);
        assert_eq!((s.checks_ok, s.checks_failed), (2, 4));
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let cfg = cfg(2, 3);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);
        for _ in 0..10 {
            assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
            assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
            assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
        }
        assert!(s.healthy, "never three failures in a row");
        assert_eq!((s.consecutive_ok, s.consecutive_fail), (1, 0));
        assert_eq!(s.transitions, 0);
    }

    #[test]
    fn a_failure_resets_the_rise_streak() {
        let cfg = cfg(3, 1);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);
        assert_eq!(
            s.record(&fail(), clock.tick(), &cfg),
            Some(Transition::Down)
        );
        for _ in 0..5 {
            assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
            assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
            assert_eq!(s.record(&fail(), clock.tick(), &cfg), None);
        }
        assert!(!s.healthy);
        assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
        assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
        assert_eq!(s.record(&ok(1), clock.tick(), &cfg), Some(Transition::Up));
    }

    #[test]
    fn successes_while_healthy_never_transition() {
        let cfg = cfg(1, 1);
        let mut s = HealthState::new(Instant::now());
        let mut clock = Clock(s.last_change);
        for _ in 0..5 {
            assert_eq!(s.record(&ok(1), clock.tick(), &cfg), None);
        }
        assert_eq!(s.transitions, 0);
    }

    #[test]
    fn last_error_is_kept_until_a_success() {
        let cfg = cfg(1, 1);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);
        s.record(&fail(), clock.tick(), &cfg);
        assert_eq!(
            s.last_error.as_deref(),
            Some(ProbeError::Refused.to_string().as_str())
        );
        s.record(&ok(1), clock.tick(), &cfg);
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn latency_ewma_uses_alpha_0_3() {
        let cfg = cfg(2, 3);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);
        s.record(&ok(10), clock.tick(), &cfg);
        assert_eq!(
            s.latency_ewma,
            Some(MS * 10),
            "first sample seeds the average"
        );
        s.record(&ok(20), clock.tick(), &cfg);
        // 0.3 * 20 + 0.7 * 10 = 13
        assert_eq!(s.latency_ewma, Some(MS * 13));
        assert_eq!(s.last_latency, Some(MS * 20));
        // Failures leave the latency figures alone.
        s.record(&fail(), clock.tick(), &cfg);
        assert_eq!(s.latency_ewma, Some(MS * 13));
        assert_eq!(s.last_latency, Some(MS * 20));
        s.record(&ok(3), clock.tick(), &cfg);
        // 0.3 * 3 + 0.7 * 13 = 10
        assert_eq!(s.latency_ewma, Some(MS * 10));
    }

    #[test]
    fn ewma_does_not_overflow() {
        assert_eq!(
            ewma(Duration::MAX, Duration::MAX).as_nanos(),
            u128::from(u64::MAX)
        );
    }

    #[test]
    fn checks_slow_down_while_down() {
        let cfg = cfg(1, 1);
        let mut clock = Clock(Instant::now());
        let mut s = HealthState::new(clock.0);
        assert_eq!(s.next_check_in(&cfg), Duration::from_secs(1));
        s.record(&fail(), clock.tick(), &cfg);
        assert_eq!(s.next_check_in(&cfg), Duration::from_secs(5));
        s.record(&ok(1), clock.tick(), &cfg);
        assert_eq!(s.next_check_in(&cfg), Duration::from_secs(1));
    }
}
