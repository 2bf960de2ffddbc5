//! test_run fixtures for `xlb_mss_clamp`, the TC egress program of `xlb decap --clamp-mss`:
//! a SYN-ACK (or SYN) from a VIP leaves with its MSS lowered to the family's clamp and its
//! TCP checksum still right (byte for byte what a stack would have sent with that MSS);
//! everything else leaves exactly as it came, counted only when clamped.

use std::net::IpAddr;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use etherparse::{PacketBuilder, VlanId};
use lb_common::{
    addr::to_words,
    counters::{Counters, Event},
    maps::{DecapAddr, MAP_CLAMP_SOURCES, MAP_MSS_CLAMP, MAP_STATS},
    mss::MssClamp,
};
use xlb::{dataplane::sum_reasons, loader};
use xlb_tests::{fixtures::counter_deltas, netns::require_root};

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
const VIP4: [u8; 4] = [198, 18, 1, 1];
const VIP6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The backend's own address: its SYN-ACKs (health checks, direct clients) are not clamped.
const OWN4: [u8; 4] = [198, 18, 0, 11];
const CLIENT4: [u8; 4] = [198, 18, 0, 10];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const CLAMP: MssClamp = MssClamp {
    ipv4: 1420,
    ipv6: 1400,
};
const TC_ACT_OK: u32 = 0;

/// The decap object with `xlb_mss_clamp` loaded, the VIPs as clamped sources.
struct ClampLab {
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, Counters>,
}

impl ClampLab {
    fn new(clamp: MssClamp) -> ClampLab {
        let mut ebpf = loader::load_decap().expect("load decap");
        {
            let mut sources: HashMap<_, DecapAddr, u32> =
                HashMap::try_from(ebpf.map_mut(MAP_CLAMP_SOURCES).expect("CLAMP_SOURCES"))
                    .expect("CLAMP_SOURCES type");
            for a in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
                let (addr, family) = to_words(a);
                let key = DecapAddr {
                    addr,
                    family: u32::from(family),
                };
                sources.insert(key, 1, 0).expect("add source");
            }
        }
        let mut limits: Array<_, MssClamp> =
            Array::try_from(ebpf.map_mut(MAP_MSS_CLAMP).expect("MSS_CLAMP")).expect("type");
        limits.set(0, clamp, 0).expect("set clamp");
        loader::classifier(&mut ebpf, loader::MSS_CLAMP_PROG).expect("load xlb_mss_clamp");
        let stats = PerCpuArray::try_from(ebpf.take_map(MAP_STATS).expect("STATS")).expect("type");
        ClampLab { ebpf, stats }
    }

    /// One frame through the program: its verdict and the frame it leaves.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(loader::MSS_CLAMP_PROG)
            .expect("program")
            .try_into()
            .expect("TC program");
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("test_run");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    fn counters(&self) -> Vec<u64> {
        sum_reasons(&self.stats)
    }
}

/// TCP options as Linux sends them in a SYN-ACK: MSS, SACK permitted, timestamps, NOP,
/// window scale.
fn linux_options(mss: u16) -> Vec<u8> {
    let [hi, lo] = mss.to_be_bytes();
    vec![
        2, 4, hi, lo, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7,
    ]
}

/// Timestamps first, then the MSS: where an option is must not matter.
fn mss_last(mss: u16) -> Vec<u8> {
    let [hi, lo] = mss.to_be_bytes();
    vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 2, 4, hi, lo]
}

/// What a segment looks like, before and after.
#[derive(Clone, Copy)]
struct Seg {
    syn: bool,
    ack: bool,
    vlan: bool,
}

const SYN_ACK: Seg = Seg {
    syn: true,
    ack: true,
    vlan: false,
};

/// An IPv4 segment from `src` to the client, with `options` (raw, a multiple of 4 bytes).
fn seg4(src: [u8; 4], seg: Seg, options: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(HOST_MAC, ROUTER_MAC);
    let ip = if seg.vlan {
        eth.single_vlan(VlanId::try_new(7).expect("vlan id"))
            .ipv4(src, CLIENT4, 64)
    } else {
        eth.ipv4(src, CLIENT4, 64)
    };
    let mut tcp = ip.tcp(443, 40000, 1000, 64240);
    if seg.syn {
        tcp = tcp.syn();
    }
    if seg.ack {
        tcp = tcp.ack(1);
    }
    let tcp = tcp.options_raw(options).expect("options");
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).expect("build");
    out
}

/// An IPv6 SYN-ACK from `src` to the client.
fn seg6(src: [u8; 16], options: &[u8]) -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(HOST_MAC, ROUTER_MAC)
        .ipv6(src, CLIENT6, 64)
        .tcp(443, 40000, 1000, 64240)
        .syn()
        .ack(1)
        .options_raw(options)
        .expect("options");
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).expect("build");
    out
}

/// One frame through the program.
struct Case {
    name: &'static str,
    input: Vec<u8>,
    /// `None`: leaves untouched and uncounted.
    clamped: Option<Vec<u8>>,
}

