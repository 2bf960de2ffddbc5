//! How many new flows each CPU records per second (`LbConfig::record_rate_limit`).
//!
//! Every new flow costs a connection-table insert, and a full table makes room by evicting
//! the least recently used entry. A flood of packets from spoofed sources is all new flows:
//! unchecked, it would evict the established flows, which then keep their backend only as
//! long as their VIP's table does not change. Beyond the limit, new flows of VIPs that
//! schedule by hash are forwarded by that hash without an entry: the same backend on every
//! packet, as long as the table stays, at a fraction of an insert's cost. Katran does the
//! same (its `MAX_CONN_RATE`).

/// Nanoseconds in one counting window.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// One CPU's new flows in the current window (the `RECORD_WINDOW` per-CPU map's value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordWindow {
    /// Start of the window (`CLOCK_MONOTONIC` ns); 0 before the first new flow.
    pub start_ns: u64,
    /// New flows seen in it, recorded or not.
    pub flows: u32,
    /// Always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RecordWindow>() == 16);

impl RecordWindow {
    /// Counts one new flow seen at `now_ns`; true while the window's flows are within
    /// `limit` (0: no limit, and nothing is counted). Flows beyond the limit count too, so
    /// a CPU under a flood stays over the limit until a window starts without one.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        if now_ns.wrapping_sub(self.start_ns) >= WINDOW_NS {
            self.start_ns = now_ns;
            self.flows = 0;
        }
        self.flows = self.flows.saturating_add(1);
        self.flows <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 5 * WINDOW_NS + 123;

    #[test]
    fn admits_up_to_the_limit_in_a_window_then_refuses_until_the_next() {
        let mut w = RecordWindow::default();
        let admitted: [bool; 5] = core::array::from_fn(|i| w.admit(T0 + i as u64, 3));
        assert_eq!(admitted, [true, true, true, false, false]);
        // Still the same window one nanosecond before its end.
        assert!(!w.admit(T0 + WINDOW_NS - 1, 3));
        // The next one starts afresh.
        assert!(w.admit(T0 + WINDOW_NS, 3));
        assert_eq!(w.flows, 1);
        assert_eq!(w.start_ns, T0 + WINDOW_NS);
    }

    #[test]
    fn no_limit_counts_nothing() {
        let mut w = RecordWindow::default();
        for i in 0..1000 {
            assert!(w.admit(T0 + i, 0));
        }
        assert_eq!(w, RecordWindow::default());
    }

    #[test]
    fn the_first_flow_opens_a_window_whatever_the_clock() {
        // A fresh window (start 0) and a clock that is still small, as in a young VM.
        let mut w = RecordWindow::default();
        assert!(w.admit(WINDOW_NS, 1));
        assert!(!w.admit(WINDOW_NS + 1, 1));
        // A clock below one window after boot: start 0 is then inside the window.
        let mut young = RecordWindow::default();
        assert!(young.admit(10, 1));
        assert!(!young.admit(11, 1));
    }

    #[test]
    fn the_count_saturates_under_a_long_flood() {
        let mut w = RecordWindow {
            start_ns: T0,
            flows: u32::MAX - 1,
            _pad: 0,
        };
        assert!(!w.admit(T0 + 1, u32::MAX - 2));
        assert!(!w.admit(T0 + 2, u32::MAX - 2));
        assert_eq!(w.flows, u32::MAX);
    }
}
