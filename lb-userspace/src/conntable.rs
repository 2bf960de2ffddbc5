//! Reading the connection tables whole, in batches, and what the daemon learns from them.
//!
//! Why batches: a walk with `BPF_MAP_GET_NEXT_KEY` and `BPF_MAP_LOOKUP_ELEM` costs two
//! syscalls per flow, seconds of CPU for a table of a million flows. One
//! `BPF_MAP_LOOKUP_BATCH` call copies up to [`BATCH`] entries, a bucket at a time (a
//! bucket is never split across calls, so no entry is seen twice or skipped by a walk
//! that starts over mid-bucket). Entries that arrive or leave during a scan may or may not
//! be seen, like any walk of a live table.
//!
//! What it is for: `status` (flows per backend), `flows` (the flows themselves, and
//! forgetting some: [`ConnTables::forget`]), and the
//! periodic recount of least-connection counts ([`open_counted`], [`corrected`]), which the
//! data plane keeps by +1/−1 on the client's SYN and FIN/RST but cannot take back when the
//! kernel evicts an entry (LRU, silently), nor when a flow just stops (a vanished client, a
//! close by the server alone, UDP): without a recount those flows would stay counted for
//! good.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use lb_common::{
    flow::{FlowKey, FlowKeyV4},
    maps::{ConnEntry, CONN_F_CLOSED, CONN_F_COUNTED},
};

use crate::bpf_sys::{bpf, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_BATCH};

/// A least-connection TCP flow the table has not seen for this long no longer counts, unless
/// its VIP sets `idle_timeout_s` (IPVS's default timeout for established connections): the
/// client vanished, or the server closed it alone, which DSR never shows the balancer. It
/// counts again from its next packet's table visit.
pub const IDLE_TCP_S: u32 = 900;
/// The same for UDP, which has no close at all (IPVS's default UDP timeout).
pub const IDLE_UDP_S: u32 = 300;

