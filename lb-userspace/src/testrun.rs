//! Running XDP programs on test frames with `BPF_PROG_TEST_RUN`: one frame → verdict and
//! output frame, or a repeat run → nanoseconds per packet. Used by the fixture tests and
//! by `cargo xtask bench`.

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// Room for frames to grow (encapsulation, ICMP replies never exceed the input + 64).
const OUT_SLACK: usize = 256;

/// What one run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// XDP verdict (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// Runs `prog` once on `frame`.
pub fn run(prog: &Xdp, frame: &[u8]) -> Result<Outcome> {
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN failed")?;
    out.truncate(res.data_size_out as usize);
    Ok(Outcome {
        verdict: res.return_value,
        frame: out,
    })
}

/// Runs `prog` `repeat` times on `frame` in the kernel and returns the mean ns per run
/// (the kernel itself divides its measured time by the repeat count).
///
/// The kernel reuses one buffer across repeats: a program that rewrites the frame sees its
/// own output on the next repeat, so callers check the counters to know what was measured.
pub fn ns_per_packet(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<f64> {
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN (repeat) failed")?;
    Ok(res.duration.as_nanos() as f64)
}

/// Names of XDP verdicts, for messages.
pub fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader;

    #[test]
    fn balancer_loads_and_passes_arp() {
        let mut ebpf = loader::load_balancer(loader::LoadOptions {
            max_vips: 2,
            max_conns: 1024,
            flow_cache: true,
        })
        .unwrap();
        let prog = loader::xdp(&mut ebpf, loader::BALANCER_PROG).unwrap();
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 46]);
        let out = run(prog, &arp).unwrap();
        assert_eq!(verdict_name(out.verdict), "XDP_PASS");
        assert_eq!(out.frame, arp);
    }
}
