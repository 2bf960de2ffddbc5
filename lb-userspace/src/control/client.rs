//! The CLI side: one request, one response, over a blocking `std` Unix stream. The CLI
//! makes one call per command, so an async runtime would only add start-up cost.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::protocol::{Request, Response};

/// How long the CLI waits for the daemon, per read or write.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response the client reads: a `status` of many VIPs with 1000 backends each is a
/// few MiB; anything near this is not a response.
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Sends `req` to the daemon at `path` and returns its response, refused or not.
///
/// Errors are for everything else (no daemon, timeout, a reply that is not a response),
/// worded for the person at the terminal.
pub fn request(path: &Path, req: &Request) -> anyhow::Result<Response> {
    let shown = path.display();
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .context("cannot set a timeout on the control socket")?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .context("cannot set a timeout on the control socket")?;
    // One request per connection, so any id would do; a fixed one still lets us check that
    // the answer is for this request.
    let id = Value::from(1);
    (&stream)
        .write_all(req.to_line(&id).as_bytes())
        .map_err(|e| io_error(path, "send the request to", e))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_RESPONSE))
        .read_line(&mut line)
        .map_err(|e| io_error(path, "read the answer from", e))?;
    if line.is_empty() {
        bail!("the daemon at {shown} closed the connection without answering; see its log");
    }
    if !line.ends_with('\n') {
        bail!("the daemon at {shown} sent an incomplete answer (over {MAX_RESPONSE} bytes or cut short)");
    }
    let resp = Response::from_line(&line).with_context(|| format!("bad answer from {shown}"))?;
    // A refusal the server sends before reading (busy) has no id; anything else must echo.
    if resp.id != id && !(resp.id.is_null() && resp.result.is_err()) {
        bail!(
            "the daemon at {shown} answered request id {} instead of {id}",
            resp.id
        );
    }
    Ok(resp)
}

/// Like [`request`], but a refusal is an error too: a
/// [`ControlError`](super::protocol::ControlError), which callers can downcast to for its code.
pub fn call(path: &Path, req: &Request) -> anyhow::Result<Value> {
    Ok(request(path, req)?.result?)
}

fn connect_error(path: &Path, e: io::Error) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot connect to {shown}: permission denied; the socket is private to the daemon's user \
             (mode 0600), so run this as that user (e.g. with sudo) ({e})"
        ),
        _ => anyhow::anyhow!("cannot connect to {shown}: is `xlb run` running? ({e})"),
    }
}

fn io_error(path: &Path, what: &str, e: io::Error) -> anyhow::Error {
    let shown = path.display();
    match e.kind() {
        // A read timeout shows up as WouldBlock on Linux, TimedOut elsewhere.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            anyhow::anyhow!("cannot {what} the daemon at {shown}: no answer within {TIMEOUT:?}; is it stuck? see its log")
        }
        _ => anyhow::anyhow!("cannot {what} the daemon at {shown}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::control::{
        protocol::{BackendRef, ControlError, Empty, VipRef},
        server::tests::{Running, TempDir},
    };

    fn in_thread<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        // The client blocks; keep it off the runtime's threads that drive the server.
        tokio::task::spawn_blocking(f)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_against_the_server() {
        let dir = TempDir::new("client");
        let server = Running::start(&dir.sock());
        let path = dir.sock();
        let (status, refused, drained) = in_thread(move || {
            let status = call(&path, &Request::Status(Empty {}));
            let refused = call(
                &path,
                &Request::VipRemove(VipRef {
                    vip: "198.18.1.1:81/tcp".parse().expect("vip"),
                }),
            );
            let drained = request(
                &path,
                &Request::BackendDrain(BackendRef {
                    vip: "198.18.1.1:80/tcp".parse().expect("vip"),
                    address: "198.18.0.11".parse().expect("addr"),
                }),
            );
            (status, refused, drained)
        })
        .await
        .expect("client thread");
        assert_eq!(status.expect("status works"), json!({"vips": []}));
        let err = refused.expect_err("unknown VIP is refused");
        let ce = err
            .downcast_ref::<ControlError>()
            .expect("a refusal is a ControlError");
        assert_eq!(ce.code, "unknown_vip");
        let drained = drained.expect("drain works");
        assert_eq!(drained.id, json!(1));
        assert_eq!(drained.result, Ok(json!({"op": "backend.drain"})));
        let calls = server.handler.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 3);
        assert!(
            matches!(&calls[2], Request::BackendDrain(b) if b.address.to_string() == "198.18.0.11")
        );
        server.stop().await;
    }

    #[test]
    fn missing_socket_says_what_to_do() {
        let dir = TempDir::new("nosock");
        let path = dir.sock();
        let err = request(&path, &Request::Status(Empty {})).expect_err("no daemon");
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!(
                "cannot connect to {}: is `xlb run` running?",
                path.display()
            )),
            "{msg}"
        );
        // A socket file nobody listens on reads the same way.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let msg = format!(
            "{:#}",
            request(&path, &Request::Status(Empty {})).expect_err("stale")
        );
        assert!(msg.contains("is `xlb run` running?"), "{msg}");
    }

    #[test]
    fn silent_or_garbled_daemons_are_reported() {
        let dir = TempDir::new("garbled");
        let path = dir.sock();
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let fake = std::thread::spawn(move || {
            // First: closes without a word. Second: answers nonsense.
            for answer in [&b""[..], b"hello\n"] {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = String::new();
                BufReader::new(&s)
                    .read_line(&mut buf)
                    .expect("read request");
                s.write_all(answer).expect("answer");
            }
        });
        let e1 = format!(
            "{:#}",
            request(&path, &Request::Status(Empty {})).expect_err("closed")
        );
        assert!(
            e1.contains("closed the connection without answering"),
            "{e1}"
        );
        let e2 = format!(
            "{:#}",
            request(&path, &Request::Status(Empty {})).expect_err("garbled")
        );
        assert!(e2.contains("bad answer"), "{e2}");
        fake.join().expect("fake daemon");
    }
}