/// Entries per batch call. A bucket whose chain is longer than this is read with a larger
/// buffer (the kernel says `ENOSPC`); LRU buckets hold a handful.
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr`, as the kernel reads it for the `*_BATCH`
/// commands. The kernel zeroes what lies past the size we pass.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Scanning a table failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The map's key or value size is not what this build expects (wrong object).
    #[error("map {map}: {what} size is {got} bytes, expected {want}")]
    Layout {
        /// Which map.
        map: &'static str,
        /// "key" or "value".
        what: &'static str,
        /// The map's.
        got: u32,
        /// Ours.
        want: usize,
    },
    /// The kernel refused the batch lookup.
    #[error("batch lookup in map {map}: {source}")]
    Lookup {
        /// Which map.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to delete entries (other than ones already gone).
    #[error("deleting from map {map}: {source}")]
    Delete {
        /// Which map.
        map: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The map's info could not be read.
    #[error("map {map}: {source}")]
    Info {
        /// Which map.
        map: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Both connection tables, by file descriptors of their own: a scan needs neither the
/// daemon's lock nor the maps' owners.
pub struct ConnTables {
    v4: OwnedFd,
    v6: OwnedFd,
    /// Entries each table holds at most (IPv4, IPv6): `--max-conns`.
    capacity: (u32, u32),
}

/// How full one table is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableFill {
    /// Entries it holds.
    pub entries: u64,
    /// Entries it holds at most; beyond, the kernel evicts the least recently used flows
    /// to record new ones.
    pub capacity: u32,
}

/// What a scan of both tables counts: flows per backend slot, and per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Entries per backend index.
    pub per_backend: HashMap<u32, u64>,
    /// The IPv4 table.
    pub v4: TableFill,
    /// The IPv6 table.
    pub v6: TableFill,
}

impl ConnTables {
    /// Opens the tables through `v4` (`CONNS_V4`) and `v6` (`CONNS`), checking that their
    /// keys and values have this build's sizes.
    pub fn new(v4: &aya::maps::MapData, v6: &aya::maps::MapData) -> Result<Self, ScanError> {
        let (v4, cap4) = checked::<FlowKeyV4>(v4, lb_common::maps::MAP_CONNS_V4)?;
        let (v6, cap6) = checked::<FlowKey>(v6, lb_common::maps::MAP_CONNS)?;
        Ok(Self {
            v4,
            v6,
            capacity: (cap4, cap6),
        })
    }

    /// Flows per backend index and per table (`status`).
    pub fn census(&self) -> Result<Census, ScanError> {
        let mut per_backend = HashMap::new();
        let mut count = |e: &ConnEntry| *per_backend.entry(e.backend).or_insert(0) += 1;
        let v4 = scan::<FlowKeyV4, ConnEntry>(self.v4.as_fd(), |_, e| count(e))
            .map_err(|source| lookup_err(lb_common::maps::MAP_CONNS_V4, source))?;
        let v6 = scan::<FlowKey, ConnEntry>(self.v6.as_fd(), |_, e| count(e))
            .map_err(|source| lookup_err(lb_common::maps::MAP_CONNS, source))?;
        let (cap4, cap6) = self.capacity;
        Ok(Census {
            per_backend,
            v4: TableFill {
                entries: v4,
                capacity: cap4,
            },
            v6: TableFill {
                entries: v6,
                capacity: cap6,
            },
        })
    }

    /// Calls `f` with every entry of both tables; returns how many there were.
    pub fn for_each(&self, mut f: impl FnMut(&ConnEntry)) -> Result<u64, ScanError> {
        self.for_each_flow(|_, e| f(e))
    }

    /// Calls `f` with every flow of both tables and its entry (IPv4 keys widened to
    /// [`FlowKey`]); returns how many there were.
    pub fn for_each_flow(&self, mut f: impl FnMut(&FlowKey, &ConnEntry)) -> Result<u64, ScanError> {
        let n4 = scan::<FlowKeyV4, ConnEntry>(self.v4.as_fd(), |k, e| f(&k.widen(), e))
            .map_err(|source| lookup_err(lb_common::maps::MAP_CONNS_V4, source))?;
        let n6 = scan::<FlowKey, ConnEntry>(self.v6.as_fd(), |k, e| f(k, e))
            .map_err(|source| lookup_err(lb_common::maps::MAP_CONNS, source))?;
        Ok(n4 + n6)
    }

    /// Deletes the entries of these flows (keys as [`ConnTables::for_each_flow`] gives
    /// them) from their tables; returns how many it deleted. A flow whose entry is already
    /// gone (ended and evicted meanwhile) is skipped. The flow's next packet is a new flow
    /// to the data plane: scheduled anew, or refused (`allowed_sources`).
    pub fn forget(&self, keys: &[FlowKey]) -> Result<u64, ScanError> {
        let (v4, v6): (Vec<&FlowKey>, Vec<&FlowKey>) = keys
            .iter()
            .partition(|k| k.family == lb_common::addr::FAMILY_V4);
        let v4: Vec<FlowKeyV4> = v4.into_iter().map(FlowKeyV4::of).collect();
        let v6: Vec<FlowKey> = v6.into_iter().copied().collect();
        let delete_err = |map| move |source| ScanError::Delete { map, source };
        let n4 = delete(self.v4.as_fd(), &v4).map_err(delete_err(lb_common::maps::MAP_CONNS_V4))?;
        let n6 = delete(self.v6.as_fd(), &v6).map_err(delete_err(lb_common::maps::MAP_CONNS))?;
        Ok(n4 + n6)
    }

    /// The IPv4 table, opened once more (tests write flows into it).
    #[cfg(test)]
    pub(crate) fn v4_map(&self) -> aya::maps::MapData {
        let fd = self.v4.try_clone().expect("dup the table's descriptor");
        aya::maps::MapData::from_fd(fd).expect("the IPv4 connection table")
    }

    /// The IPv6 table, opened once more (tests write flows into it).
    #[cfg(test)]
    pub(crate) fn v6_map(&self) -> aya::maps::MapData {
        let fd = self.v6.try_clone().expect("dup the table's descriptor");
        aya::maps::MapData::from_fd(fd).expect("the IPv6 connection table")
    }

    /// Flows per backend index, all of them.
    pub fn flows_per_backend(&self) -> Result<HashMap<u32, u64>, ScanError> {
        Ok(self.census()?.per_backend)
    }

    /// Least-connection flows still open and not idle now, per (backend index,
    /// generation), for the backend slots in `idle_s` (slot → its VIP's idle timeout in
    /// seconds): see [`open_counted`].
    pub fn open_counted(
        &self,
        idle_s: &HashMap<u32, u32>,
    ) -> Result<HashMap<(u32, u32), u64>, ScanError> {
        let now = monotonic_coarse_s();
        let mut out = HashMap::new();
        self.for_each(|e| open_counted(&mut out, e, now, |slot| idle_s.get(&slot).copied()))?;
        Ok(out)
    }
}

/// `CLOCK_MONOTONIC_COARSE` in seconds: the clock the data plane stamps
/// `ConnEntry::seen_s` with.
pub fn monotonic_coarse_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant the kernel
    // knows (it cannot fail for it).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u32
}

fn lookup_err(map: &'static str, source: io::Error) -> ScanError {
    ScanError::Lookup { map, source }
}

/// Checks that `map` (named `name`) is a connection table of this build: keys of type `K`,
/// [`ConnEntry`] values. Its info, for further checks.
pub fn check_layout<K>(
    map: &aya::maps::MapData,
    name: &'static str,
) -> Result<aya::maps::MapInfo, ScanError> {
    let info = map
        .info()
        .map_err(|source| ScanError::Info { map: name, source })?;
    let sizes = [
        ("key", info.key_size(), std::mem::size_of::<K>()),
        ("value", info.value_size(), std::mem::size_of::<ConnEntry>()),
    ];
    for (what, got, want) in sizes {
        if got as usize != want {
            return Err(ScanError::Layout {
                map: name,
                what,
                got,
                want,
            });
        }
    }
    Ok(info)
}

/// A descriptor of `map` of its own, after [`check_layout`], and its capacity.
fn checked<K>(map: &aya::maps::MapData, name: &'static str) -> Result<(OwnedFd, u32), ScanError> {
    let info = check_layout::<K>(map, name)?;
    let fd = map
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| lookup_err(name, source))?;
    Ok((fd, info.max_entries()))
}

/// Counts `e` into `tally` if it is a least-connection flow whose client has not closed it
/// and that the table saw within its backend slot's idle timeout before `now_s`
/// (`idle_s(slot)`: `None` for a slot not being recounted; an entry without a stamp, from
/// an older build, counts): what `BACKEND_ACTIVE` holds +1 for. Keyed by generation too: an
/// entry recorded under an earlier generation of the slot belongs to a backend that is gone
/// (its next packet is re-picked), and must not count for the slot's new backend.
pub fn open_counted(
    tally: &mut HashMap<(u32, u32), u64>,
    e: &ConnEntry,
    now_s: u32,
    idle_s: impl Fn(u32) -> Option<u32>,
) {
    if e.flags & CONN_F_COUNTED == 0 || e.flags & CONN_F_CLOSED != 0 {
        return;
    }
    let Some(idle) = idle_s(e.backend) else {
        return;
    };
    if e.seen_s != 0 && now_s.wrapping_sub(e.seen_s) > idle {
        return;
    }
    *tally.entry((e.backend, e.generation)).or_insert(0) += 1;
}

/// The count to write after a recount: `recount` flows were open in the table, the counter
/// read `before` when the scan began and reads `now`. The difference `now - before` is
/// what the data plane counted meanwhile, and is kept: writing `recount` alone would
/// lose it. An event during the scan that the scan also saw is counted twice, until the
/// next recount; the error never accumulates. Counters are `u64` that the data plane may
/// take below zero (two CPUs closing one flow), read as signed here.
pub fn corrected(before: u64, now: u64, recount: u64) -> u64 {
    let v = i128::from(now as i64) - i128::from(before as i64) + i128::from(recount);
    v.clamp(0, i128::from(i64::MAX)) as u64
}

/// Every entry of the hash map `fd` (keys `K`, values `V`, sizes checked by the caller),
/// in batches. Returns how many there were.
fn scan<K: Copy, V: Copy>(fd: BorrowedFd<'_>, mut f: impl FnMut(&K, &V)) -> io::Result<u64> {
    let mut cap = BATCH;
    let mut keys: Vec<K> = Vec::with_capacity(cap);
    let mut values: Vec<V> = Vec::with_capacity(cap);
    // Hash maps take a bucket index as the batch cursor; none (a null pointer) at first.
    let mut cursor: Option<u32> = None;
    let mut total = 0u64;
    loop {
        let mut next = 0u32;
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| c as *const u32 as u64),
            out_batch: std::ptr::addr_of_mut!(next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: cap as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the batch member of `union bpf_attr`; the kernel writes at most
        // `count` keys and values into buffers of that capacity and four bytes into `next`.
        let err = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // One bucket holds more than the buffer: grow it and ask again.
            Some(libc::ENOSPC) if attr.count == 0 => {
                cap *= 2;
                keys.reserve(cap);
                values.reserve(cap);
                continue;
            }
            // ENOENT: the walk is over; `count` says what this last call still copied.
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf(2) failed"))),
        }
        let n = (attr.count as usize).min(cap);
        // SAFETY: the kernel initialised the first `n` elements of each buffer (`K` and
        // `V` are plain-old-data map types whose sizes the caller checked).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        for (k, v) in keys.iter().zip(&values) {
            f(k, v);
        }
        total += n as u64;
        keys.clear();
        values.clear();
        if err.is_some() {
            return Ok(total);
        }
        cursor = Some(next);
    }
}

/// Deletes `keys` from the hash map `fd` (keys `K`, its size checked by the caller), in
/// batches; returns how many entries it deleted. Keys no longer in the map are skipped.
fn delete<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<u64> {
    let mut deleted = 0u64;
    let mut at = 0;
    while at < keys.len() {
        let chunk = &keys[at..keys.len().min(at + BATCH)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the batch member of `union bpf_attr`; the kernel reads `count`
        // keys from `keys` and writes back how many it deleted.
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        let done = (attr.count as usize).min(chunk.len());
        deleted += done as u64;
        match result {
            Ok(_) => at += chunk.len(),
            // The kernel stops at the first key it cannot find: gone meanwhile (the flow's
            // entry evicted), so go on after it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += done + 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(backend: u32, generation: u32, flags: u32) -> ConnEntry {
        ConnEntry {
            backend,
            generation,
            flags,
            ..Default::default()
        }
    }

    #[test]
    fn only_open_counted_flows_of_their_generation_are_tallied() {
        let mut t = HashMap::new();
        let entries = [
            entry(1, 7, CONN_F_COUNTED),
            entry(1, 7, CONN_F_COUNTED),
            entry(1, 7, CONN_F_COUNTED | CONN_F_CLOSED),
            entry(1, 7, 0),
            entry(1, 6, CONN_F_COUNTED),
            entry(2, 1, CONN_F_COUNTED),
        ];
        for e in &entries {
            open_counted(&mut t, e, 1000, |slot| (slot != 3).then_some(IDLE_TCP_S));
        }
        // Slot 3 is not being recounted (no VIP of it counts, or it was removed).
        open_counted(&mut t, &entry(3, 1, CONN_F_COUNTED), 1000, |slot| {
            (slot != 3).then_some(IDLE_TCP_S)
        });
        assert_eq!(t.get(&(1, 7)), Some(&2));
        assert_eq!(t.get(&(1, 6)), Some(&1));
        assert_eq!(t.get(&(2, 1)), Some(&1));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn idle_flows_stop_counting_after_their_slots_timeout() {
        let now = 100_000;
        let seen = |ago: u32| ConnEntry {
            seen_s: now - ago,
            ..entry(1, 1, CONN_F_COUNTED)
        };
        // (slot's idle timeout, entry) → counted
        let cases = [
            (IDLE_TCP_S, seen(0), true),
            (IDLE_TCP_S, seen(IDLE_TCP_S), true),
            (IDLE_TCP_S, seen(IDLE_TCP_S + 1), false),
            (IDLE_UDP_S, seen(IDLE_UDP_S), true),
            (IDLE_UDP_S, seen(IDLE_UDP_S + 1), false),
            (7200, seen(3600), true),
            (7200, seen(7201), false),
            // No stamp (recorded by an older build): counted.
            (IDLE_UDP_S, entry(1, 1, CONN_F_COUNTED), true),
        ];
        for (idle, e, want) in cases {
            let mut t = HashMap::new();
            open_counted(&mut t, &e, now, |_| Some(idle));
            assert_eq!(
                t.contains_key(&(1, 1)),
                want,
                "timeout {idle} seen {}",
                e.seen_s
            );
        }
        // Stamps from before the clock wrapped still age right.
        let mut t = HashMap::new();
        let e = ConnEntry {
            seen_s: u32::MAX - 5,
            ..entry(1, 1, CONN_F_COUNTED)
        };
        open_counted(&mut t, &e, 10, |_| Some(IDLE_TCP_S));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_correction_keeps_what_the_data_plane_counted_during_the_scan() {
        let minus = |n: u64| n.wrapping_neg();
        // (before, now, recount) → written
        let cases = [
            // Drift only: 90 flows were evicted while counted.
            (100, 100, 10, 10),
            // Five opened during the scan: kept on top of the recount.
            (100, 105, 10, 15),
            // Three closed during the scan.
            (100, 97, 10, 7),
            // The data plane took the counter below zero (read as negative).
            (minus(2), 0, 3, 5),
            (0, minus(4), 1, 0),
            // Nothing in the table any more.
            (50, 50, 0, 0),
        ];
        for (before, now, recount, want) in cases {
            assert_eq!(
                corrected(before, now, recount),
                want,
                "before {before} now {now} recount {recount}"
            );
        }
    }
}
