//! How `LOOKUP` holds the VIPs' lookup tables: four 16-bit slots to each 8-byte entry.
//!
//! Why packed: an array map keeps every value in 8 bytes whatever its size, so one `u32`
//! slot per entry took 8 bytes, and each VIP's two tables of [`MAX_TABLE_SIZE`] slots
//! 1 MiB. Backend indices fit in 16 bits ([`MAX_BACKENDS`]), so four slots share an entry:
//! 256 KiB per VIP, and a new flow's slot read lands in a table a quarter the size (that
//! read is the scheduler's largest cost: a random line of the table, rarely in cache).
//!
//! Slot `s` of a table is bits `16 · (s mod 4)` to `16 · (s mod 4) + 15` of entry
//! `table_id · ENTRIES_PER_TABLE + s / 4`. The daemon writes only the half of a VIP's tables
//! that no packet reads (double buffering, see `VipInfo::table_id`), so rewriting an entry
//! whole to change one of its slots races with no reader.

use crate::maps::{MAX_BACKENDS, MAX_TABLE_SIZE};

/// Slots in one `LOOKUP` entry.
pub const SLOTS_PER_ENTRY: u32 = 4;
/// `LOOKUP` entries each table owns.
pub const ENTRIES_PER_TABLE: u32 = MAX_TABLE_SIZE.div_ceil(SLOTS_PER_ENTRY);

const _: () = assert!(
    MAX_BACKENDS <= 1 << 16,
    "a slot holds a backend index in 16 bits"
);
const _: () = assert!(
    ENTRIES_PER_TABLE * SLOTS_PER_ENTRY >= MAX_TABLE_SIZE,
    "a table's entries hold all its slots"
);

/// The `LOOKUP` entry holding slot `slot` of table `table_id`.
#[inline(always)]
pub fn entry(table_id: u32, slot: u32) -> u32 {
    table_id * ENTRIES_PER_TABLE + slot / SLOTS_PER_ENTRY
}

/// Bit offset of slot `slot` in its entry.
#[inline(always)]
fn shift(slot: u32) -> u64 {
    16 * u64::from(slot % SLOTS_PER_ENTRY)
}

/// The backend index slot `slot` holds in `word`, its entry.
#[inline(always)]
pub fn slot_of(word: u64, slot: u32) -> u32 {
    ((word >> shift(slot)) & 0xffff) as u32
}

/// `word` with slot `slot` set to backend index `idx` (below [`MAX_BACKENDS`]) and its
/// other slots unchanged.
#[inline(always)]
pub fn with_slot(word: u64, slot: u32, idx: u32) -> u64 {
    let s = shift(slot);
    (word & !(0xffff << s)) | (u64::from(idx & 0xffff) << s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_of_every_table_has_a_lane_of_its_own() {
        // (entry, lane) read as one number is the slot's position in a flat array of
        // tables that each own ENTRIES_PER_TABLE · 4 ≥ MAX_TABLE_SIZE positions: no two
        // slots of any tables share one.
        for table in 0..3 {
            for slot in 0..MAX_TABLE_SIZE {
                assert_eq!(
                    entry(table, slot) * SLOTS_PER_ENTRY + slot % SLOTS_PER_ENTRY,
                    table * ENTRIES_PER_TABLE * SLOTS_PER_ENTRY + slot,
                    "table {table} slot {slot}"
                );
            }
        }
    }

    #[test]
    fn writing_a_slot_leaves_the_others_alone() {
        let mut word = 0u64;
        let values = [1, MAX_BACKENDS - 1, 0x1234 % MAX_BACKENDS, 7];
        for (slot, &v) in values.iter().enumerate() {
            word = with_slot(word, slot as u32, v);
        }
        for (slot, &v) in values.iter().enumerate() {
            assert_eq!(slot_of(word, slot as u32), v);
            // The same lane of another entry's slot.
            assert_eq!(slot_of(word, slot as u32 + 4), v);
        }
        let word = with_slot(word, 2, 0);
        assert_eq!(
            [0, 1, 2, 3].map(|s| slot_of(word, s)),
            [values[0], values[1], 0, values[3]]
        );
    }
}
