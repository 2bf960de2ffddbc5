//! The outer UDP checksum of a GUE tunnel, from the headers alone (the balancer fills it
//! in for IPv6 tunnels).
//!
//! Why a checksum: IPv4 lets a UDP checksum be zero (none), and so does IPv6 for tunnels
//! (RFC 6935), but not every middlebox on the way knows that exception: a firewall that
//! insists on IPv6 UDP checksums drops zero-checksum tunnels. Over IPv4 every receiver
//! takes a zero, and the balancer sends one. Why from the headers alone: the sum
//! over the whole datagram would have the balancer read every byte of every packet; it
//! does not have to. The client's packet already carries a valid checksum of its
//! transport segment, and the ones'-complement sum of a segment whose checksum is valid is
//! the complement of its pseudo-header's sum; an IPv4 header with a valid checksum sums to
//! zero. So the inner packet's sum follows from its headers (what Linux calls local
//! checksum offload). A client's packet whose checksum is wrong gets an outer checksum
//! that is wrong too, which is what a receiver that checks it should see.
//!
//! When the headers do not tell: an IPv4 UDP datagram without a checksum (0), and an IPv6
//! packet with extension headers (their bytes would have to be summed): those tunnels
//! carry no checksum, as IPv4 and RFC 6935 allow.

/// ICMP's protocol number: its checksum covers the message alone, no pseudo-header.
const PROTO_ICMP: u8 = 1;
/// UDP's protocol number.
pub const PROTO_UDP: u8 = 17;
/// An IPv6 header without extension headers.
const IPV6_HLEN: u16 = 40;

/// The client's packet inside the tunnel: what its sum needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InnerPacket {
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Transport protocol: TCP, UDP, ICMP or ICMPv6.
    pub proto: u8,
    /// The sum of its source and destination addresses' 16-bit words ([`add_address`]):
    /// all the pseudo-header needs of them, and all the caller need keep.
    pub address_sum: u32,
    /// Bytes from the IP header to the transport header (IPv4: IHL × 4; IPv6: 40 and any
    /// extension headers).
    pub ip_hlen: u16,
    /// The transport segment's length (header and payload).
    pub l4_len: u16,
    /// IPv6: the header's first four 16-bit words (version, class and flow label; payload
    /// length; next header and hop limit), host order. Unused for IPv4.
    pub v6_lead: [u16; 4],
    /// UDP over IPv4: the datagram's checksum field (0: none). Unused otherwise.
    pub udp_check: u16,
}

/// Adds the 16-bit halves of address words (raw network order; IPv4 in word 0, the rest
/// zero) to a running sum.
#[inline(always)]
pub fn add_address(mut sum: u32, words: &[u32; 4]) -> u32 {
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        sum += u32::from(u16::from_be_bytes([b[0], b[1]]));
        sum += u32::from(u16::from_be_bytes([b[2], b[3]]));
        i += 1;
    }
    sum
}

/// Folds a running sum's carries into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The ones'-complement sum of the inner packet's bytes (unfolded), or `None` when its
/// headers do not tell it (see the module docs).
#[inline(always)]
pub fn inner_sum(p: &InnerPacket) -> Option<u32> {
    let mut sum = 0u32;
    if !p.v4 {
        if p.ip_hlen != IPV6_HLEN {
            return None;
        }
        let mut i = 0;
        while i < 4 {
            sum += u32::from(p.v6_lead[i]);
            i += 1;
        }
        sum += p.address_sum;
    }
    // An IPv4 header with a valid checksum sums to 0xffff, which adds nothing.
    if p.v4 && p.proto == PROTO_ICMP {
        // ICMP's checksum covers the message alone: it sums to 0xffff too.
        return Some(sum);
    }
    if p.v4 && p.proto == PROTO_UDP && p.udp_check == 0 {
        return None;
    }
    let pseudo = p.address_sum + u32::from(p.l4_len) + u32::from(p.proto);
    Some(sum + u32::from(!fold(pseudo)))
}

