//! `xlb-quic-peer`: the QUIC peer for the server-ID routing end-to-end test.
//!
//! `server` is one backend: a real QUIC server whose every connection ID carries its server ID
//! in the QUIC-LB plaintext layout, which is what xlb reads to keep a connection on its backend.
//! `client` opens connections to the VIP and migrates each one to fresh local ports mid-flight,
//! so the 4-tuple changes and only the connection ID can keep it on the same backend. The server
//! echoes its name and a per-process connection serial, so the test can tell from the client's
//! JSON report alone whether every path of a connection reached the same backend.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use quinn::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    Connection, ConnectionIdGenerator, Endpoint, EndpointConfig, TokioRuntime,
};
use rand::Rng;
use rustls::{
    crypto::ring,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde_json::{json, Value};
use tokio::time::timeout;
use xlb::health::AnyCertificate;

const ALPN: &[u8] = b"xlb-test";
const SERVER_NAME: &str = "xlb-test";
const MAX_REQUEST: usize = 4096;
/// RFC 9000's limit; quinn's ConnectionId cannot hold more.
const MAX_CID_LEN: u8 = 20;
/// Below this many random bytes the CIDs of one connection become linkable (and may collide).
const MIN_NONCE: u8 = 4;
/// Closing is best effort: the run must not hang on a peer that went away.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

#[derive(Parser)]
#[command(
    name = "xlb-quic-peer",
    about = "QUIC peer for xlb's server-ID routing test"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Answer every stream with "NAME SERIAL REQUEST"; print `ready` once listening.
    Server(ServerArgs),
    /// Run connections one after another, migrating each; print one JSON report.
    Client(ClientArgs),
}

#[derive(Args)]
struct ServerArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    name: String,
    #[arg(long)]
    server_id: u32,
    #[arg(long, default_value_t = 2)]
    id_bytes: u8,
    #[arg(long, default_value_t = 0)]
    config_id: u8,
    #[arg(long, default_value_t = 8)]
    cid_len: u8,
}

#[derive(Args)]
struct ClientArgs {
    #[arg(long)]
    connect: SocketAddr,
    /// Local address for every socket (default: the unspecified address of --connect's family).
    #[arg(long)]
    bind: Option<IpAddr>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    #[arg(long)]
    migrations: u32,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

/// Issues QUIC-LB plaintext CIDs: config id in the top 3 bits of byte 0, then the server id
/// big-endian, then random bytes.
#[derive(Debug, Clone, Copy)]
struct ServerIdCids {
    config_id: u8,
    server_id: u32,
    id_bytes: u8,
    cid_len: u8,
}

impl ServerIdCids {
    fn new(config_id: u8, server_id: u32, id_bytes: u8, cid_len: u8) -> Result<Self, String> {
        if !(1..=4).contains(&id_bytes) {
            return Err(format!("--id-bytes {id_bytes}: must be 1..=4"));
        }
        if config_id > 6 {
            // 7 is QUIC-LB's "no routing information here" code point.
            return Err(format!("--config-id {config_id}: must be 0..=6"));
        }
        if u64::from(server_id) >= 1u64 << (8 * u32::from(id_bytes)) {
            return Err(format!(
                "--server-id {server_id}: does not fit in {id_bytes} byte(s)"
            ));
        }
        let min = 1 + id_bytes + MIN_NONCE;
        if !(min..=MAX_CID_LEN).contains(&cid_len) {
            return Err(format!(
                "--cid-len {cid_len}: must be {min}..={MAX_CID_LEN}"
            ));
        }
        Ok(Self {
            config_id,
            server_id,
            id_bytes,
            cid_len,
        })
    }
}

impl ConnectionIdGenerator for ServerIdCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut buf = [0u8; MAX_CID_LEN as usize];
        let cid = &mut buf[..usize::from(self.cid_len)];
        rand::rng().fill_bytes(cid);
        cid[0] = (self.config_id << 5) | (cid[0] & 0x1f);
        let n = usize::from(self.id_bytes);
        cid[1..=n].copy_from_slice(&self.server_id.to_be_bytes()[4 - n..]);
        quinn::ConnectionId::new(cid)
    }

    fn cid_len(&self) -> usize {
        usize::from(self.cid_len)
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn server_config() -> Result<quinn::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .context("self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    // The default already, but the whole test is about migrating clients: say so.
    config.migration(true);
    Ok(config)
}

fn client_config() -> Result<quinn::ClientConfig> {
    let provider = Arc::new(ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        // The servers' certificates are throwaway self-signed ones; the handshake's
        // signatures are still checked, so the TLS exchange stays real.
        .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )))
}

async fn serve(args: ServerArgs, cids: ServerIdCids) -> Result<()> {
    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.cid_generator(move || Box::new(cids));
    // Bound to the exact VIP so that replies leave from the address the client dialled.
    let socket = UdpSocket::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let server_config = server_config().context("QUIC server config")?;
    let endpoint = Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(TokioRuntime),
    )
    .context("QUIC endpoint")?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")
            .and_then(|()| out.flush())
            .context("stdout")?;
    }
    let name: Arc<str> = args.name.into();
    let serials = AtomicU64::new(0);
    while let Some(incoming) = endpoint.accept().await {
        let name = name.clone();
        let serial = serials.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => return eprintln!("{name}: connection {serial}: handshake: {e}"),
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let request = match recv.read_to_end(MAX_REQUEST).await {
                        Ok(request) => request,
                        Err(e) => return eprintln!("{name}: connection {serial}: read: {e}"),
                    };
                    let answer = format!("{name} {serial} {}\n", String::from_utf8_lossy(&request));
                    if let Err(e) = send.write_all(answer.as_bytes()).await {
                        return eprintln!("{name}: connection {serial}: write: {e}");
                    }
                    let _ = send.finish();
                });
            }
        });
    }
    Ok(())
}

