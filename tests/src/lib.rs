//! Test support for xlb: packet building and comparison, network-namespace topologies, and
//! (in `tests/`) the end-to-end tests that use them.
//!
//! # Layout
//! - [`packet`]: fluent Ethernet frame builder with correct checksums, the expected output of
//!   IP-in-IP encapsulation, and a field-by-field frame description/diff for failing tests.
//! - [`netns`]: network namespaces, veth pairs and a bridged LAN that clean up on drop (also
//!   when a test panics), plus `setns(2)` guards to load BPF programs inside a namespace.
//! - [`topology`]: the demo / end-to-end network (client, balancer, backends on one LAN)
//!   and helpers to run `xlb`, web servers and curl in it.
//! - [`drop_reasons`]: an independent reading of the balancer's drop reasons, to check
//!   that a dropped frame has the fault it was dropped for.
//! - [`fixtures`]: the test_run fixture harness (config → core → BPF maps, frame in →
//!   verdict, frame and counters out).

pub mod drop_reasons;
pub mod fixtures;
pub mod netns;
pub mod packet;
pub mod topology;
