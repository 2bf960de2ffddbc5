//! What the raw-socket probes (`icmp`, `tcp_tunnel`) share: non-blocking libc sockets
//! driven by tokio, C socket addresses, the Internet checksum, IPv4 header stripping.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tokio::io::{unix::AsyncFd, Interest};

/// A connected, non-blocking socket registered with tokio.
pub(crate) struct Socket {
    fd: AsyncFd<OwnedFd>,
}

impl Socket {
    /// A socket of `domain`, `ty` and `protocol`, bound to `local` if given and connected
    /// to `peer` if given (for a raw socket: the peer whose packets it receives and the
    /// default destination of what it sends; connecting needs a route to the peer).
    pub(crate) fn open(
        domain: i32,
        ty: i32,
        protocol: i32,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> io::Result<Self> {
        let fd = new_socket(domain, ty, protocol)?;
        if let Some(local) = local {
            let (addr, len) = sockaddr(local);
            // SAFETY: `addr` is a valid sockaddr of `len` bytes for the socket's family.
            cvt(unsafe { libc::bind(fd.as_raw_fd(), addr_ptr(&addr), len) })?;
        }
        if let Some(peer) = peer {
            let (addr, len) = sockaddr(peer);
            // SAFETY: as for bind.
            cvt(unsafe { libc::connect(fd.as_raw_fd(), addr_ptr(&addr), len) })?;
        }
        // SAFETY: an OwnedFd is a valid open descriptor that stays open, and always returns
        // the same number from as_raw_fd, until the AsyncFd that now owns it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Self { fd })
    }

    /// Sends `msg` to the peer.
    pub(crate) async fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: `msg` is valid for `msg.len()` bytes for the duration of the call.
                let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
                cvt_len(n)
            })
            .await
            .map(drop)
    }

    /// Receives one message into `buf`; its length and the address it came from.
    pub(crate) async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: sockaddr_storage is plain integers, for which all-zero is valid.
                let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                // SAFETY: `buf` is valid and writable for `buf.len()` bytes, `from` for
                // `len` bytes, during the call.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::from_mut(&mut from).cast(),
                        &mut len,
                    )
                };
                Ok((cvt_len(n)?, ip_of(&from)))
            })
            .await
    }

    /// Receives one message into `buf`; its length.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: `buf` is valid and writable for `buf.len()` bytes during the call.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                cvt_len(n)
            })
            .await
    }
}

/// The IPv4 payload of `packet`, honouring IHL; `None` if it is not a well-formed IPv4 header.
pub(crate) fn strip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    let ihl_bytes = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl_bytes < 20 {
        return None;
    }
    packet.get(ihl_bytes..)
}

/// RFC 1071 ones'-complement sum of 16-bit big-endian words.
pub(crate) fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u32::from(u16::from_be_bytes([*hi, *lo])),
            [hi] => u32::from(*hi) << 8,
            _ => 0,
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) fn new_socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // Non-blocking for AsyncFd; close-on-exec so health sockets never leak into children.
    // SAFETY: socket(2) has no memory preconditions.
    let fd: RawFd = unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    cvt(fd)?;
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A C socket address for `addr` (IPv6 keeps its flow info and scope id).
/// The address in a C socket address of either family.
fn ip_of(storage: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

pub(crate) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers, for which all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                // The octets are already in network order; keep their memory layout.
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    // Both sizes are small constants (16 and 28), far below socklen_t's range.
    (storage, len as libc::socklen_t)
}

fn addr_ptr(storage: &libc::sockaddr_storage) -> *const libc::sockaddr {
    std::ptr::from_ref(storage).cast()
}

pub(crate) fn cvt(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_len(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}
