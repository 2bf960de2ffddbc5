//! Agent checks (HAProxy's agent-check format): each backend runs a small agent that answers
//! a TCP connection with one line such as `up 75%`, `drain`, `down`, `maint` or `ready`. The
//! daemon polls it and turns the words into state and weight: `NN%` scales the configured
//! weight, `drain` stops new flows, `down` / `maint` / `fail` / `stopped` take the backend out
//! (its flows move), `up` / `ready` clear those.
//!
//! `xlb agent` is the tiny agent for backends: it answers with the first line of a file the
//! operator (or a script) writes, `up` when the file is missing.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::core::AgentReport;

/// Longest agent answer read.
const MAX_REPLY: usize = 512;

/// Parses an agent's reply. Unknown words are ignored (the format has more, such as
/// `maxconn:`), so newer agents keep working; an empty reply is an error.
pub fn parse(reply: &str) -> Option<AgentReport> {
    let words: Vec<&str> = reply
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let mut r = AgentReport::default();
    for w in words {
        match w.to_ascii_lowercase().as_str() {
            "down" | "maint" | "fail" | "failed" | "stopped" => r.down = true,
            "drain" => r.drain = true,
            "up" | "ready" => {
                r.down = false;
                r.drain = false;
            }
            other => {
                if let Some(p) = other.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    r.pct = Some(p.min(100));
                }
            }
        }
    }
    Some(r)
}

/// Asks the agent at `addr` once.
pub async fn poll(addr: SocketAddr, timeout: Duration) -> Result<AgentReport> {
    let read = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut buf = vec![0u8; MAX_REPLY];
        let mut n = 0;
        while n < MAX_REPLY {
            let got = s.read(&mut buf[n..]).await?;
            if got == 0 || buf[..n + got].contains(&b'\n') {
                n += got;
                break;
            }
            n += got;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let text = tokio::time::timeout(timeout, read)
        .await
        .context("agent timed out")?
        .context("agent connection")?;
    let line = text.lines().next().unwrap_or_default();
    parse(line).with_context(|| format!("agent said {line:?}"))
}

/// Runs the agent: answers every connection on `listen` with the first line of `state`.
pub async fn serve(listen: SocketAddr, state: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the agent on {listen}"))?;
    log::info!(
        "agent on {listen}, answering with the first line of {}",
        state.display()
    );
    loop {
        let (mut sock, _) = listener
            .accept()
            .await
            .context("accepting an agent connection")?;
        let text = tokio::fs::read_to_string(&state)
            .await
            .unwrap_or_else(|_| "up".into());
        let line = text.lines().next().unwrap_or("up").trim().to_string();
        tokio::spawn(async move {
            let _ = sock.write_all(format!("{line}\n").as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_haproxy_agent_words() {
        assert_eq!(
            parse("up 75%"),
            Some(AgentReport {
                down: false,
                drain: false,
                pct: Some(75)
            })
        );
        assert_eq!(
            parse("drain"),
            Some(AgentReport {
                down: false,
                drain: true,
                pct: None
            })
        );
        assert_eq!(
            parse("DOWN"),
            Some(AgentReport {
                down: true,
                drain: false,
                pct: None
            })
        );
        assert_eq!(
            parse("maint,50%"),
            Some(AgentReport {
                down: true,
                drain: false,
                pct: Some(50)
            })
        );
        assert_eq!(
            parse("ready 150% maxconn:30"),
            Some(AgentReport {
                down: false,
                drain: false,
                pct: Some(100)
            })
        );
        assert_eq!(parse("  "), None);
        assert_eq!(parse("bogus"), Some(AgentReport::default()));
    }

    #[tokio::test]
    async fn agent_serves_its_file_and_poll_reads_it() {
        let dir = std::env::temp_dir().join(format!("xlb-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        std::fs::write(&state, "drain\n").unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let server = tokio::spawn(serve(addr, state.clone()));
        let mut got = None;
        for _ in 0..50 {
            if let Ok(r) = poll(addr, Duration::from_millis(500)).await {
                got = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            got,
            Some(AgentReport {
                down: false,
                drain: true,
                pct: None
            })
        );
        std::fs::write(&state, "up 50%\n").unwrap();
        assert_eq!(
            poll(addr, Duration::from_millis(500)).await.unwrap().pct,
            Some(50)
        );
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
