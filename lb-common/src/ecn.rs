//! ECN at a tunnel's exit (RFC 6040 section 4.2): what the decapsulated packet's ECN field
//! becomes, from the outer and inner fields. Pure logic, so that the decap program and its
//! tests read the same table.

/// The ECN field: the two low bits of the IPv4 TOS byte or the IPv6 traffic class.
pub const ECN_MASK: u8 = 0b11;
/// Not ECN-capable transport: the sender only understands loss.
pub const NOT_ECT: u8 = 0b00;
/// ECN-capable transport, codepoint 1.
pub const ECT_1: u8 = 0b01;
/// ECN-capable transport, codepoint 0.
pub const ECT_0: u8 = 0b10;
/// Congestion experienced.
pub const CE: u8 = 0b11;

/// The inner packet's ECN field after decapsulation, given the outer and inner TOS bytes /
/// traffic classes (or just their ECN fields); `None`: drop the packet.
///
/// RFC 6040's table (Figure 4, section 4.2), every row as written: an outer CE marks an
/// ECN-capable inner packet CE, and drops a Not-ECT one (its sender would never see the
/// congestion a router signalled); an outer ECT(1) over an inner ECT(0) makes it ECT(1)
/// (the second severity level of congestion the RFC carries across tunnels, for PCN; Linux's
/// `INET_ECN_decapsulate` leaves it ECT(0)); any other outer field leaves the inner one as
/// it is. The table's "(!!!)" cells (outer ECT under inner Not-ECT, outer ECT(1) over inner
/// CE) keep the inner field, as the table says; the RFC's optional logging of them is not
/// done.
pub const fn decapsulate(outer: u8, inner: u8) -> Option<u8> {
    match (outer & ECN_MASK, inner & ECN_MASK) {
        (CE, NOT_ECT) => None,
        (CE, _) => Some(CE),
        (ECT_1, ECT_0) => Some(ECT_1),
        (_, inner) => Some(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODEPOINTS: [u8; 4] = [NOT_ECT, ECT_0, ECT_1, CE];

    /// RFC 6040 Figure 4: rows are the arriving inner field, columns the arriving outer
    /// field, both in `CODEPOINTS` order; `None` is `<drop>`.
    const TABLE: [[Option<u8>; 4]; 4] = [
        [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None],
        [Some(ECT_0), Some(ECT_0), Some(ECT_1), Some(CE)],
        [Some(ECT_1), Some(ECT_1), Some(ECT_1), Some(CE)],
        [Some(CE), Some(CE), Some(CE), Some(CE)],
    ];

    #[test]
    fn follows_rfc_6040_figure_4() {
        for (row, inner) in CODEPOINTS.iter().enumerate() {
            for (col, outer) in CODEPOINTS.iter().enumerate() {
                assert_eq!(
                    decapsulate(*outer, *inner),
                    TABLE[row][col],
                    "inner {inner:#04b}, outer {outer:#04b}"
                );
            }
        }
    }

    #[test]
    fn reads_only_the_ecn_bits() {
        // DSCP EF (46) around the ECN fields.
        assert_eq!(decapsulate(0xb8 | CE, 0xb8 | ECT_0), Some(CE));
        assert_eq!(decapsulate(0xb8 | CE, 0xb8), None);
        assert_eq!(decapsulate(0xfc, 0xb8 | ECT_1), Some(ECT_1));
    }
}
