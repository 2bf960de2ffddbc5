//! Per-CPU one-second windows that cap how often a CPU does something on behalf of
//! whoever sends it packets.
//!
//! - New flows recorded (`LbConfig::record_rate_limit`, `RECORD_WINDOW`). Every new flow
//!   costs a connection-table insert, and a full table makes room by evicting the least
//!   recently used entry. A flood of packets from spoofed sources is all new flows:
//!   unchecked, it would evict the established flows, which then keep their backend only as
//!   long as their VIP's table does not change. Beyond the limit, new flows of VIPs that
//!   schedule by hash are forwarded by that hash without an entry: the same backend on
//!   every packet, as long as the table stays, at a fraction of an insert's cost. Katran
//!   does the same (its `MAX_CONN_RATE`).
//! - New flows of a VIP (`new_flow_rate_limit`, `VIP_FLOW_WINDOW`, one window per VIP):
//!   what a VIP's backends are asked to take on in a second, so that a connection storm
//!   (a thundering herd after an outage, a flood of SYNs) reaches them at a rate they can
//!   take; beyond, new flows are dropped and their clients retry.
//! - New flows of a VIP from one client (`client_flow_rate_limit`, `CLIENT_WINDOWS`, one
//!   window per client and VIP in an LRU hash the CPUs share, its count added to
//!   atomically: `maps::ClientWindow`): so that one client (a runaway
//!   retry loop, one attacker) cannot take the VIP's whole limit, or its backends'
//!   capacity, from everybody else; counted before the VIP's limit, so that its refused
//!   flows do not use that up.
//! - ICMP errors we originate (`LbConfig::icmp_rate_limit`, `ICMP_WINDOW`): RFC 4443
//!   section 2.4 (f) says a node MUST limit the rate of the ICMPv6 errors it sends (RFC
//!   1812 section 4.3.2.8 says the same of IPv4's), so that a stream of oversized packets,
//!   with forged sources or not, does not turn into a stream of answers at line rate.
//!   Linux exempts exactly these errors (frag-needed, packet-too-big) from its ICMP rate
//!   limits so as not to hinder path MTU discovery, so the default here is high: a client
//!   needs one answer per path, and a window of segments in flight earns a few dozen of
//!   which only the first counts. Beyond the limit the packet is dropped and counted, and
//!   its sender, if real, retransmits.

/// Nanoseconds in one counting window.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// One CPU's events in the current window (the value of the `RECORD_WINDOW` and
/// `ICMP_WINDOW` per-CPU maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    /// Start of the window (`CLOCK_MONOTONIC` ns); 0 before the first event.
    pub start_ns: u64,
    /// Events seen in it, admitted or not.
    pub events: u32,
    /// Always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RateWindow>() == 16);

impl RateWindow {
    /// Counts one event at `now_ns`; true while the window's events are within `limit`
    /// (0: no limit, and nothing is counted). Events beyond the limit count too, so a CPU
    /// under a flood stays over the limit until a window starts without one.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if now_ns.wrapping_sub(self.start_ns) >= WINDOW_NS {
            self.start_ns = now_ns;
            self.events = 0;
        }
        self.events = self.events.saturating_add(1);
        self.events <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 5 * WINDOW_NS + 123;

    #[test]
    fn admits_up_to_the_limit_in_a_window_then_refuses_until_the_next() {
        let mut w = RateWindow::default();
        let admitted: [bool; 5] = core::array::from_fn(|i| w.admit(T0 + i as u64, 3));
        assert_eq!(admitted, [true, true, true, false, false]);
        // Still the same window one nanosecond before its end.
        assert!(!w.admit(T0 + WINDOW_NS - 1, 3));
        // The next one starts afresh.
        assert!(w.admit(T0 + WINDOW_NS, 3));
        assert_eq!(w.events, 1);
        assert_eq!(w.start_ns, T0 + WINDOW_NS);
    }

    #[test]
    fn no_limit_counts_nothing() {
        let mut w = RateWindow::default();
        for i in 0..1000 {
            assert!(w.admit(T0 + i, 0));
        }
        assert_eq!(w, RateWindow::default());
    }

    #[test]
    fn the_first_flow_opens_a_window_whatever_the_clock() {
        // A fresh window (start 0) and a clock that is still small, as in a young VM.
        let mut w = RateWindow::default();
        assert!(w.admit(WINDOW_NS, 1));
        assert!(!w.admit(WINDOW_NS + 1, 1));
        // A clock below one window after boot: start 0 is then inside the window.
        let mut young = RateWindow::default();
        assert!(young.admit(10, 1));
        assert!(!young.admit(11, 1));
    }

    #[test]
    fn the_count_saturates_under_a_long_flood() {
        let mut w = RateWindow {
            start_ns: T0,
            events: u32::MAX - 1,
            _pad: 0,
        };
        assert!(!w.admit(T0 + 1, u32::MAX - 2));
        assert!(!w.admit(T0 + 2, u32::MAX - 2));
        assert_eq!(w.events, u32::MAX);
    }
}
