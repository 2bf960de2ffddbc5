//! Loading the embedded XDP objects and attaching them to interfaces.

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::{
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    lookup,
    maps::{
        DEFAULT_MAX_CONNS, DEFAULT_MAX_VIPS, FLOW_CACHE_SETS, FLOW_CACHE_V6_SETS, MAP_CONNS,
        MAP_CONNS_V4, MAP_FLOW_CACHE, MAP_FLOW_CACHE_V6, MAP_LOOKUP, MAP_VIP_FLOW_LIMITS,
        MAP_VIP_FLOW_WINDOW, MAP_VIP_LIMITED,
    },
};

/// The balancer object (`lb-ebpf/src/bin/balancer`), built by build.rs.
pub static BALANCER_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-balancer"));
/// The backend decap object.
pub static DECAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Baseline programs: `xlb_pass`, `xlb_drop`, `xlb_tx`.
pub static BASELINE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-baseline"));

/// Program names inside the objects.
pub const BALANCER_PROG: &str = "xlb_balancer";
/// See [`BALANCER_PROG`].
pub const DECAP_PROG: &str = "xlb_decap";
/// The decap object's TC egress program (`xlb decap --clamp-mss`).
pub const MSS_CLAMP_PROG: &str = "xlb_mss_clamp";

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// VIPs that can have a lookup table (each owns two tables of `MAX_TABLE_SIZE` slots,
    /// 256 KiB).
    pub max_vips: u32,
    /// Connection-table entries, per address family.
    pub max_conns: u32,
    /// The per-CPU flow cache in front of the connection tables (see docs/design.md):
    /// `FLOW_CACHE_SETS` × 64 + `FLOW_CACHE_V6_SETS` × 128 bytes (512 KiB) per possible
    /// CPU. Off: both cache maps get only their unused entry 0, so every lookup misses and
    /// known flows go to the tables directly.
    pub flow_cache: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_vips: DEFAULT_MAX_VIPS,
            max_conns: DEFAULT_MAX_CONNS,
            flow_cache: true,
        }
    }
}

/// Loads the balancer with the given map sizes and loads its program into the kernel
/// (verifier included), without attaching it anywhere.
pub fn load_balancer(opts: LoadOptions) -> Result<Ebpf> {
    load_balancer_object(BALANCER_OBJ, opts)
}

/// [`load_balancer`] with some maps opened from pins rather than created (each created
/// and pinned there if the pin does not exist yet): `(map name, pin path)`.
pub fn load_balancer_pinned(opts: LoadOptions, pins: &[(&str, PathBuf)]) -> Result<Ebpf> {
    load_balancer_with(BALANCER_OBJ, opts, pins)
}

/// [`load_balancer`] for another build of the balancer object (the bench compares builds).
pub fn load_balancer_object(object: &[u8], opts: LoadOptions) -> Result<Ebpf> {
    load_balancer_with(object, opts, &[])
}

fn load_balancer_with(object: &[u8], opts: LoadOptions, pins: &[(&str, PathBuf)]) -> Result<Ebpf> {
    let lookup_entries = opts
        .max_vips
        .checked_mul(2 * lookup::ENTRIES_PER_TABLE)
        .context("max_vips too large: the lookup tables would exceed 4 G entries")?;
    // One part of the flow cache per possible CPU (the program indexes it by CPU number),
    // after an unused entry 0: one entry alone turns the cache off.
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))?;
    let cache_sets = |per_cpu: u32| {
        if !opts.flow_cache {
            return Ok(1);
        }
        u32::try_from(cpus)
            .ok()
            .and_then(|c| c.checked_mul(per_cpu)?.checked_add(1))
            .context("too many CPUs for the flow cache")
    };
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_LOOKUP, lookup_entries)
        .map_max_entries(MAP_VIP_FLOW_LIMITS, opts.max_vips)
        .map_max_entries(MAP_VIP_FLOW_WINDOW, opts.max_vips)
        .map_max_entries(MAP_VIP_LIMITED, opts.max_vips)
        .map_max_entries(MAP_CONNS, opts.max_conns)
        .map_max_entries(MAP_CONNS_V4, opts.max_conns)
        .map_max_entries(MAP_FLOW_CACHE, cache_sets(FLOW_CACHE_SETS)?)
        .map_max_entries(MAP_FLOW_CACHE_V6, cache_sets(FLOW_CACHE_V6_SETS)?);
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(object)
        .context("loading the balancer object (are you root, with bpffs and BTF?)")?;
    load_program(&mut ebpf, BALANCER_PROG)?;
    Ok(ebpf)
}

