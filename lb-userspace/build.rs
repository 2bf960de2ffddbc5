//! Builds the XDP objects from `lb-ebpf` and leaves them in OUT_DIR, so `xlb` embeds them
//! and is one self-contained binary.
//!
//! The BPF target needs Debian's rustc (prebuilt `core` for bpfel-unknown-none) and
//! bpf-linker; `cargo xtask setup` installs both. Without them this prints one line saying
//! so instead of a wall of linker errors.

use std::{
    env,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const OBJECTS: &[&str] = &["xlb-balancer", "xlb-decap", "xlb-baseline"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("lb-userspace lives inside the workspace")
        .to_path_buf();
    for dir in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=XLB_BPF_RUSTC");
    let rustc = env::var("XLB_BPF_RUSTC").unwrap_or_else(|_| BPF_RUSTC.to_string());
    let missing = missing_tools(&rustc);
    if !missing.is_empty() {
        fail(&format!(
            "cannot build the XDP programs: {} missing; run `cargo xtask setup` (as root)",
            missing.join(" and ")
        ));
    }

    let target_dir = root.join("target").join("ebpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("lb-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's settings are for the host; none of them may leak in here.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env("PATH", path_with_cargo_bin())
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        );
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => fail(&format!("cannot run cargo for the XDP programs: {e}")),
    };
    if !status.success() {
        fail("building lb-ebpf for bpfel-unknown-none failed (errors above); `cargo xtask build-ebpf` shows them alone");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for obj in OBJECTS {
        let from = target_dir.join("bpfel-unknown-none/release").join(obj);
        if let Err(e) = std::fs::copy(&from, out.join(obj)) {
            fail(&format!("{} was not built: {e}", from.display()));
        }
    }
}

fn missing_tools(rustc: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(rustc).exists() {
        missing.push(format!(
            "{rustc} (Debian rustc-web with libstd-rust-web-dev-bpf)"
        ));
    }
    let linker_found = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").exists()))
        .unwrap_or(false)
        || env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cargo/bin/bpf-linker").exists())
            .unwrap_or(false);
    if !linker_found {
        missing.push("bpf-linker".into());
    }
    missing
}

/// PATH plus ~/.cargo/bin, where `cargo install` puts bpf-linker (rustc looks it up by name).
fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn fail(msg: &str) -> ! {
    println!("cargo::error={msg}");
    eprintln!("error: {msg}");
    exit(1);
}
