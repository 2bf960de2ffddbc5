//! Slow start: a backend coming into service (up again after failing its checks, added at
//! runtime, undrained) takes new flows at a share of its weight that grows linearly from
//! 1 % to all of it over the VIP's `slow_start_s`, as HAProxy's `slowstart` and Envoy's
//! slow start mode do, so that a cold server (empty caches, a JIT to warm, pools to fill)
//! is not handed its whole share of new connections at once. Only new flows follow
//! weights; flows already recorded stay where they are.
//!
//! The daemon steps each ramp once a second (`Daemon::refresh_ramps`); each step is a
//! weight change, which rebuilds the VIP's table and moves no recorded flow.

use std::time::Duration;

/// The share of its weight, in percent (1..=100), that a backend ramping for `elapsed` of
/// a slow start of `period` gets; 100 once the period is over (or for no period).
pub fn ramp_pct(elapsed: Duration, period: Duration) -> u32 {
    if period.is_zero() || elapsed >= period {
        return 100;
    }
    let pct = (elapsed.as_secs_f64() / period.as_secs_f64() * 100.0).ceil();
    (pct as u32).clamp(1, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_linearly_from_one_percent() {
        let s = Duration::from_secs_f64;
        let p = s(60.0);
        let got: Vec<u32> = [0.0, 0.3, 0.6, 6.0, 30.0, 59.9, 60.0, 3600.0]
            .iter()
            .map(|&t| ramp_pct(s(t), p))
            .collect();
        assert_eq!(got, [1, 1, 1, 10, 50, 100, 100, 100]);
        // Never 0 (that would take the backend out of the table), never above 100.
        for ms in (0..60_000).step_by(250) {
            let pct = ramp_pct(Duration::from_millis(ms), p);
            assert!((1..=100).contains(&pct), "{ms} ms: {pct}");
        }
        assert_eq!(ramp_pct(s(0.0), Duration::ZERO), 100);
    }
}
