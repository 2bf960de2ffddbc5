//! `cargo xtask setup`: the eBPF toolchain and the packages tests and demo use.
//!
//! Checks first (one `dpkg-query`, one `bpf-linker --version`), installs only what is
//! missing, so a machine that has everything is done in about a second.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian's rustc that ships a prebuilt `core` for bpfel-unknown-none.
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages: the BPF compiler and LLVM for bpf-linker, then what tests, demo and
/// bench run (iproute2, ethtool, curl, Python for the backends' web servers, wrk, nginx,
/// HAProxy, nftables, bpftool, matplotlib for the bench's plots, openssl for the `https`
/// checks' test certificates, ping for the VIPs' echo answers).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "curl",
    "python3",
    "wrk",
    "nginx-light",
    "haproxy",
    "nftables",
    "bpftool",
    "python3-matplotlib",
    "openssl",
    "iputils-ping",
];

/// Installs what is missing.
pub fn setup() -> Result<()> {
    preflight()?;
    let missing = missing_packages()?;
    if !missing.is_empty() {
        println!("xtask setup: installing {}", missing.join(" "));
        run("apt-get", &["update", "-qq"], &[])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing.iter().map(String::as_str));
        run("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])?;
    }
    if !bpf_linker_ok() {
        println!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
            &[
                ("LLVM_PREFIX", "/usr/lib/llvm-22"),
                ("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
                ("PATH", &path),
            ],
        )?;
    }
    mount_bpffs()?;
    Ok(())
}

/// Fails with one line when the toolchain is not there (for build-only tasks).
pub fn require_toolchain() -> Result<()> {
    if !std::path::Path::new(BPF_RUSTC).exists() || !bpf_linker_ok() {
        bail!("the eBPF toolchain is missing: run `cargo xtask setup` (as root)");
    }
    Ok(())
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc_geteuid() } != 0 {
        bail!("setup installs packages and loads BPF programs: run it as root (e.g. `sudo -E cargo xtask setup`)");
    }
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
        || Command::new("apt-get").arg("--version").output().is_err()
    {
        bail!("setup needs Debian's dpkg and apt-get (Debian 12); install the packages listed in xtask/src/setup.rs by hand");
    }
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn missing_packages() -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" installed"))
        .filter_map(|l| l.split(' ').next())
        .collect();
    Ok(PACKAGES
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| (*p).to_string())
        .collect())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn mount_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])
}

fn run(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
