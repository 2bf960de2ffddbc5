//! test_run: the balancer samples the packets it drops into `DROP_SAMPLES` for `xlb drops`
//! (the real program, ring buffer and the daemon's reader, `xlb::drops`): each sample
//! carries its drop reason and the frame's first bytes as they came in; forwarded and
//! passed packets are never sampled; each CPU samples as many drops as its budget, which
//! the daemon refills to `drop_samples` every second, and none at 0.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::maps::DROP_CAPTURE;
use xlb::drops::{DropLog, DropSampler, Query, Sample};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.2", "port": 80, "protocol": "tcp", "backends": []}
]}"#;

fn syn_to(vip: &str, sport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(vip))
        .tcp(sport, 80)
        .syn()
        .payload(&[0x5a; 300])
        .build()
}

/// A lab whose balancer samples `per_second` drops a second per CPU, its sampler, and
/// the log the sampler drains into.
fn lab(per_second: u32) -> (Lab, DropSampler, Mutex<DropLog>) {
    let mut lab = Lab::new(CFG);
    let sampler = DropSampler::open(&mut lab.ebpf, per_second).expect("open the drop samples");
    (lab, sampler, Mutex::new(DropLog::new(per_second)))
}

fn samples(log: &Mutex<DropLog>) -> Vec<Sample> {
    log.lock()
        .expect("log")
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .samples
}

#[test]
fn dropped_packets_are_sampled_with_their_reason_and_first_bytes() {
    if !require_root() {
        return;
    }
    let (mut lab, mut sampler, log) = lab(100);
    let forwarded = syn_to("198.18.1.1", 40000);
    let no_backend = syn_to("198.18.1.2", 40001);
    // IHL 3: shorter than the fixed header.
    let mut bad_ihl = syn_to("198.18.1.1", 40002);
    bad_ihl[14] = 0x43;
    let not_vip = syn_to("198.18.1.3", 40003);

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(lab.run(&forwarded).verdict, XDP_TX);
    assert_eq!(lab.run(&no_backend).verdict, XDP_DROP);
    assert_eq!(lab.run(&not_vip).verdict, XDP_PASS);
    assert_eq!(lab.run(&bad_ihl).verdict, XDP_DROP);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(sampler.drain(&log), 2, "the two drops, nothing else");

    let got = samples(&log);
    let reasons: Vec<&str> = got.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons, ["no_backend", "ipv4_bad_ihl"]);
    for (s, frame) in got.iter().zip([&no_backend, &bad_ihl]) {
        assert!(
            frame.len() > DROP_CAPTURE,
            "the fixture frames are longer than a capture"
        );
        assert_eq!(s.frame_len as usize, frame.len(), "{}", s.reason);
        assert_eq!(
            s.frame(),
            frame[..DROP_CAPTURE],
            "{}: the bytes as they came",
            s.reason
        );
        // The program's clock turned into wall-clock time (to the daemon's reading of both
        // clocks, a few µs; the coarse window clock plays no part).
        let t = Duration::from_nanos(s.time_unix_ns);
        let slack = Duration::from_millis(50);
        assert!(
            t + slack >= before && t <= after + slack,
            "{}: sampled at {t:?}, run between {before:?} and {after:?}",
            s.reason
        );
    }
    let h = &got[0].headers;
    assert_eq!(
        (h.src, h.dst, h.sport, h.dport, h.tcp_flags),
        (
            Some(v4("198.18.0.10").into()),
            Some(v4("198.18.1.2").into()),
            Some(40001),
            Some(80),
            Some(0x02)
        )
    );
    let h = &got[1].headers;
    assert_eq!(
        (h.dst, h.sport),
        (Some(v4("198.18.1.1").into()), None),
        "a bad IHL shows its addresses, not where its ports would be"
    );
}

