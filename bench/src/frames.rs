//! The 64-byte UDP frames every part of the bench sends.

use std::net::IpAddr;

use xlb_tests::packet::{Mac, Pkt};

/// Frame length (no FCS on veth or in test_run; 64 bytes of Ethernet frame on the wire).
pub const FRAME_LEN: usize = 64;
/// Offset of the UDP source port in an untagged IPv4 frame.
pub const SPORT_OFF_V4: usize = 14 + 20;

/// A 64-byte UDP frame `src:sport → dst:dport` from `smac` to `dmac`.
pub fn udp64(smac: Mac, dmac: Mac, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let headers = match src {
        IpAddr::V4(_) => 14 + 20 + 8,
        IpAddr::V6(_) => 14 + 40 + 8,
    };
    let pkt = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Pkt::eth(smac, dmac).ipv4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => Pkt::eth(smac, dmac).ipv6(s, d),
        _ => panic!("mixed-family frame {src} → {dst}"),
    };
    let frame = pkt
        .udp(sport, dport)
        .payload(&vec![0x5a; FRAME_LEN - headers])
        .build();
    assert_eq!(frame.len(), FRAME_LEN, "bench frames are {FRAME_LEN} bytes");
    frame
}