/// The outer UDP header's checksum to store (host order) for a tunnel between addresses
/// whose words sum to `address_sum` ([`add_address`] of both), from port `sport` to
/// `dport`, `udp_len` bytes long, around a packet whose sum is `inner` ([`inner_sum`]): `0`
/// (no checksum) when that is unknown, and never `0` otherwise (a computed zero is sent as
/// `0xffff`, RFC 768).
#[inline(always)]
pub fn udp_checksum(
    address_sum: u32,
    sport: u16,
    dport: u16,
    udp_len: u16,
    inner: Option<u32>,
) -> u16 {
    let Some(inner) = inner else {
        return 0;
    };
    // Pseudo-header (addresses, length, protocol), then the UDP header with its checksum
    // field zero, then the packet.
    let sum = address_sum
        + 2 * u32::from(udp_len)
        + u32::from(PROTO_UDP)
        + u32::from(sport)
        + u32::from(dport)
        + inner;
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 over `bytes` (odd length padded), folded, not complemented.
    fn sum_bytes(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn words4(a: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    fn words16(a: [u8; 16]) -> [u32; 4] {
        let mut w = [0u32; 4];
        for (i, c) in a.chunks(4).enumerate() {
            w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        }
        w
    }

    /// Bytes of a packet and its `InnerPacket` description.
    struct Built {
        bytes: Vec<u8>,
        inner: InnerPacket,
    }

    /// A transport segment of `proto` with `payload`, its checksum filled in over `pseudo`
    /// (`None`: ICMPv4's, over the message alone); `udp_zero` leaves a UDP checksum 0.
    fn segment(proto: u8, payload: &[u8], pseudo: Option<u32>, udp_zero: bool) -> Vec<u8> {
        let (mut seg, at) = match proto {
            6 => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&40000u16.to_be_bytes());
                h[2..4].copy_from_slice(&443u16.to_be_bytes());
                h[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = 0x18;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                (h, 16)
            }
            17 => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&5353u16.to_be_bytes());
                h[2..4].copy_from_slice(&53u16.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                (h, 6)
            }
            _ => (vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc], 2),
        };
        seg.extend_from_slice(payload);
        let len = seg.len() as u32;
        let sum = sum_bytes(&seg) + pseudo.map_or(0, |p| p + len + u32::from(proto));
        let mut check = !fold(sum);
        if proto == 17 && check == 0 {
            check = 0xffff;
        }
        if !(proto == 17 && udp_zero) {
            seg[at..at + 2].copy_from_slice(&check.to_be_bytes());
        }
        seg
    }

    fn v4(proto: u8, payload: &[u8], options: usize, udp_zero: bool) -> Built {
        let (src, dst) = ([198, 18, 0, 100], [198, 18, 1, 1]);
        let pseudo = sum_bytes(&src) + sum_bytes(&dst);
        let seg = segment(proto, payload, (proto != 1).then_some(pseudo), udp_zero);
        let hlen = 20 + options;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[1] = 0xb8;
        h[2..4].copy_from_slice(&((hlen + seg.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0xbeefu16.to_be_bytes());
        h[6] = 0x40;
        h[8] = 57;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        for (i, b) in h[20..].iter_mut().enumerate() {
            *b = if i + 1 == options { 0 } else { 1 };
        }
        let check = !fold(sum_bytes(&h));
        h[10..12].copy_from_slice(&check.to_be_bytes());
        let inner = InnerPacket {
            v4: true,
            proto,
            address_sum: add_address(add_address(0, &words4(src)), &words4(dst)),
            ip_hlen: hlen as u16,
            l4_len: seg.len() as u16,
            v6_lead: [0; 4],
            udp_check: u16::from_be_bytes([seg[6], seg[7]]),
        };
        h.extend_from_slice(&seg);
        Built { bytes: h, inner }
    }

    fn v6(proto: u8, payload: &[u8], ext: bool) -> Built {
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00];
        let dst = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
        let pseudo = sum_bytes(&src) + sum_bytes(&dst);
        let seg = segment(proto, payload, Some(pseudo), false);
        // A destination-options header (8 bytes of padding) when `ext`.
        let ext_bytes: Vec<u8> = if ext {
            vec![proto, 0, 1, 4, 0, 0, 0, 0]
        } else {
            Vec::new()
        };
        let mut h = vec![0u8; 40];
        h[0..4].copy_from_slice(&0x6b8a_bcdeu32.to_be_bytes());
        h[4..6].copy_from_slice(&((ext_bytes.len() + seg.len()) as u16).to_be_bytes());
        h[6] = if ext { 60 } else { proto };
        h[7] = 57;
        h[8..24].copy_from_slice(&src);
        h[24..40].copy_from_slice(&dst);
        let lead = [0, 2, 4, 6].map(|i| u16::from_be_bytes([h[i], h[i + 1]]));
        let inner = InnerPacket {
            v4: false,
            proto,
            address_sum: add_address(add_address(0, &words16(src)), &words16(dst)),
            ip_hlen: (40 + ext_bytes.len()) as u16,
            l4_len: seg.len() as u16,
            v6_lead: lead,
            udp_check: 1,
        };
        h.extend_from_slice(&ext_bytes);
        h.extend_from_slice(&seg);
        Built { bytes: h, inner }
    }

    /// The checksum over the whole datagram, as a receiver checks it.
    fn full(src: &[u8], dst: &[u8], sport: u16, dport: u16, inner: &[u8]) -> u16 {
        let len = (8 + inner.len()) as u16;
        let mut d = Vec::new();
        d.extend_from_slice(&sport.to_be_bytes());
        d.extend_from_slice(&dport.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(inner);
        let sum = sum_bytes(src) + sum_bytes(dst) + u32::from(len) + 17 + sum_bytes(&d);
        match !fold(sum) {
            0 => 0xffff,
            c => c,
        }
    }

    #[test]
    fn the_headers_alone_give_the_whole_datagrams_checksum() {
        let outer_v4 = ([198u8, 18, 0, 1], [198u8, 18, 0, 11]);
        let outer_v6 = (
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11],
        );
        let mut cases = Vec::new();
        // Payload lengths odd and even, empty, and long enough to carry.
        for n in [0usize, 1, 2, 7, 100, 1001, 1400] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8 ^ 0xa5).collect();
            for proto in [6u8, 17] {
                cases.push(v4(proto, &payload, 0, false));
                cases.push(v4(proto, &payload, 8, false));
                cases.push(v6(proto, &payload, false));
            }
            cases.push(v4(1, &payload, 0, false));
            cases.push(v6(58, &payload, false));
        }
        let mut all_ones = 0;
        for (i, c) in cases.iter().enumerate() {
            let sum = inner_sum(&c.inner);
            assert!(sum.is_some(), "case {i}: {:?}", c.inner);
            for sport in [0xc000u16, 0xffff, 0xd1f3] {
                // Over each outer family: the tunnel's addresses as words and as bytes.
                let over = |what: &str, words: u32, src: &[u8], dst: &[u8]| {
                    let got = udp_checksum(words, sport, 6080, (8 + c.bytes.len()) as u16, sum);
                    assert_eq!(
                        got,
                        full(src, dst, sport, 6080, &c.bytes),
                        "case {i} over {what}, port {sport:#x}: {:?}",
                        c.inner
                    );
                    usize::from(got == 0xffff)
                };
                let (w4, w6) = (
                    add_address(add_address(0, &words4(outer_v4.0)), &words4(outer_v4.1)),
                    add_address(add_address(0, &words16(outer_v6.0)), &words16(outer_v6.1)),
                );
                all_ones += over("IPv4", w4, &outer_v4.0, &outer_v4.1)
                    + over("IPv6", w6, &outer_v6.0, &outer_v6.1);
            }
        }
        assert_eq!(all_ones, 0, "no case happened to fold to zero");
    }

    #[test]
    fn a_computed_zero_is_sent_as_all_ones() {
        // An inner sum that cancels the rest exactly.
        let rest = 3 + 2 * 8 + 17 + 7 + 9;
        let inner = u32::from(!fold(rest));
        assert_eq!(udp_checksum(3, 7, 9, 8, Some(inner)), 0xffff);
    }

    #[test]
    fn no_checksum_when_the_headers_do_not_tell() {
        let payload = [1u8, 2, 3];
        // IPv4 UDP without a checksum; IPv6 with an extension header.
        assert_eq!(inner_sum(&v4(17, &payload, 0, true).inner), None);
        assert_eq!(inner_sum(&v6(6, &payload, true).inner), None);
        assert_eq!(udp_checksum(0, 1, 2, 11, None), 0);
        // The same packets otherwise are summed.
        assert!(inner_sum(&v4(17, &payload, 0, false).inner).is_some());
        assert!(inner_sum(&v6(6, &payload, false).inner).is_some());
    }
}
