//! Facts about local network interfaces: index, MAC, MTU, addresses.

use std::{ffi::CString, net::IpAddr};

use anyhow::{bail, Context, Result};

/// Interface index of `name`, with an error that says how to find the right name.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)
        .with_context(|| format!("interface name {name:?} contains a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface {name} not found; `ip link` lists interfaces");
    }
    Ok(idx)
}

/// MAC address of `name`.
pub fn mac(name: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(text.trim()).with_context(|| format!("{path} holds {text:?}, not a MAC address"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// MTU of `name`.
pub fn mtu(name: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{name}/mtu");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("{path} holds {text:?}"))
}

/// Whether the kernel forwards `family` ("ipv4" or "ipv6") packets arriving on `name`
/// (`net.IPFAMILY.conf.NAME.forwarding`); `None` when that cannot be read (IPv6 disabled).
pub fn forwarding(name: &str, family: &str) -> Option<bool> {
    let path = format!("/proc/sys/net/{family}/conf/{name}/forwarding");
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
}

/// What to tell the operator about `name`'s forwarding (`v4`, `v6` as [`forwarding`]
/// reads them): the program's FIB lookups, for backends whose next hop the daemon has not
/// resolved yet and those behind a router, fail unless it is on.
pub fn forwarding_warnings(name: &str, v4: Option<bool>, v6: Option<bool>) -> Vec<String> {
    [("ipv4", v4), ("ipv6", v6)]
        .into_iter()
        .filter(|(_, on)| *on == Some(false))
        .map(|(family, _)| {
            format!(
                "net.{family}.conf.{name}.forwarding is 0: the kernel refuses the program's FIB \
                 lookups, so {family} backends whose next hop is not resolved yet (the first \
                 second after they are added) or that sit behind a router get their packets \
                 dropped (no_route); `sysctl -w net.{family}.conf.{name}.forwarding=1`"
            )
        })
        .collect()
}

/// Addresses configured on `name` (both families), link-local IPv6 excluded.
pub fn addresses(name: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned; entries are valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if ifname != name {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family tells its real type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET {
            // SAFETY: family is AF_INET, so this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            out.push(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ));
        } else if family == libc::AF_INET6 {
            // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            let a = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            if a.segments()[0] & 0xffc0 != 0xfe80 {
                out.push(IpAddr::V6(a));
            }
        }
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_off_is_named_by_family_with_its_sysctl() {
        assert!(forwarding_warnings("eth0", Some(true), Some(true)).is_empty());
        assert!(forwarding_warnings("eth0", Some(true), None).is_empty());
        let w = forwarding_warnings("eth0", Some(false), Some(true));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("net.ipv4.conf.eth0.forwarding is 0: "),
            "{}",
            w[0]
        );
        assert!(
            w[0].ends_with("`sysctl -w net.ipv4.conf.eth0.forwarding=1`"),
            "{}",
            w[0]
        );
        assert_eq!(
            forwarding_warnings("eth0", Some(false), Some(false)).len(),
            2
        );
        // This machine's loopback can be read (whatever its setting).
        assert!(forwarding("lo", "ipv4").is_some());
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:00:aa:bb:0f"),
            Some([2, 0, 0, 0xaa, 0xbb, 0x0f])
        );
        assert_eq!(parse_mac("02:00:00:aa:bb"), None);
        assert_eq!(parse_mac("02:00:00:aa:bb:0f:01"), None);
        assert_eq!(parse_mac("zz:00:00:aa:bb:0f"), None);
    }

    #[test]
    fn unknown_interface_is_a_readable_error() {
        let e = ifindex("xlb-nope0").unwrap_err().to_string();
        assert!(e.contains("xlb-nope0") && e.contains("ip link"), "{e}");
    }
}
