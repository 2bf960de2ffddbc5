//! `xlb run --state-dir DIR`: what outlives the daemon, pinned on bpffs, so that a restart
//! or an upgrade of the daemon neither stops the forwarding nor moves a flow.
//!
//! In `DIR`:
//! - `link`: the XDP attachment. It holds the program, and the program its maps, while no
//!   daemon runs; the next daemon swaps its own program in with one `bpf_link_update`
//!   (atomic: every packet meets the old program or the new one, never none).
//! - `CONNS`, `CONNS_V4`: the connection tables, which the next daemon's program opens
//!   rather than creating its own (aya's `map_pin_path`), if their shape still fits.
//! - `BACKENDS`: the backend slots the tables' entries point at (index, VIP tag, address,
//!   generation). A new daemon gives each (VIP, address) its old slot and generation, so its
//!   recorded flows stay; a slot given to another backend gets a newer generation, so flows
//!   recorded for the old holder are re-picked rather than sent to the wrong backend
//!   (`Core::inherit_slots`). A slot whose backend was inactive (down) starts its backend
//!   down in the new daemon too (`Core::inherit_down`). Without this file the tables cannot be interpreted and are
//!   started afresh.
//! - `STATS`, `BACKEND_STATS`: the counters by reason and the traffic per backend slot, so
//!   that they go on across a restart rather than start from zero (what scrapes them sees
//!   one counter, not a reset per upgrade). A backend's traffic follows its slot, like its
//!   flows; a slot given to another backend starts from zero. Kept only if their shape is
//!   this daemon's (and the per-slot traffic only with the slots).
//! - `VIP_RETIRED`: what each VIP's removed backends carried, the rest of a VIP's figures
//!   (a removed backend's slot is cleared). Kept only with the connection tables, which
//!   the slots' traffic goes on with; the new core adds the slots of backends that left the
//!   config meanwhile (`Core::retire_inherited_slots`), so a VIP's figures never go down.
//!
//! Everything else (VIPs, lookup tables, settings) the new daemon writes from its config
//! into maps of its own before the swap. Removing `DIR` detaches the balancer.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    net::IpAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
};
use lb_common::{
    addr::from_words,
    counters::Counters,
    flow::{FlowKey, FlowKeyV4},
    maps::{
        Backend, TrafficStats, VipKey, BACKEND_F_ACTIVE, MAP_BACKENDS, MAP_BACKEND_STATS,
        MAP_CONNS, MAP_CONNS_V4, MAP_STATS, MAP_VIP_RETIRED, MAX_BACKENDS, MAX_VIP_ENTRIES,
    },
};

use crate::bpf_sys::{bpf, BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, BPF_OBJ_PIN};

/// The XDP link's pin.
const LINK: &str = "link";
/// Where a starting daemon pins its backend slots until its program runs (no dot: bpffs
/// reserves dotted names).
const STAGED_BACKENDS: &str = "BACKENDS_next";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `BPF_LINK_TYPE_XDP`.
const BPF_LINK_TYPE_XDP: u32 = 6;

/// Where the balancer's state is pinned.
pub struct StateDir {
    path: PathBuf,
    /// The directory, open and locked (`flock`) while this daemon runs: a second daemon is
    /// refused before it touches anything.
    _lock: std::fs::File,
}

/// What a daemon found in the state directory.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Backend slots of the last daemon: index → (VIP tag, address, generation).
    pub slots: HashMap<u32, (u32, IpAddr, u32)>,
    /// Of those, the (VIP tag, address) pairs whose backend carried no flows when the last
    /// daemon stopped (down by its health check or its agent): they start down.
    pub down: std::collections::HashSet<(u32, IpAddr)>,
    /// The connection tables are the last daemon's (their flows are kept).
    pub tables: bool,
}

