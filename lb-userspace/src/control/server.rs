//! The daemon side: binds the Unix socket, accepts connections, answers requests in order.
//!
//! [`bind`] is synchronous and separate from [`ControlSocket::serve`] so the daemon can fail
//! ("another xlb daemon is serving …") before it attaches anything to an interface.
//!
//! Limits, all enforced without trusting the client:
//! - a request line is at most [`MAX_LINE`] bytes: a longer one is answered `too_large` and
//!   the rest of it is read and thrown away, never buffered; the connection stays usable;
//! - at most [`MAX_CONNECTIONS`] connections at once: one more is answered `busy` and closed;
//! - a connection that sends no complete line for [`IDLE_TIMEOUT`] is closed, so a stuck or
//!   slow client (one byte a minute) cannot hold a slot for ever; writes have the same bound.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
            net::UnixListener as StdUnixListener,
        },
    },
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use log::{debug, error, info, warn};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{watch, Semaphore},
    task::JoinSet,
    time::timeout,
};

use super::protocol::{code, decode_request, ControlError, Decoded, Request, Response, MAX_LINE};

/// Where `xlb run` listens and the CLI connects unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Connections served at once; the CLI opens one per command, so 16 is plenty.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Pending connections the kernel queues before we accept them.
const BACKLOG: libc::c_int = 64;

/// What the daemon plugs in: executes requests the server has already decoded.
pub trait Handler: Send + Sync + 'static {
    /// Executes one validated request. Err carries a code and a message.
    fn handle(&self, req: Request) -> Result<serde_json::Value, ControlError>;
}

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A daemon answers on the path.
    #[error(
        "another xlb daemon is serving {path}; stop it first, or give this one another --socket"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What we tried ("bind", "create directory", …).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A bound control socket, not yet serving. Dropping it (or the end of
/// [`serve`](Self::serve)) removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: StdUnixListener,
    file: SocketFile,
    idle_timeout: Duration,
}

/// Binds `path`: refuses if a daemon answers there, replaces a stale socket file, creates
/// a missing parent directory with mode 0700, and leaves the socket with mode 0600.
pub fn bind(path: &Path) -> Result<ControlSocket, BindError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.exists() {
        // Only a directory we create gets 0700: an existing one (say /tmp) is not ours to
        // change.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err("create directory", parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket { path: path.into() })
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse { path: path.into() }),
            // Nobody listens: a daemon died without cleaning up. Its file is ours to replace.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!("removing stale control socket {}", path.display());
                std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("check whether a daemon serves", path)(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let listener = bind_private(path)?;
    let meta = std::fs::metadata(path).map_err(io_err("inspect", path))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok(ControlSocket {
        listener,
        file,
        idle_timeout: IDLE_TIMEOUT,
    })
}

/// socket → bind → chmod 0600 → listen. Connecting needs write permission on the socket
/// file, and a connect to a socket that is not yet listening is refused, so no client can
/// get in before the mode is 0600. The alternatives are worse: std's bind also listens, so
/// a chmod after it leaves a window in which others may connect (and stay connected), and
/// umask is process-wide, so changing it around bind would race with every other thread
/// creating files.
fn bind_private(path: &Path) -> Result<StdUnixListener, BindError> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // One byte stays zero: the kernel wants the path NUL-terminated within sun_path.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        let msg = format!(
            "a socket path is at most {} bytes without NUL bytes",
            addr.sun_path.len() - 1
        );
        return Err(io_err("bind", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            msg,
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a plain system call; the descriptor is owned right below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io_err("create a socket for", path)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len =
        (std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io_err("bind", path)(io::Error::last_os_error()));
    }
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        // SAFETY: a plain system call on a descriptor we own.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = finish() {
        // Bound but unusable: do not leave a file that looks like a stale daemon's.
        let _ = std::fs::remove_file(path);
        return Err(io_err("set up", path)(e));
    }
    let listener = StdUnixListener::from(fd);
    // tokio needs a non-blocking listener.
    listener
        .set_nonblocking(true)
        .map_err(io_err("set up", path))?;
    Ok(listener)
}

/// Removes the socket file on drop, but only if it is still the one we bound: if an
/// operator replaced it in the meantime, that file is not ours.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!("cannot remove control socket {}: {e}", self.path.display());
                }
            }
            _ => debug!(
                "control socket {} is gone or replaced; leaving it",
                self.path.display()
            ),
        }
    }
}

/// Binds `path` and serves until `shutdown` turns true (or its sender is dropped).
pub async fn serve(
    path: &Path,
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    bind(path)?.serve(handler, shutdown).await
}

