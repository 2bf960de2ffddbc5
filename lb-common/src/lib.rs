//! Types shared by the xlb XDP programs (kernel side) and the `xlb` binary (user side),
//! plus the pure logic that both sides must agree on.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]` with explicit padding
//! and a compile-time size check, so the two sides can never disagree on a layout.
//!
//! Layout:
//! - [`addr`]: how IPv4/IPv6 addresses are stored in map keys and values.
//! - [`counters`]: typed drop / pass / event reasons; each indexes the per-CPU `STATS` array.
//! - [`ecn`]: the ECN field of a decapsulated packet (RFC 6040).
//! - [`flow`]: [`flow::FlowKey`], the connection-table key (one layout for v4 and v6).
//! - [`flow_cache`]: where the balancer's per-CPU flow cache keeps a flow.
//! - [`gue`]: the outer UDP checksum of GUE tunnels, from the headers alone.
//! - [`hash`]: the flow hash (one source of truth for BPF and user space) and Maglev's hashes.
//! - [`lookup`]: how `LOOKUP` packs the VIPs' lookup tables.
//! - [`maps`]: map keys and values, flag bits, map names and sizes.
//! - [`maglev`] (feature `user`): the weighted Maglev lookup-table builder.
//! - [`mss`]: the MSS backends clamp their SYN-ACKs to (`xlb decap --clamp-mss`).
//! - [`quic`]: which backend a QUIC packet's connection ID names (server-ID routing).
//! - [`rate_window`]: how many new flows each CPU records, and ICMP errors it sends, per
//!   second.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod addr;
pub mod counters;
pub mod ecn;
pub mod flow;
pub mod flow_cache;
pub mod gue;
pub mod hash;
pub mod lookup;
#[cfg(feature = "user")]
pub mod maglev;
pub mod maps;
pub mod mss;
pub mod quic;
pub mod rate_window;
