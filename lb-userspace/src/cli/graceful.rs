//! `xlb backend remove --drain SECS`: a graceful removal, as load balancers' "connection
//! draining" / "deregistration delay" does it. The backend is drained (no new flows), then
//! removed once it has carried no packet for a quiet period (its clients are done), or when
//! SECS have passed, whichever comes first.
//!
//! The balancer sees only the clients' half of each connection (direct server return), so
//! "done" is read from the backend's packet counter: a client still downloading sends ACKs,
//! one still uploading sends data; a connection left open and silent looks done, which is
//! what the deadline-free alternative (waiting for the connection table to empty, which
//! only LRU eviction empties) could never tell apart either.

use std::time::Duration;

/// The shortest quiet period and drain deadline `--quiet` and `--drain` accept, and the
/// longest.
pub const SECS_MIN: u64 = 1;
pub const SECS_MAX: u64 = 86_400;

/// How often the backend's counter is read while draining.
pub const POLL: Duration = Duration::from_millis(500);

/// `--drain` / `--quiet` values: whole seconds within [`SECS_MIN`]..=[`SECS_MAX`].
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    if !(SECS_MIN..=SECS_MAX).contains(&n) {
        return Err(format!("{n} s is outside {SECS_MIN}..={SECS_MAX} s"));
    }
    Ok(Duration::from_secs(n))
}

/// What a drain has come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still carrying packets, within the deadline: wait.
    Busy,
    /// No packet for the whole quiet period.
    Quiet,
    /// The deadline passed with packets still flowing.
    TimedOut,
    /// The backend's counter went away or backwards: removed (or removed and added again)
    /// by someone else meanwhile.
    Gone,
}

/// Follows a draining backend's packet counter.
#[derive(Debug)]
pub struct QuietWatch {
    quiet: Duration,
    deadline: Duration,
    /// The counter when it last moved, and when that was (time since the drain began).
    last: Option<(u64, Duration)>,
}

impl QuietWatch {
    /// A drain that ends after `quiet` without a packet, or at `deadline`.
    pub fn new(quiet: Duration, deadline: Duration) -> Self {
        Self {
            quiet,
            deadline,
            last: None,
        }
    }

    /// The backend's packet counter (`None`: no such backend any more) read at `at`, the
    /// time since the drain began. The first reading starts the quiet period.
    pub fn observe(&mut self, at: Duration, packets: Option<u64>) -> Verdict {
        let Some(packets) = packets else {
            return Verdict::Gone;
        };
        let since = match self.last {
            Some((p, _)) if packets < p => return Verdict::Gone,
            Some((p, t)) if packets == p => t,
            _ => {
                self.last = Some((packets, at));
                at
            }
        };
        if at.saturating_sub(since) >= self.quiet {
            Verdict::Quiet
        } else if at >= self.deadline {
            Verdict::TimedOut
        } else {
            Verdict::Busy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn a_drain_ends_when_the_backend_goes_quiet_or_at_the_deadline() {
        // Traffic for 3 s, then none: quiet 2 s after the last packet.
        let mut w = QuietWatch::new(s(2.0), s(10.0));
        let mut verdicts = Vec::new();
        for (at, packets) in [(0.0, 100), (1.0, 150), (3.0, 180), (4.0, 180), (5.0, 180)] {
            verdicts.push(w.observe(s(at), Some(packets)));
        }
        use Verdict::*;
        assert_eq!(verdicts, [Busy, Busy, Busy, Busy, Quiet]);

        // An idle backend: quiet once the period has passed since the first reading.
        let mut w = QuietWatch::new(s(2.0), s(10.0));
        assert_eq!(w.observe(s(0.0), Some(7)), Busy);
        assert_eq!(w.observe(s(2.0), Some(7)), Quiet);

        // Busy to the end: the deadline, even if the quiet period is longer than the drain.
        let mut w = QuietWatch::new(s(20.0), s(3.0));
        for (at, packets) in [(0.0, 1), (1.0, 2), (2.0, 3)] {
            assert_eq!(w.observe(s(at), Some(packets)), Busy);
        }
        assert_eq!(w.observe(s(3.0), Some(4)), TimedOut);
        // Quiet wins over the deadline when both hold.
        let mut w = QuietWatch::new(s(1.0), s(1.0));
        w.observe(s(0.0), Some(5));
        assert_eq!(w.observe(s(1.0), Some(5)), Quiet);

        // Removed meanwhile, or removed and added again (a new slot's counter).
        let mut w = QuietWatch::new(s(2.0), s(10.0));
        w.observe(s(0.0), Some(50));
        assert_eq!(w.observe(s(1.0), None), Gone);
        let mut w = QuietWatch::new(s(2.0), s(10.0));
        w.observe(s(0.0), Some(50));
        assert_eq!(w.observe(s(1.0), Some(3)), Gone);
    }

    #[test]
    fn seconds_are_whole_and_bounded() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "1.5", "-3", "86401", "soon", ""] {
            assert!(parse_secs(bad).is_err(), "{bad:?} accepted");
        }
    }
}