impl ControlSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Replaces [`IDLE_TIMEOUT`] (tests use short ones).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Accepts connections until `shutdown` turns true (or its sender is dropped), then
    /// closes every connection and removes the socket file.
    pub async fn serve(
        self,
        handler: Arc<dyn Handler>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            file,
            idle_timeout,
        } = self;
        let listener = UnixListener::from_std(listener)
            .with_context(|| format!("cannot serve control socket {}", file.path.display()))?;
        info!("control socket listening on {}", file.path.display());
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                        Ok(slot) => {
                            let conn = Connection {
                                handler: Arc::clone(&handler),
                                shutdown: shutdown.clone(),
                                idle_timeout,
                            };
                            connections.spawn(async move {
                                conn.run(stream).await;
                                drop(slot);
                            });
                        }
                        Err(_) => refuse_busy(stream),
                    },
                    Err(e) => {
                        // EMFILE and friends: the listener is fine, the process is short of
                        // something. Pause instead of spinning on the same error.
                        warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // Reap finished connections so the set does not grow with every command.
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("control connection task panicked: {e}");
                        }
                    }
                }
            }
        }
        // Connections stop between requests on their own; abort the ones stuck in I/O.
        connections.shutdown().await;
        drop(file);
        info!("control socket closed");
        Ok(())
    }
}

/// Resolves once shutdown is asked for, or nobody is left who could ask.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Tells a connection over the limit why it is closed. A fresh socket's send buffer is
/// empty, so a non-blocking write of one short line succeeds; if it does not, the client
/// just sees the close.
fn refuse_busy(stream: UnixStream) {
    warn!("control socket: refusing a connection, {MAX_CONNECTIONS} are open already");
    let line = Response {
        id: serde_json::Value::Null,
        result: Err(ControlError::new(
            code::BUSY,
            format!(
                "{MAX_CONNECTIONS} control connections are open already; retry when one closes"
            ),
        )),
    }
    .to_line();
    let _ = stream.try_write(line.as_bytes());
}

/// One client connection: requests are read and answered one at a time, so responses come
/// back in request order.
struct Connection {
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
}

impl Connection {
    async fn run(mut self, stream: UnixStream) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        loop {
            let read = tokio::select! {
                () = stopped(&mut self.shutdown) => return,
                r = timeout(self.idle_timeout, read_line(&mut rd, &mut line, MAX_LINE)) => r,
            };
            let (response, rest_of_line) = match read {
                Err(_) => {
                    debug!(
                        "control connection idle for {:?}; closing it",
                        self.idle_timeout
                    );
                    return;
                }
                Ok(Err(e)) => {
                    debug!("control connection read failed: {e}");
                    return;
                }
                Ok(Ok(Line::Eof)) => return,
                // Blank lines (an operator pressing Enter in socat) are not requests.
                Ok(Ok(Line::Complete)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Ok(Line::Complete)) => (self.respond(&line), false),
                Ok(Ok(Line::TooLong { newline_seen })) => (too_large(), !newline_seen),
            };
            let written = timeout(
                self.idle_timeout,
                wr.write_all(response.to_line().as_bytes()),
            )
            .await;
            if !matches!(written, Ok(Ok(()))) {
                debug!("control connection: cannot write a response; closing it");
                return;
            }
            if rest_of_line {
                match timeout(self.idle_timeout, skip_line(&mut rd)).await {
                    Ok(Ok(true)) => {}
                    _ => return,
                }
            }
        }
    }

    /// Decodes and executes one request line. The handler is synchronous and quick (it
    /// updates the core's state under a lock), so it runs right here: a spawn_blocking hop
    /// would cost more than the call. A panic in it becomes an `internal` error for this
    /// request instead of a silently dropped connection.
    fn respond(&self, line: &[u8]) -> Response {
        let Decoded { id, request } = decode_request(line);
        let result = request.and_then(|req| {
            let op = req.op();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.handle(req))).unwrap_or_else(
                |_| {
                    error!("control: the handler panicked on {op}");
                    Err(ControlError::new(
                        code::INTERNAL,
                        format!("the daemon failed while executing {op}; see its log"),
                    ))
                },
            )
        });
        Response { id, result }
    }
}

