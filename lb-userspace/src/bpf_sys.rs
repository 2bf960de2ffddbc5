//! The few bpf(2) commands aya 0.14 does not offer (batch lookups and deletes, pins and
//! link info from a raw descriptor), as one checked syscall.

use std::io;

/// `enum bpf_cmd` values used here.
pub const BPF_OBJ_PIN: libc::c_long = 6;
/// See [`BPF_OBJ_PIN`].
pub const BPF_OBJ_GET: libc::c_long = 7;
/// See [`BPF_OBJ_PIN`].
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// See [`BPF_OBJ_PIN`].
pub const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// See [`BPF_OBJ_PIN`].
pub const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// bpf(`cmd`, `attr`): the syscall's non-negative result, or the kernel's error.
///
/// # Safety
/// `attr` must be the member of `union bpf_attr` that `cmd` reads, `#[repr(C)]`, and every
/// pointer in it must be valid for what the kernel reads and writes through it for `cmd`.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: guaranteed by the caller; the size passed is the struct's, and the kernel
    // zeroes what lies past it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