fn clamped(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Case {
    Case {
        name,
        input,
        clamped: Some(output),
    }
}

fn untouched(name: &'static str, input: Vec<u8>) -> Case {
    Case {
        name,
        input,
        clamped: None,
    }
}

fn run_cases(lab: &mut ClampLab, cases: Vec<Case>) {
    for c in cases {
        let before = lab.counters();
        let (verdict, out) = lab.run(&c.input);
        let after = lab.counters();
        assert_eq!(verdict, TC_ACT_OK, "{}: verdict", c.name);
        let (want, moved) = match &c.clamped {
            Some(out) => (out, 1),
            None => (&c.input, 0),
        };
        assert_eq!(&out, want, "{}: frame", c.name);
        let slot = Event::MssClamped.slot() as usize;
        assert_eq!(
            after[slot] - before[slot],
            moved,
            "{}: counters moved {}",
            c.name,
            counter_deltas(&before, &after)
        );
        let others_moved = before
            .iter()
            .zip(&after)
            .enumerate()
            .any(|(i, (b, a))| i != slot && a != b);
        assert!(
            !others_moved,
            "{}: {}",
            c.name,
            counter_deltas(&before, &after)
        );
    }
}

#[test]
fn syn_acks_from_vips_leave_with_the_clamped_mss() {
    if !require_root() {
        return;
    }
    let mut lab = ClampLab::new(CLAMP);
    let vlan = Seg {
        vlan: true,
        ..SYN_ACK
    };
    let syn = Seg {
        ack: false,
        ..SYN_ACK
    };
    run_cases(
        &mut lab,
        vec![
            clamped(
                "IPv4 SYN-ACK, Linux's options",
                seg4(VIP4, SYN_ACK, &linux_options(1460)),
                seg4(VIP4, SYN_ACK, &linux_options(1420)),
            ),
            clamped(
                "IPv4 SYN-ACK, the MSS after other options",
                seg4(VIP4, SYN_ACK, &mss_last(8960)),
                seg4(VIP4, SYN_ACK, &mss_last(1420)),
            ),
            clamped(
                "IPv4 SYN-ACK behind an 802.1Q tag",
                seg4(VIP4, vlan, &linux_options(1460)),
                seg4(VIP4, vlan, &linux_options(1420)),
            ),
            clamped(
                "a SYN from a VIP",
                seg4(VIP4, syn, &linux_options(1460)),
                seg4(VIP4, syn, &linux_options(1420)),
            ),
            clamped(
                "IPv6 SYN-ACK",
                seg6(VIP6, &linux_options(1440)),
                seg6(VIP6, &linux_options(1400)),
            ),
            untouched(
                "an MSS already at the clamp",
                seg4(VIP4, SYN_ACK, &linux_options(1420)),
            ),
            untouched(
                "an MSS below the clamp",
                seg4(VIP4, SYN_ACK, &linux_options(536)),
            ),
            untouched("IPv6 at its clamp", seg6(VIP6, &linux_options(1400))),
            untouched(
                "the backend's own address",
                seg4(OWN4, SYN_ACK, &linux_options(1460)),
            ),
            untouched(
                "no SYN",
                seg4(
                    VIP4,
                    Seg {
                        syn: false,
                        ..SYN_ACK
                    },
                    &linux_options(1460),
                ),
            ),
            untouched(
                "no MSS option",
                seg4(VIP4, SYN_ACK, &[4, 2, 1, 1, 1, 3, 3, 7]),
            ),
        ],
    );
}

#[test]
fn what_cannot_be_read_safely_leaves_untouched() {
    if !require_root() {
        return;
    }
    let mut lab = ClampLab::new(CLAMP);
    // An option of length 0 would loop forever in a naive walk; an MSS option of length 3
    // is not an MSS; the end-of-list option ends the walk before the MSS.
    let zero_len = seg4(VIP4, SYN_ACK, &[4, 0, 2, 4, 0x05, 0xb4, 1, 1]);
    let short_mss = seg4(VIP4, SYN_ACK, &[2, 3, 0x05, 0xb4]);
    let after_eol = seg4(VIP4, SYN_ACK, &[0, 1, 1, 1, 2, 4, 0x05, 0xb4]);
    // The MSS's length runs past the header's end (data offset).
    let past_end = seg4(VIP4, SYN_ACK, &[1, 1, 1, 1, 1, 1, 2, 4]);
    // The header says 20 bytes of options, the frame holds 4 of them.
    let mut cut = seg4(VIP4, SYN_ACK, &linux_options(1460));
    cut.truncate(14 + 20 + 20 + 2);
    // An IPv4 fragment, and an IPv6 packet whose next header is not TCP (an extension
    // header, as far as the program is concerned).
    let mut fragment = seg4(VIP4, SYN_ACK, &linux_options(1460));
    fragment[14 + 6] |= 0x20;
    let mut ext = seg6(VIP6, &linux_options(1460));
    ext[14 + 6] = 0;
    run_cases(
        &mut lab,
        vec![
            untouched("an option of length 0", zero_len),
            untouched("an MSS option of length 3", short_mss),
            untouched("the MSS after the end of the list", after_eol),
            untouched("an option past the data offset", past_end),
            untouched("options cut off by the frame's end", cut),
            untouched("an IPv4 fragment", fragment),
            untouched("IPv6 with an extension header", ext),
        ],
    );
}

#[test]
fn a_family_without_a_clamp_is_left_alone() {
    if !require_root() {
        return;
    }
    let mut lab = ClampLab::new(MssClamp {
        ipv4: 0,
        ipv6: 1400,
    });
    run_cases(
        &mut lab,
        vec![
            untouched(
                "IPv4, not clamped",
                seg4(VIP4, SYN_ACK, &linux_options(1460)),
            ),
            clamped(
                "IPv6 still clamped",
                seg6(VIP6, &linux_options(1440)),
                seg6(VIP6, &linux_options(1400)),
            ),
        ],
    );
}