/// A frame shorter than a capture is kept whole (the copy's length is the frame's).
#[test]
fn a_short_frame_is_sampled_whole() {
    if !require_root() {
        return;
    }
    let (mut lab, mut sampler, log) = lab(100);
    let mut short = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .udp(40000, 53)
        .build();
    short[14] = 0x43;
    assert!(short.len() < DROP_CAPTURE, "{} bytes", short.len());
    assert_eq!(lab.run(&short).verdict, XDP_DROP);
    assert_eq!(sampler.drain(&log), 1);
    let s = &samples(&log)[0];
    assert_eq!(s.reason, "ipv4_bad_ihl");
    assert_eq!(
        (s.frame_len as usize, s.frame()),
        (short.len(), short.clone())
    );
}

#[test]
fn each_cpu_samples_its_budget_and_no_more_until_the_refill() {
    if !require_root() {
        return;
    }
    const RATE: u32 = 3;
    let (mut lab, mut sampler, log) = lab(RATE);
    let mut port = 41000;
    let mut drops = |lab: &mut Lab, n: u16| {
        for _ in 0..n {
            assert_eq!(lab.run(&syn_to("198.18.1.2", port)).verdict, XDP_DROP);
            port += 1;
        }
    };
    // test_run may move between CPUs: each has its own budget, so a run that did would
    // sample up to RATE on each of them.
    let cpus = aya::util::nr_cpus().expect("CPUs") as u32;
    drops(&mut lab, 20);
    let first = sampler.drain(&log) as u32;
    assert!(
        (RATE..=RATE * cpus).contains(&first),
        "{first} of 20 drops sampled on a budget of {RATE}"
    );
    // The budget spent, nothing more until the daemon's refill (every second).
    drops(&mut lab, 20);
    assert_eq!(sampler.drain(&log), 0, "sampled beyond the budget");
    sampler.refill(&log).expect("refill");
    drops(&mut lab, 20);
    let second = sampler.drain(&log) as u32;
    assert!(
        (RATE..=RATE * cpus).contains(&second),
        "{second} after the refill"
    );
    // Every one of them counted.
    let no_backend = lb_common::counters::Drop::NoBackend.slot() as usize;
    assert_eq!(lab.counters()[no_backend], 60);
}

#[test]
fn no_samples_at_zero() {
    if !require_root() {
        return;
    }
    let (mut lab, mut sampler, log) = lab(0);
    for i in 0..5 {
        assert_eq!(lab.run(&syn_to("198.18.1.2", 42000 + i)).verdict, XDP_DROP);
    }
    assert_eq!(sampler.drain(&log), 0);
    assert!(samples(&log).is_empty());
    // The drops were counted all the same.
    let no_backend = lb_common::counters::Drop::NoBackend.slot() as usize;
    assert_eq!(lab.counters()[no_backend], 5);
}

/// A reload's `drop_samples` reaches the sampler through the log: from the next refill on,
/// each CPU samples the new rate; back at 0, none.
#[test]
fn a_new_rate_applies_from_the_next_refill() {
    if !require_root() {
        return;
    }
    const RATE: u32 = 2;
    let (mut lab, mut sampler, log) = lab(0);
    let mut port = 43000;
    let mut drops = |lab: &mut Lab| {
        for _ in 0..10 {
            assert_eq!(lab.run(&syn_to("198.18.1.2", port)).verdict, XDP_DROP);
            port += 1;
        }
    };
    drops(&mut lab);
    assert_eq!(sampler.drain(&log), 0, "sampled at 0");
    log.lock().unwrap().set_per_second(RATE);
    sampler.refill(&log).expect("refill");
    drops(&mut lab);
    let cpus = aya::util::nr_cpus().expect("CPUs") as u32;
    let sampled = sampler.drain(&log) as u32;
    assert!(
        (RATE..=RATE * cpus).contains(&sampled),
        "{sampled} of 10 drops sampled at a new rate of {RATE}"
    );
    log.lock().unwrap().set_per_second(0);
    sampler.refill(&log).expect("refill");
    drops(&mut lab);
    assert_eq!(
        sampler.drain(&log),
        0,
        "sampled after the rate went back to 0"
    );
}