impl StateDir {
    /// Opens `path` (created if missing) for the balancer of interface `ifindex`: it must be
    /// on a bpf filesystem, and not hold another interface's balancer.
    pub fn open(path: &Path, ifindex: u32) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| {
            format!(
                "creating the state directory {} (on a bpf filesystem: mount -t bpf bpf \
                 /sys/fs/bpf)",
                path.display()
            )
        })?;
        let c = CString::new(path.as_os_str().as_bytes()).context("state directory path")?;
        // SAFETY: a zeroed statfs is a valid buffer; `c` is a NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("statfs {}", path.display()));
        }
        if st.f_type as i64 != BPF_FS_MAGIC {
            bail!(
                "the state directory {} is not on a bpf filesystem (mount one: \
                 mount -t bpf bpf /sys/fs/bpf)",
                path.display()
            );
        }
        let lock = std::fs::File::open(path)
            .with_context(|| format!("opening the state directory {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another xlb run uses the state directory {}",
                path.display()
            );
        }
        let dir = Self {
            path: path.to_path_buf(),
            _lock: lock,
        };
        // Before anything is loaded or written: a directory another interface's balancer
        // lives in is not ours to change.
        let link = dir.file(LINK);
        if link.exists() {
            let (_, on) = xdp_link_target(&obj_get(&link)?)?;
            if on != 0 && on != ifindex {
                bail!(
                    "{} holds the balancer of ifindex {on}, not of {ifindex}: use one state \
                     directory per interface",
                    path.display()
                );
            }
        }
        Ok(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads what the last daemon left, and removes what a daemon with `max_conns`
    /// entries per table cannot use: tables of another shape, or tables without the backend
    /// slots their entries point at. Call before loading the balancer.
    pub fn inherit(&self, max_conns: u32) -> Result<Inherited> {
        let mut out = Inherited::default();
        let backends = self.file(MAP_BACKENDS);
        if backends.exists() {
            match read_slots(&backends) {
                Ok((slots, down)) => (out.slots, out.down) = (slots, down),
                Err(e) => log::warn!("{}: {e:#}; not kept", backends.display()),
            }
        }
        type Fits = fn(&Path, &'static str, u32) -> Result<()>;
        let tables: [(&'static str, Fits); 2] = [
            (MAP_CONNS_V4, table_fits::<FlowKeyV4>),
            (MAP_CONNS, table_fits::<FlowKey>),
        ];
        let mut kept = 0;
        for (name, table_fits) in tables {
            let f = self.file(name);
            if !f.exists() {
                continue;
            }
            let fits = if out.slots.is_empty() {
                Err(anyhow::anyhow!("no backend slots to interpret it with"))
            } else {
                table_fits(&f, name, max_conns)
            };
            match fits {
                Ok(()) => kept += 1,
                Err(e) => {
                    log::warn!("{}: {e:#}; starting a new table", f.display());
                    std::fs::remove_file(&f)
                        .with_context(|| format!("removing {}", f.display()))?;
                }
            }
        }
        out.tables = kept > 0;
        let counters: [(&'static str, usize, u32, bool); 2] = [
            (MAP_STATS, std::mem::size_of::<Counters>(), 1, true),
            (
                MAP_BACKEND_STATS,
                std::mem::size_of::<TrafficStats>(),
                MAX_BACKENDS,
                !out.slots.is_empty(),
            ),
        ];
        for (name, value_size, entries, usable) in counters {
            let f = self.file(name);
            if !f.exists() {
                continue;
            }
            let fits = if usable {
                counters_fit(&f, value_size, entries)
            } else {
                Err(anyhow::anyhow!("no backend slots to interpret it with"))
            };
            if let Err(e) = fits {
                log::warn!("{}: {e:#}; counting from zero", f.display());
                std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            }
        }
        let retired = self.file(MAP_VIP_RETIRED);
        if retired.exists() {
            // The slots' traffic goes on only where the core takes the slots back, which it
            // does only with the tables: without them a VIP's figures start from zero, and
            // so must its removed backends' share.
            let fits = if out.tables {
                record_fits(&retired)
            } else {
                Err(anyhow::anyhow!("the connection tables were not kept"))
            };
            if let Err(e) = fits {
                log::warn!("{}: {e:#}; counting from zero", retired.display());
                std::fs::remove_file(&retired)
                    .with_context(|| format!("removing {}", retired.display()))?;
            }
        }
        Ok(out)
    }

    /// The pin paths the balancer's connection tables and counters are loaded with.
    pub fn map_pins(&self) -> [(&'static str, PathBuf); 5] {
        [
            MAP_CONNS_V4,
            MAP_CONNS,
            MAP_STATS,
            MAP_BACKEND_STATS,
            MAP_VIP_RETIRED,
        ]
        .map(|m| (m, self.file(m)))
    }

    /// Attaches `prog` to `ifindex`: in place of the last daemon's program if its link is
    /// pinned here (atomically), else afresh; then pins the link. Refuses a directory whose
    /// link is another interface's. Whether a program was replaced.
    pub fn attach(&self, prog: &mut Xdp, ifindex: u32, mode: XdpMode) -> Result<bool> {
        let pin = self.file(LINK);
        let mut replaced = false;
        let id = match take_over(&pin, ifindex)? {
            Some((link, spare)) => {
                replaced = true;
                match prog.attach_to_link(link) {
                    Ok(id) => id,
                    Err(e) => {
                        // Pinned again through the spare descriptor: the last daemon's
                        // program keeps forwarding, and a later daemon can still take over.
                        if let Err(pin_err) = obj_pin(&spare, &pin) {
                            log::error!("re-pinning the last daemon's link: {pin_err:#}");
                        }
                        return Err(e).context("replacing the last daemon's program");
                    }
                }
            }
            None => prog
                .attach_to_if_index(ifindex, mode)
                .context("attaching the balancer")?,
        };
        let link = prog.take_link(id).context("taking the XDP link")?;
        let fd_link = FdLink::try_from(link).context(
            "the kernel attached XDP without a BPF link (netlink): no pinning, so \
             --state-dir needs a kernel with XDP links (5.9+)",
        )?;
        fd_link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        Ok(replaced)
    }

    /// Pins the new daemon's backend slots (its `BACKENDS` map) beside the last daemon's,
    /// which stay in force until [`StateDir::commit_backends`]: a daemon that fails before
    /// its program runs leaves the last one's state as it was.
    pub fn stage_backends(&self, backends: &aya::maps::Map) -> Result<()> {
        let f = self.file(STAGED_BACKENDS);
        let _ = std::fs::remove_file(&f);
        backends
            .pin(&f)
            .with_context(|| format!("pinning the backend slots at {}", f.display()))
    }

    /// Puts the staged backend slots in place of the last daemon's, once the new program
    /// runs (one rename).
    pub fn commit_backends(&self) -> Result<()> {
        std::fs::rename(self.file(STAGED_BACKENDS), self.file(MAP_BACKENDS))
            .context("putting the new backend slots in place")
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last daemon's link at `pin`, if it is an XDP link on `ifindex`, and a spare
/// descriptor of it; the pin is removed (the caller pins the link again once it holds the
/// new program, or through the spare if that fails: without a pin or a descriptor the
/// kernel would detach it).
fn take_over(pin: &Path, ifindex: u32) -> Result<Option<(XdpLink, OwnedFd)>> {
    if !pin.exists() {
        return Ok(None);
    }
    let spare = obj_get(pin)?;
    let (kind, on) = xdp_link_target(&spare)?;
    if kind != BPF_LINK_TYPE_XDP {
        bail!("{} is not an XDP link (link type {kind})", pin.display());
    }
    if on == 0 {
        // Its interface is gone (a link outlives its device, detached): nothing to take
        // over, and nothing forwards through it.
        log::warn!("{}: its interface is gone; attaching afresh", pin.display());
        std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
        return Ok(None);
    }
    if on != ifindex {
        // Another interface's balancer: removing its pin would detach it.
        bail!(
            "{} holds the balancer of ifindex {on}, not of {ifindex}: use one state \
             directory per interface",
            pin.display()
        );
    }
    let link = PinnedLink::from_pin(pin)
        .context("opening the pinned link")?
        .unpin()
        .context("unpinning the link")?;
    let link = XdpLink::try_from(link).context("the pinned link is not an XDP link")?;
    Ok(Some((link, spare)))
}

/// Type and XDP ifindex of the link `fd` (`bpf_link_info`: type at 0, the `xdp.ifindex`
/// member of its union at 16; 0 once the interface is gone).
fn xdp_link_target(fd: &OwnedFd) -> Result<(u32, u32)> {
    let mut info = [0u64; 8];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` is the info member of `union bpf_attr`; the kernel writes at most
    // `info_len` bytes into `info`.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.context("reading the pinned link's info")?;
    Ok((info[0] as u32, info[2] as u32))
}

/// The `obj` member of `union bpf_attr` (`BPF_OBJ_PIN`, `BPF_OBJ_GET`).
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `BPF_OBJ_PIN` / `BPF_OBJ_GET` on `pin` (and `fd` for a pin); the syscall's result.
fn obj_call(cmd: libc::c_long, pin: &Path, fd: u32) -> Result<libc::c_long> {
    let c = CString::new(pin.as_os_str().as_bytes()).context("pin path")?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd,
        file_flags: 0,
    };
    // SAFETY: `attr` is the obj member of `union bpf_attr`; `c` outlives the call.
    unsafe { bpf(cmd, &mut attr) }.with_context(|| format!("{}", pin.display()))
}

/// A descriptor of the BPF object pinned at `pin`.
fn obj_get(pin: &Path) -> Result<OwnedFd> {
    let fd = obj_call(BPF_OBJ_GET, pin, 0)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the BPF object `fd` at `pin`.
fn obj_pin(fd: &OwnedFd, pin: &Path) -> Result<()> {
    obj_call(BPF_OBJ_PIN, pin, fd.as_raw_fd() as u32).map(|_| ())
}

/// Whether the table pinned at `f` (named `name`, keys `K`) is one this daemon's program
/// can use as its own.
fn table_fits<K>(f: &Path, name: &'static str, max_conns: u32) -> Result<()> {
    let map = MapData::from_pin(f).context("opening")?;
    let info = crate::conntable::check_layout::<K>(&map, name)?;
    if !matches!(info.map_type(), Ok(aya::maps::MapType::LruHash)) {
        bail!("not an LRU hash map");
    }
    if info.max_entries() != max_conns {
        bail!(
            "{} entries, this daemon's --max-conns is {max_conns}",
            info.max_entries()
        );
    }
    Ok(())
}

/// Whether the per-CPU counter array pinned at `f` has this daemon's shape.
fn counters_fit(f: &Path, value_size: usize, entries: u32) -> Result<()> {
    let map = MapData::from_pin(f).context("opening")?;
    let info = map.info().context("reading its info")?;
    if !matches!(info.map_type(), Ok(aya::maps::MapType::PerCpuArray)) {
        bail!("not a per-CPU array");
    }
    if info.value_size() as usize != value_size || info.max_entries() != entries {
        bail!(
            "{} entries of {} bytes, this daemon's are {entries} of {value_size}",
            info.max_entries(),
            info.value_size()
        );
    }
    Ok(())
}

/// Whether the per-VIP record of removed backends' traffic pinned at `f` has this daemon's
/// shape.
fn record_fits(f: &Path) -> Result<()> {
    let map = MapData::from_pin(f).context("opening")?;
    let info = map.info().context("reading its info")?;
    if !matches!(info.map_type(), Ok(aya::maps::MapType::Hash)) {
        bail!("not a hash map");
    }
    let (key, value) = (
        std::mem::size_of::<VipKey>(),
        std::mem::size_of::<TrafficStats>(),
    );
    if info.key_size() as usize != key
        || info.value_size() as usize != value
        || info.max_entries() != MAX_VIP_ENTRIES
    {
        bail!(
            "{} entries, keys of {} and values of {} bytes; this daemon's are {MAX_VIP_ENTRIES} of {key} and {value}",
            info.max_entries(),
            info.key_size(),
            info.value_size()
        );
    }
    Ok(())
}

/// The backend slots pinned at `f`, every slot that was ever given out: index → (VIP tag,
/// address, generation).
type Slots = (
    HashMap<u32, (u32, IpAddr, u32)>,
    std::collections::HashSet<(u32, IpAddr)>,
);

fn read_slots(f: &Path) -> Result<Slots> {
    let map = MapData::from_pin(f).context("opening")?;
    let info = map.info().context("reading its info")?;
    if info.value_size() as usize != std::mem::size_of::<Backend>() {
        bail!("value size {} is not this daemon's", info.value_size());
    }
    let slots: Array<MapData, Backend> = Array::try_from(aya::maps::Map::Array(map))
        .context("the pinned backend slots are not an array")?;
    let mut out = HashMap::new();
    let mut down = std::collections::HashSet::new();
    for idx in 1..slots.len() {
        let b = slots.get(&idx, 0).context("reading a slot")?;
        if b.generation == 0 {
            continue;
        }
        if let Some(addr) = from_words(b.addr, b.family) {
            out.insert(idx, (b.vip_tag, addr, b.generation));
            if b.flags & BACKEND_F_ACTIVE == 0 {
                down.insert((b.vip_tag, addr));
            }
        }
    }
    Ok((out, down))
}
