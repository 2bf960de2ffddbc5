//! The verifier's budget: the kernel refuses a program whose verification walks more than a
//! million instructions, and the balancer's count grows with every path a change adds (each
//! is walked once per way the code before it reaches it). This test fails well before the
//! kernel would, so that a change that costs the verifier much is seen while the margin is
//! still there: see docs/design.md, Verification.

use xlb_tests::{fixtures::Lab, netns::require_root};

/// The kernel's limit (`BPF_COMPLEXITY_LIMIT_INSNS`).
const KERNEL_LIMIT: u32 = 1_000_000;
/// Our own: 60 % of the kernel's, as older kernels prune less. The balancer takes about
/// 510 000 on kernel 6.18.
const BUDGET: u32 = 600_000;

#[test]
fn the_balancer_verifies_within_budget() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(r#"{"vips": []}"#);
    let mut found = 0;
    for (name, prog) in lab.ebpf.programs() {
        let aya::programs::Program::Xdp(xdp) = prog else {
            continue;
        };
        found += 1;
        let info = xdp.info().expect("program info");
        // 0 on kernels that do not report it (before 5.16): nothing to check there.
        let Some(n) = info.verified_instruction_count() else {
            continue;
        };
        println!("{name}: the verifier walked {n} instructions (budget {BUDGET}, kernel limit {KERNEL_LIMIT})");
        assert!(
            n <= BUDGET,
            "{name}: the verifier walked {n} instructions, over our budget of {BUDGET} (the \
             kernel refuses more than {KERNEL_LIMIT}): move the new paths into a global \
             BPF function, or make them converge (docs/design.md, Verification)"
        );
    }
    assert_eq!(found, 1, "the balancer object holds one XDP program");
}
