//! Graceful removal, as load balancers' "connection draining" / "deregistration delay" does
//! it: the backend is drained (no new flows), then removed once it has carried no packet for
//! a quiet period (its clients are done), or when its deadline has passed, whichever comes
//! first. The daemon runs it (`backend.remove` with `drain_s`: [`Removal`]), so that it
//! survives the client that asked; `xlb backend drain --wait` follows a drain the same way
//! from the CLI, without removing.
//!
//! The balancer sees only the clients' half of each connection (direct server return), so
//! "done" is read from the backend's packet counter: a client still downloading sends ACKs,
//! one still uploading sends data; a connection left open and silent looks done, which is
//! what the deadline-free alternative (waiting for the connection table to empty, which
//! only LRU eviction empties) could never tell apart either.

use std::time::{Duration, Instant};

/// The shortest quiet period and drain deadline `--quiet` and `--drain` accept, and the
/// longest.
pub const SECS_MIN: u64 = 1;
pub const SECS_MAX: u64 = 86_400;

/// How often the backend's counter is read while draining.
pub const POLL: Duration = Duration::from_millis(500);

/// The quiet period when none is given.
pub const DEFAULT_QUIET_S: u64 = 5;

/// A deadline or quiet period of `n` seconds, if within [`SECS_MIN`]..=[`SECS_MAX`].
pub fn check_secs(n: u64) -> Result<Duration, String> {
    if !(SECS_MIN..=SECS_MAX).contains(&n) {
        return Err(format!("{n} s is outside {SECS_MIN}..={SECS_MAX} s"));
    }
    Ok(Duration::from_secs(n))
}

/// `--drain` / `--wait` / `--quiet` values: whole seconds within [`check_secs`]' bounds.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    check_secs(n)
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

/// How a graceful removal ended (`ended_removals[].outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Removed once quiet: its clients were done.
    Quiet,
    /// Removed at the deadline, still carrying traffic.
    Deadline,
    /// The data plane refused the removal: the backend stays, drained.
    Failed,
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

    /// How long the counter has not moved, at `at` (zero before the first reading).
    pub fn idle(&self, at: Duration) -> Duration {
        self.last
            .map_or(Duration::ZERO, |(_, since)| at.saturating_sub(since))
    }
}

/// A graceful removal the daemon runs: the backend's slot (a backend removed and added again
/// meanwhile has another), when the drain began, and its counter's watch.
#[derive(Debug)]
pub struct Removal {
    slot: u32,
    started: Instant,
    quiet: Duration,
    deadline: Duration,
    watch: QuietWatch,
}

/// Where a [`Removal`] stands, for `status` and `stats`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RemovalView {
    /// Seconds since the drain began.
    pub draining_s: f64,
    /// Seconds since the backend's last packet (since the drain began, if none came).
    pub idle_s: f64,
    /// The quiet period.
    pub quiet_s: u64,
    /// The deadline, counted from the drain's start.
    pub deadline_s: u64,
}

impl Removal {
    /// A removal of the backend in `slot`, drained at `now`.
    pub fn new(slot: u32, quiet: Duration, deadline: Duration, now: Instant) -> Self {
        Self {
            slot,
            started: now,
            quiet,
            deadline,
            watch: QuietWatch::new(quiet, deadline),
        }
    }

    /// The backend's slot when the removal began.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The counter of the backend now in the removal's place (`None`: gone, or in another
    /// slot), read at `now`.
    pub fn observe(&mut self, now: Instant, slot_packets: Option<(u32, u64)>) -> Verdict {
        let packets = slot_packets
            .filter(|(slot, _)| *slot == self.slot)
            .map(|(_, p)| p);
        self.watch
            .observe(now.saturating_duration_since(self.started), packets)
    }

    /// Seconds since the drain began, at `now`.
    pub fn draining(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Where it stands at `now`.
    pub fn view(&self, now: Instant) -> RemovalView {
        let at = self.draining(now);
        RemovalView {
            draining_s: round_ms(at),
            idle_s: round_ms(self.watch.idle(at)),
            quiet_s: self.quiet.as_secs(),
            deadline_s: self.deadline.as_secs(),
        }
    }
}

/// Seconds with millisecond precision (what a person or a poller needs).
fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
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
    fn a_removal_follows_its_own_slot_only() {
        let t0 = Instant::now();
        let at = |x: f64| t0 + s(x);
        let mut r = Removal::new(7, s(2.0), s(10.0), t0);
        assert_eq!(r.observe(at(0.0), Some((7, 40))), Verdict::Busy);
        assert_eq!(r.view(at(1.5)).idle_s, 1.5);
        assert_eq!(r.observe(at(1.0), Some((7, 41))), Verdict::Busy);
        assert_eq!(r.view(at(1.5)).idle_s, 0.5);
        assert_eq!(
            r.view(at(1.5)),
            RemovalView {
                draining_s: 1.5,
                idle_s: 0.5,
                quiet_s: 2,
                deadline_s: 10
            }
        );
        assert_eq!(r.observe(at(3.0), Some((7, 41))), Verdict::Quiet);
        // Removed and added again under another slot: not the backend being removed.
        let mut r = Removal::new(7, s(2.0), s(10.0), t0);
        r.observe(at(0.0), Some((7, 40)));
        assert_eq!(r.observe(at(0.5), Some((8, 0))), Verdict::Gone);
        assert_eq!(r.observe(at(0.5), None), Verdict::Gone);
    }

    #[test]
    fn seconds_are_whole_and_bounded() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "1.5", "-3", "86401", "soon", ""] {
            assert!(parse_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_secs(0).is_err() && check_secs(86_401).is_err());
        assert_eq!(check_secs(86_400), Ok(Duration::from_secs(86_400)));
    }
}