/// Loads the decap object and its program; its aya-log messages above `level` are
/// filtered out in the kernel (they cost nothing then).
pub fn load_decap_logging(level: log::LevelFilter) -> Result<Ebpf> {
    // aya-log's levels: error 1 … trace 5; `log` numbers them the same way (off = 0).
    let kernel_level = level as usize as u8;
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &kernel_level, true)
        .load(DECAP_OBJ)
        .context("loading the decap object")?;
    load_program(&mut ebpf, DECAP_PROG)?;
    Ok(ebpf)
}

/// Loads the decap object with its log messages off.
pub fn load_decap() -> Result<Ebpf> {
    load_decap_logging(log::LevelFilter::Off)
}

/// Forwards a loaded object's aya-log records to the `log` crate until the task is dropped.
pub fn spawn_bpf_logger(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>> {
    let logger = aya_log::EbpfLogger::init(ebpf).context("starting the BPF logger")?;
    // SAFETY: the logger owns the ring buffer's fd and lives inside the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .context("watching the BPF log buffer")?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Loads the baseline object and the named program (`xlb_pass`, `xlb_drop`, `xlb_tx`).
pub fn load_baseline(prog: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(BASELINE_OBJ).context("loading the baseline object")?;
    load_program(&mut ebpf, prog)?;
    Ok(ebpf)
}

/// Loads (verifies) one XDP program of a loaded object.
pub fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    xdp(ebpf, name)?
        .load()
        .with_context(|| format!("the kernel refused XDP program {name}"))
}

/// The XDP program `name` of `ebpf`.
pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("object has no program {name}"))?;
    prog.try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

/// The TC program `name` of `ebpf`, loaded (verified).
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a TC program"))?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("the kernel refused TC program {name}"))?;
    }
    Ok(prog)
}

/// Loads TC program `name` of `ebpf` and attaches it to `iface`'s egress, detached when
/// `ebpf` is dropped. Kernels from 6.6 on attach it as a TCX link; older ones need the
/// `clsact` qdisc, which is added if missing (and stays).
pub fn attach_egress(ebpf: &mut Ebpf, name: &str, iface: &str) -> Result<()> {
    use aya::util::KernelVersion;
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            // Already there is fine; anything else shows in the attach's error.
            log::debug!("adding the clsact qdisc to {iface}: {e}");
        }
    }
    classifier(ebpf, name)?
        .attach(iface, TcAttachType::Egress)
        .map(|_| ())
        .with_context(|| format!("attaching {name} to {iface}'s egress"))
}

/// Attaches program `name` of `ebpf` to interface `iface` in `mode`, with an error that says
/// what to do next.
pub fn attach(ebpf: &mut Ebpf, name: &str, iface: &str, mode: XdpMode) -> Result<()> {
    let ifindex = crate::netdev::ifindex(iface)?;
    let prog = xdp(ebpf, name)?;
    prog.attach_to_if_index(ifindex, mode)
        .map(|_| ())
        .map_err(|e| {
            let hint = match mode {
                XdpMode::Driver => "; the driver may not support native XDP: try --xdp-mode skb",
                _ => "",
            };
            anyhow::anyhow!("attaching {name} to {iface} in {mode:?} mode failed: {e}{hint}")
        })
}