fn too_large() -> Response {
    Response {
        id: serde_json::Value::Null,
        result: Err(ControlError::new(
            code::TOO_LARGE,
            format!(
                "request line longer than {MAX_LINE} bytes; split the change into several requests"
            ),
        )),
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (without its newline) is in the buffer. The last line before EOF counts even
    /// without a newline.
    Complete,
    /// The line exceeds the limit; what was read of it is discarded.
    TooLong {
        /// The newline was consumed too (else the caller must skip to it).
        newline_seen: bool,
    },
    /// The peer closed the connection between lines.
    Eof,
}

/// Reads one line into `line`, never holding more than `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(
    rd: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    line.clear();
    loop {
        let available = rd.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (chunk, consumed, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + chunk.len() > max {
            rd.consume(consumed);
            line.clear();
            return Ok(Line::TooLong { newline_seen: done });
        }
        line.extend_from_slice(chunk);
        rd.consume(consumed);
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

/// Discards input up to and including the next newline; false at EOF.
async fn skip_line<R: AsyncBufRead + Unpin>(rd: &mut R) -> io::Result<bool> {
    loop {
        let available = rd.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                rd.consume(i + 1);
                return Ok(true);
            }
            None => {
                let n = available.len();
                rd.consume(n);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Mutex,
        },
        time::Instant,
    };

    use serde_json::{json, Value};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        task::JoinHandle,
    };

    use super::*;

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("xlb-ctl-{}-{n}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }

        pub(crate) fn sock(&self) -> PathBuf {
            self.0.join("xlb.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Records every request; answers `status` with a fixed result, refuses an unknown VIP
    /// like the core would, and echoes everything else back.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) calls: Mutex<Vec<Request>>,
    }

    impl Handler for Recorder {
        fn handle(&self, req: Request) -> Result<Value, ControlError> {
            self.calls.lock().expect("recorder lock").push(req.clone());
            match req {
                Request::Status(_) => Ok(json!({"vips": []})),
                Request::VipRemove(r) if r.vip.port == 81 => Err(ControlError::new(
                    "unknown_vip",
                    format!("unknown VIP {}; `xlb status` lists VIPs", r.vip),
                )),
                other => Ok(json!({"op": other.op()})),
            }
        }
    }

    impl Recorder {
        pub(crate) fn count(&self) -> usize {
            self.calls.lock().expect("recorder lock").len()
        }
    }

    /// A running server; `stop` shuts it down and waits.
    pub(crate) struct Running {
        pub(crate) handler: Arc<Recorder>,
        stop: watch::Sender<bool>,
        task: JoinHandle<anyhow::Result<()>>,
    }

    impl Running {
        pub(crate) fn start(path: &Path) -> Self {
            Self::start_with(bind(path).expect("bind"))
        }

        pub(crate) fn start_with(sock: ControlSocket) -> Self {
            let handler = Arc::new(Recorder::default());
            let (stop, rx) = watch::channel(false);
            let dyn_handler: Arc<dyn Handler> = handler.clone();
            let task = tokio::spawn(sock.serve(dyn_handler, rx));
            Self {
                handler,
                stop,
                task,
            }
        }

        pub(crate) async fn stop(self) {
            self.stop.send(true).expect("server still listening");
            timeout(Duration::from_secs(5), self.task)
                .await
                .expect("server stops within 5 s")
                .expect("server task did not panic")
                .expect("serve returned Ok");
        }
    }

    /// A test client speaking raw lines.
    struct Client {
        rd: BufReader<tokio::net::unix::OwnedReadHalf>,
        wr: tokio::net::unix::OwnedWriteHalf,
    }

    impl Client {
        async fn connect(path: &Path) -> Self {
            let (rd, wr) = UnixStream::connect(path)
                .await
                .expect("connect")
                .into_split();
            Self {
                rd: BufReader::new(rd),
                wr,
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.wr.write_all(bytes).await.expect("write");
        }

        /// The next response line, parsed; panics after 5 s.
        async fn recv(&mut self) -> Response {
            let mut line = String::new();
            let n = timeout(Duration::from_secs(5), self.rd.read_line(&mut line))
                .await
                .expect("a response within 5 s")
                .expect("read");
            assert!(n > 0, "connection closed instead of answering");
            Response::from_line(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
        }

        async fn ask(&mut self, line: &str) -> Response {
            self.send(line.as_bytes()).await;
            self.send(b"\n").await;
            self.recv().await
        }

        /// True once the server has closed the connection (EOF within 5 s).
        async fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(
                timeout(Duration::from_secs(5), self.rd.read_to_end(&mut rest)).await,
                Ok(Ok(_))
            )
        }
    }

    #[track_caller]
    fn error_code(r: &Response) -> &str {
        match &r.result {
            Err(e) => &e.code,
            Ok(v) => panic!("expected an error, got {v}"),
        }
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_with_their_ids() {
        let dir = TempDir::new("order");
        let server = Running::start(&dir.sock());
        let mut c = Client::connect(&dir.sock()).await;
        // All in one write: the server must split and answer them one by one, in order.
        let mut batch = String::new();
        for i in 0..20 {
            let op = if i % 2 == 0 { "status" } else { "stats" };
            batch.push_str(&format!("{{\"v\":1,\"id\":{i},\"op\":\"{op}\"}}\n"));
        }
        batch.push_str(
            "{\"v\":1,\"id\":\"last\",\"op\":\"vip.remove\",\"vip\":\"198.18.1.1:81/tcp\"}\r\n",
        );
        c.send(batch.as_bytes()).await;
        for i in 0..20 {
            let r = c.recv().await;
            assert_eq!(r.id, json!(i));
            let want = if i % 2 == 0 {
                json!({"vips": []})
            } else {
                json!({"op": "stats"})
            };
            assert_eq!(r.result, Ok(want));
        }
        let last = c.recv().await;
        assert_eq!(last.id, json!("last"));
        assert_eq!(
            error_code(&last),
            "unknown_vip",
            "handler errors pass through"
        );
        assert_eq!(server.handler.count(), 21);
        server.stop().await;
    }

    #[tokio::test]
    async fn too_long_line_is_refused_and_the_connection_survives() {
        let dir = TempDir::new("long");
        let server = Running::start(&dir.sock());
        let mut c = Client::connect(&dir.sock()).await;
        // 1 MiB in pieces: the server answers after MAX_LINE bytes, while we are still
        // writing, and must throw the rest away rather than take it for requests.
        let filler = vec![b'x'; 64 * 1024];
        c.send(b"{\"v\":1,\"op\":\"status\",\"pad\":\"").await;
        for _ in 0..16 {
            c.send(&filler).await;
        }
        c.send(b"\"}\n").await;
        let r = c.recv().await;
        assert_eq!(error_code(&r), "too_large");
        let ok = c.ask(r#"{"v":1,"id":2,"op":"status"}"#).await;
        assert_eq!(ok.id, json!(2));
        assert!(ok.result.is_ok());
        // Exactly at the limit is still a request (refused for its content, not its size).
        let mut edge = br#"{"v":1,"op":"status","pad":""#.to_vec();
        edge.resize(MAX_LINE - 2, b'y');
        edge.extend_from_slice(b"\"}");
        assert_eq!(edge.len(), MAX_LINE);
        c.send(&edge).await;
        c.send(b"\n").await;
        assert_eq!(error_code(&c.recv().await), "bad_request");
        assert_eq!(
            server.handler.count(),
            1,
            "only the good status reached the handler"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn connection_over_the_limit_is_told_busy() {
        let dir = TempDir::new("busy");
        let server = Running::start(&dir.sock());
        let mut open = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let mut c = Client::connect(&dir.sock()).await;
            // An answer proves the server accepted it and holds its slot.
            assert!(c
                .ask(&format!(r#"{{"v":1,"id":{i},"op":"status"}}"#))
                .await
                .result
                .is_ok());
            open.push(c);
        }
        let mut extra = Client::connect(&dir.sock()).await;
        let r = extra.recv().await;
        assert_eq!(error_code(&r), "busy");
        assert!(extra.closed().await);
        // Closing one frees a slot.
        drop(open.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut again = Client::connect(&dir.sock()).await;
            // A busy server may have closed before our write lands: ignore a failed write
            // and read what it said.
            let _ = again.wr.write_all(b"{\"v\":1,\"op\":\"status\"}\n").await;
            let r = again.recv().await;
            if r.result.is_ok() {
                break;
            }
            assert_eq!(error_code(&r), "busy");
            assert!(Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn second_bind_is_refused_and_the_first_keeps_serving() {
        let dir = TempDir::new("twice");
        let server = Running::start(&dir.sock());
        match bind(&dir.sock()) {
            Err(e @ BindError::InUse { .. }) => {
                assert!(
                    e.to_string().contains("another xlb daemon is serving"),
                    "{e}"
                );
            }
            other => panic!("second bind: {other:?}"),
        }
        assert!(
            dir.sock().exists(),
            "the refused bind must not remove the live socket"
        );
        let mut c = Client::connect(&dir.sock()).await;
        assert!(c.ask(r#"{"v":1,"op":"status"}"#).await.result.is_ok());
        server.stop().await;
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_other_files_are_not() {
        let dir = TempDir::new("stale");
        // A socket file nobody listens on: what a killed daemon leaves behind.
        drop(StdUnixListener::bind(dir.sock()).expect("bind stale"));
        assert!(dir.sock().exists());
        let server = Running::start(&dir.sock());
        let mut c = Client::connect(&dir.sock()).await;
        assert!(c.ask(r#"{"v":1,"op":"status"}"#).await.result.is_ok());
        server.stop().await;

        let plain = dir.0.join("plain");
        std::fs::write(&plain, b"keep me").expect("write");
        assert!(matches!(bind(&plain), Err(BindError::NotASocket { .. })));
        assert_eq!(std::fs::read(&plain).expect("still there"), b"keep me");
    }

    #[tokio::test]
    async fn socket_is_private_and_removed_on_shutdown() {
        let dir = TempDir::new("mode");
        // A missing parent is created 0700.
        let path = dir.0.join("run").join("xlb.sock");
        let server = Running::start(&path);
        let mode = std::fs::metadata(&path)
            .expect("socket exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
        let parent = std::fs::metadata(dir.0.join("run"))
            .expect("parent")
            .permissions()
            .mode();
        assert_eq!(parent & 0o777, 0o700, "parent mode {parent:o}");
        // An open connection must not hold up shutdown.
        let mut c = Client::connect(&path).await;
        assert!(c.ask(r#"{"v":1,"op":"status"}"#).await.result.is_ok());
        server.stop().await;
        assert!(!path.exists(), "socket file removed on shutdown");
        assert!(c.closed().await, "connections closed on shutdown");
        // Dropping a socket that never served removes its file too.
        drop(bind(&path).expect("bind again"));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn bad_requests_never_reach_the_handler() {
        let dir = TempDir::new("bad");
        let server = Running::start(&dir.sock());
        let mut c = Client::connect(&dir.sock()).await;
        let burst: &[(&str, &str)] = &[
            ("garbage", "bad_json"),
            ("{\"v\":1,\"op\":", "bad_json"),
            ("[]", "bad_request"),
            ("{\"op\":\"status\"}", "unsupported_version"),
            ("{\"v\":2,\"op\":\"status\"}", "unsupported_version"),
            ("{\"v\":1,\"op\":\"nope\"}", "bad_request"),
            ("{\"v\":1,\"op\":\"status\",\"x\":1}", "bad_request"),
            ("{\"v\":1,\"op\":\"vip.remove\",\"vip\":80}", "bad_request"),
            ("{\"v\":1,\"op\":\"backend.weight\",\"vip\":\"198.18.1.1:80/tcp\",\"address\":\"198.18.0.11\"}", "bad_request"),
        ];
        let mut all = String::new();
        for (line, _) in burst {
            all.push_str(line);
            all.push('\n');
        }
        // Blank lines are skipped, not answered.
        all.push_str("\n  \n");
        c.send(all.as_bytes()).await;
        for (line, want) in burst {
            let r = c.recv().await;
            assert_eq!(error_code(&r), *want, "{line}");
        }
        let after = c.ask(r#"{"v":1,"id":"after","op":"status"}"#).await;
        assert_eq!(after.id, json!("after"), "no stray answers for blank lines");
        assert_eq!(server.handler.count(), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let dir = TempDir::new("idle");
        let sock = bind(&dir.sock())
            .expect("bind")
            .with_idle_timeout(Duration::from_millis(200));
        let server = Running::start_with(sock);
        let mut c = Client::connect(&dir.sock()).await;
        // Half a line and then silence: the timeout covers the whole line, not each read.
        c.send(b"{\"v\":1,").await;
        let t = Instant::now();
        assert!(c.closed().await);
        assert!(t.elapsed() < Duration::from_secs(3));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        struct Panics;
        impl Handler for Panics {
            fn handle(&self, _: Request) -> Result<Value, ControlError> {
                panic!("bug");
            }
        }
        let dir = TempDir::new("panic");
        let sock = bind(&dir.sock()).expect("bind");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(sock.serve(Arc::new(Panics), rx));
        let mut c = Client::connect(&dir.sock()).await;
        assert_eq!(
            error_code(&c.ask(r#"{"v":1,"op":"status"}"#).await),
            "internal"
        );
        assert_eq!(
            error_code(&c.ask(r#"{"v":1,"op":"stats"}"#).await),
            "internal",
            "connection survives"
        );
        stop.send(true).expect("send");
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn line_reader_limits() {
        let input: &[u8] = b"abc\r\n0123456789\nlast";
        let mut rd = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut rd, &mut line, 5).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"abc");
        assert_eq!(
            read_line(&mut rd, &mut line, 5).await.unwrap(),
            Line::TooLong {
                newline_seen: false
            }
        );
        assert!(skip_line(&mut rd).await.unwrap());
        assert_eq!(
            read_line(&mut rd, &mut line, 5).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"last");
        assert_eq!(read_line(&mut rd, &mut line, 5).await.unwrap(), Line::Eof);
    }
}
