//! Addresses in map keys and values.
//!
//! An address is four `u32` words holding the raw network-order bytes (as read from the
//! packet, reinterpreted as native integers). IPv4 uses word 0 and leaves the rest zero, so
//! v4 and v6 share one layout and the family byte next to it says which is meant.

/// Address family tag stored next to every address (values chosen to read well in dumps).
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// Raw network-order address words; see the module docs.
pub type AddrWords = [u32; 4];

#[cfg(feature = "user")]
mod user {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::{AddrWords, FAMILY_V4, FAMILY_V6};

    /// Converts an address into map words plus its family tag.
    pub fn to_words(addr: IpAddr) -> (AddrWords, u8) {
        match addr {
            IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
            IpAddr::V6(a) => {
                let o = a.octets();
                let mut w = [0u32; 4];
                for (i, word) in w.iter_mut().enumerate() {
                    *word =
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
                (w, FAMILY_V6)
            }
        }
    }

    /// Inverse of [`to_words`]; `None` for an unknown family tag.
    pub fn from_words(words: AddrWords, family: u8) -> Option<IpAddr> {
        match family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
            FAMILY_V6 => {
                let mut o = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_both_families() {
            for a in ["198.18.1.1", "fd00::1:2", "fd00:1:2:3:4:5:6:7"] {
                let ip: IpAddr = a.parse().unwrap();
                let (w, f) = to_words(ip);
                assert_eq!(from_words(w, f), Some(ip));
            }
            assert_eq!(from_words([0; 4], 0), None);
        }

        #[test]
        fn v4_words_hold_network_bytes() {
            let (w, _) = to_words("198.18.0.1".parse().unwrap());
            assert_eq!(w[0].to_ne_bytes(), [198, 18, 0, 1]);
            assert_eq!(&w[1..], &[0, 0, 0]);
        }
    }
}

#[cfg(feature = "user")]
pub use user::{from_words, to_words};
