//! The control socket: how `xlb vip …`, `xlb backend …`, `xlb status` and scripts change and
//! inspect a running daemon.
//!
//! Newline-delimited JSON over a Unix stream socket (default [`DEFAULT_SOCKET`], mode 0600):
//! one request object per line, one response line each, in order. The daemon implements
//! [`Handler`]; this module owns framing, limits, versioning and error codes. Reference with
//! an example of every operation: `docs/control-protocol.md`.
//!
//! Layout:
//! - [`protocol`]: request / response types, decoding with field paths, error codes.
//! - [`server`]: bind (refuse a live socket, replace a stale one), accept, per-connection loop.
//! - [`client`]: one blocking request/response for the CLI.

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::{ControlError, Request, Response};
pub use server::{bind, serve, BindError, ControlSocket, Handler, DEFAULT_SOCKET};