async fn request(conn: &Connection, text: &str) -> Result<String> {
    let (mut send, mut recv) = conn.open_bi().await.context("open stream")?;
    send.write_all(text.as_bytes()).await.context("write")?;
    send.finish().context("finish")?;
    let answer = recv.read_to_end(MAX_REQUEST).await.context("read")?;
    let answer = String::from_utf8(answer).context("answer is not UTF-8")?;
    Ok(answer.trim_end_matches('\n').to_string())
}

fn new_socket(bind: IpAddr) -> Result<UdpSocket> {
    UdpSocket::bind((bind, 0)).with_context(|| format!("bind {bind}"))
}

/// One connection. `Ok` carries its report, request failures included; `Err` is a local setup
/// failure, which ends the whole run.
async fn run_connection(
    args: &ClientArgs,
    bind: IpAddr,
    c: u32,
    config: &quinn::ClientConfig,
) -> Result<Value> {
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        new_socket(bind)?,
        Arc::new(TokioRuntime),
    )
    .context("QUIC client endpoint")?;
    let wait = Duration::from_millis(args.timeout_ms);
    let ms = args.timeout_ms;
    let connected = match endpoint.connect_with(config.clone(), args.connect, SERVER_NAME) {
        Err(e) => Err(format!("connect: {e}")),
        Ok(connecting) => match timeout(wait, connecting).await {
            Err(_) => Err(format!("connect: timeout after {ms}ms")),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Ok(Ok(conn)) => Ok(conn),
        },
    };
    let conn = match connected {
        Ok(conn) => conn,
        Err(e) => {
            let _ = timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
            return Ok(json!({ "paths": [], "error": e }));
        }
    };

    let mut paths = Vec::new();
    for p in 0..=args.migrations {
        if p > 0 {
            // A new socket means a new source port: the 4-tuple changes under the connection,
            // as with NAT rebinding, and quinn moves to a fresh server-issued CID.
            endpoint.rebind(new_socket(bind)?).context("rebind")?;
        }
        let port = endpoint.local_addr().context("local address")?.port();
        let (mut answers, mut errors) = (Vec::new(), Vec::new());
        for r in 0..args.requests {
            let text = format!("c{c} p{p} r{r}");
            match timeout(wait, request(&conn, &text)).await {
                Ok(Ok(answer)) => answers.push(answer),
                Ok(Err(e)) => errors.push(format!("{e:#} on {text}")),
                Err(_) => errors.push(format!("timeout after {ms}ms on {text}")),
            }
            if !errors.is_empty() {
                break;
            }
        }
        let failed = !errors.is_empty();
        paths.push(json!({ "local_port": port, "answers": answers, "errors": errors }));
        if failed {
            break;
        }
    }
    conn.close(0u32.into(), b"done");
    let _ = timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    Ok(json!({ "paths": paths, "error": null }))
}

async fn client(args: ClientArgs, bind: IpAddr) -> Result<()> {
    let config = client_config().context("QUIC client config")?;
    let mut connections = Vec::new();
    for c in 0..args.connections {
        connections.push(run_connection(&args, bind, c, &config).await?);
    }
    println!("{}", json!({ "connections": connections }));
    Ok(())
}

/// Exits with clap's usage-error code (2), like a malformed flag would.
fn usage_error(msg: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .exit()
}

fn block_on(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    runtime.context("tokio runtime")?.block_on(work)
}

fn main() -> ExitCode {
    let result = match Cli::parse().mode {
        Mode::Server(args) => {
            let (config_id, server_id) = (args.config_id, args.server_id);
            match ServerIdCids::new(config_id, server_id, args.id_bytes, args.cid_len) {
                Ok(cids) => block_on(serve(args, cids)),
                Err(e) => usage_error(e),
            }
        }
        Mode::Client(args) => {
            let bind = args.bind.unwrap_or(match args.connect {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            });
            if bind.is_ipv4() != args.connect.is_ipv4() {
                usage_error(format!("--bind {bind} is not of --connect's family"));
            }
            block_on(client(args, bind))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb-quic-peer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_carry_config_id_and_server_id() {
        for (config_id, server_id, id_bytes, cid_len) in [
            (0, 7, 2, 8),
            (6, 0xab, 1, 6),
            (3, 0x0102_0304, 4, 20),
            (5, 0x00ff_fffe, 3, 9),
        ] {
            let mut generator = ServerIdCids::new(config_id, server_id, id_bytes, cid_len)
                .expect("valid parameters");
            let first = generator.generate_cid();
            for _ in 0..64 {
                let cid = generator.generate_cid();
                assert_eq!(cid.len(), usize::from(cid_len));
                assert_eq!(generator.cid_len(), usize::from(cid_len));
                assert_eq!(cid[0] >> 5, config_id);
                let n = usize::from(id_bytes);
                let id = cid[1..=n]
                    .iter()
                    .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
                assert_eq!(id, server_id);
                assert_ne!(cid, first, "nonce must vary between CIDs");
            }
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(ServerIdCids::new(7, 1, 2, 8).is_err());
        assert!(ServerIdCids::new(0, 256, 1, 8).is_err());
        assert!(ServerIdCids::new(0, 1, 0, 8).is_err());
        assert!(ServerIdCids::new(0, 1, 5, 20).is_err());
        assert!(ServerIdCids::new(0, 1, 2, 6).is_err());
        assert!(ServerIdCids::new(0, 1, 2, 21).is_err());
        assert!(ServerIdCids::new(0, 1, 2, 7).is_ok());
        assert!(ServerIdCids::new(0, u32::MAX, 4, 9).is_ok());
    }
}
