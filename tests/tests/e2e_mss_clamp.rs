//! End-to-end: uploads through a VIP when no ICMP reaches the client. With the balancer's
//! too-big answers off (as a firewall in front of the client that drops ICMP would have
//! it), a full-size segment no longer fits once tunnelled and the upload stalls: a path
//! MTU black hole. With `xlb decap --clamp-mss` on the backend, its SYN-ACKs advertise an
//! MSS that leaves room for the tunnel, the client never sends a segment too big, and
//! 2 MiB arrive whole through both VIPs. The backend's own address is not clamped.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, decap_metrics, scrape_metrics, DemoNet, SINK_PORT, VIP4, VIP6},
};

const UPLOAD: usize = 2 * 1024 * 1024;

/// Sends [`UPLOAD`] bytes to `addr` from the client, then waits (at most `wait`) for the
/// sink's "NAME BYTES" answer. The socket's MSS is returned with it.
fn upload(net: &DemoNet, addr: SocketAddr, wait: Duration) -> (u32, std::io::Result<String>) {
    let mut s = connect_in(&net.client, addr, Duration::from_secs(3)).expect("connect");
    let mss = mss_of(&s);
    // The kernel takes the whole upload into its buffers or blocks; either way the answer
    // tells whether it arrived.
    s.set_write_timeout(Some(wait)).expect("timeout");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let sent = s
        .write_all(&vec![b'u'; UPLOAD])
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .and_then(|()| {
            let mut answer = String::new();
            s.read_to_string(&mut answer).map(|_| answer)
        });
    (mss, sent)
}

/// The connection's MSS as the client's kernel uses it (`TCP_MAXSEG`).
fn mss_of(s: &TcpStream) -> u32 {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and an int-sized buffer for the option.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of_mut!(mss).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt TCP_MAXSEG");
    mss as u32
}

/// The backend's `mss_clamped` count, from its decap's metrics.
fn clamped(net: &DemoNet) -> u64 {
    let text = scrape_metrics(&net.backends[0].ns, decap_metrics(&net.backends[0]));
    text.lines()
        .find_map(|l| l.strip_prefix("xlb_decap_events_total{event=\"mss_clamped\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mss_clamped in the decap's metrics:\n{text}"))
}

#[test]
fn clamped_syn_acks_keep_uploads_moving_without_icmp() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2emss", 1);
    net.start_decap(0);
    let _sink = net.start_sink(0);
    // Backends by their IPv4 address: IPv4 tunnels for both VIPs (6in4 for the IPv6 one).
    let cfg = format!(
        r#"{{"icmp_too_big": false, "vips": [
          {{"address": "{VIP4}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "198.18.0.11"}}]}},
          {{"address": "{VIP6}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let vip4 = SocketAddr::new(VIP4.parse().unwrap(), SINK_PORT);

    // Without the clamp: the backend invites 1460-byte segments, which do not fit once
    // tunnelled, and nobody tells the client.
    let (mss, sent) = upload(&net, vip4, Duration::from_secs(4));
    assert!(
        mss > 1440,
        "the client's MSS is already small ({mss}): no black hole to show"
    );
    assert!(
        sent.is_err(),
        "the upload went through without the clamp or ICMP: {sent:?}"
    );
    let stats = net.stats_json(&sock);
    assert!(
        stats["reasons"]["too_big"].as_u64().unwrap_or(0) > 0,
        "the balancer dropped nothing as too big: {stats}"
    );

    // With it (auto: the backend has an IPv6 address, so room for a 40-byte header).
    net.backends[0].decap = None;
    // The old program's link goes with its process, a moment later: wait, so that the
    // new decap's start is not taken for the old one's.
    let ns = net.backends[0].ns.name().to_owned();
    wait_for("the old decap to detach", Duration::from_secs(10), || {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "link", "show", "eth0"])
            .output();
        out.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("xdp"))
    });
    net.start_decap_with(0, &["--clamp-mss"]);
    let before = clamped(&net);
    for (vip, most) in [(VIP4, 1420), (VIP6, 1400)] {
        let addr = SocketAddr::new(vip.parse().unwrap(), SINK_PORT);
        let (mss, sent) = upload(&net, addr, Duration::from_secs(20));
        let log = net.backends[0].decap.as_ref().map(|p| p.log_text());
        assert!(
            mss <= most,
            "{vip}: the client's MSS is {mss}, over {most} (clamped {} since {before}); decap's log:\n{}",
            clamped(&net),
            log.unwrap_or_default()
        );
        let answer = sent.unwrap_or_else(|e| panic!("{vip}: upload stalled with the clamp: {e}"));
        assert_eq!(answer.trim(), format!("b1 {UPLOAD}"), "{vip}");
    }
    assert!(
        clamped(&net) >= before + 2,
        "SYN-ACKs clamped: {}",
        clamped(&net)
    );

    // The backend's own address is no VIP: a direct connection keeps its full MSS.
    let direct = connect_in(
        &net.client,
        SocketAddr::new("198.18.0.11".parse().unwrap(), SINK_PORT),
        Duration::from_secs(3),
    )
    .expect("connect to the backend itself");
    assert!(mss_of(&direct) > 1440, "a direct connection was clamped");
    drop(direct);
    let now = clamped(&net);
    wait_for("the metrics to settle", Duration::from_secs(2), || {
        clamped(&net) == now
    });
    assert_eq!(
        now,
        before + 2,
        "the direct connection's SYN-ACK was counted as clamped"
    );
}
