//! Internet checksum (RFC 1071) for the headers the programs build or check.

/// Adds 16-bit big-endian words of `bytes` to a running sum (no folding).
#[inline(always)]
pub fn add_bytes(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    sum
}

/// Adds an address word (raw network-order bytes) to a running sum.
#[inline(always)]
pub fn add_word(sum: u32, word_raw: u32) -> u32 {
    let b = word_raw.to_ne_bytes();
    sum + u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
}

/// Folds the carries and complements: the value to store, in host order.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The checksum `check` (host order) after one 16-bit word it covers changed from `old` to
/// `new`, by RFC 1624 equation 3 (`HC' = ~(~HC + ~m + m')`): nothing else is summed again.
#[inline(always)]
pub fn replace(check: u16, old: u16, new: u16) -> u16 {
    finish(u32::from(!check) + u32::from(!old) + u32::from(new))
}
