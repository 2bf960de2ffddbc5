//! Developer tasks: `cargo xtask setup | build-ebpf | test | demo | bench`.
//!
//! Every task that needs the toolchain runs `setup` first, which is idempotent and takes
//! seconds when everything is present, so a fresh Debian 12 machine needs nothing else.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and the packages the tests need (idempotent; root).
    Setup,
    /// Build the XDP objects alone (shows compiler errors without the host build around them).
    BuildEbpf,
    /// Run every test: unit, BPF test_run fixtures, network-namespace end-to-end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the load-balancing demo on a built-in virtual network.
    Demo,
    /// Measure xlb against baselines and peers; writes target/bench/report.{json,md}.
    Bench {
        /// Short run for CI (each part briefly).
        #[arg(long)]
        quick: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse().task) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            setup::require_toolchain()?;
            build_ebpf(&root)
        }
        Task::Test { args } => {
            setup::setup()?;
            // The end-to-end tests run the xlb binary: build it first so its build errors
            // show here, not as a failing test.
            cargo(&root, &["build", "-p", "lb-userspace", "--bin", "xlb"])?;
            // lb-ebpf only builds for the BPF target; build.rs embeds it in xlb and the fixtures test it.
            let mut test_args: Vec<&str> = vec!["test", "--workspace", "--exclude", "lb-ebpf"];
            test_args.extend(args.iter().map(String::as_str));
            cargo(&root, &test_args)
        }
        Task::Demo => {
            setup::setup()?;
            cargo(&root, &["build", "-p", "lb-userspace", "--bin", "xlb"])?;
            cargo(
                &root,
                &["run", "--quiet", "-p", "xlb-tests", "--bin", "xlb-demo"],
            )
        }
        Task::Bench { quick } => {
            setup::setup()?;
            cargo(
                &root,
                &["build", "--release", "-p", "lb-userspace", "--bin", "xlb"],
            )?;
            let mut args = vec!["run", "--release", "--quiet", "-p", "xlb-bench", "--"];
            if quick {
                args.push("--quick");
            }
            cargo(&root, &args)
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Builds lb-ebpf for bpfel-unknown-none exactly as lb-userspace/build.rs does.
fn build_ebpf(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("lb-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--bins",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf"))
        .env("RUSTC", setup::BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo for lb-ebpf")?;
    if !status.success() {
        bail!("building lb-ebpf failed");
    }
    println!(
        "XDP objects in {}",
        root.join("target/ebpf/bpfel-unknown-none/release")
            .display()
    );
    Ok(())
}
