//! Bounds-checked packet access.
//!
//! The verifier only accepts packet reads and writes it can prove lie before `data_end`,
//! so every access in the programs goes through [`ptr_at`] / [`ptr_at_mut`]: the check is
//! written once, next to the pointer arithmetic it guards.

use aya_ebpf::programs::XdpContext;

/// Largest offset we ever read at. Bounding offsets keeps the verifier's range tracking
/// simple when offsets are computed from header lengths (IHL, extension headers). A page:
/// no single-buffer XDP frame is longer (headroom and `skb_shared_info` take part of it),
/// so no header of a real frame lies beyond. At 1024, valid IPv6 packets whose extension
/// headers put the transport header past the first KiB were dropped as truncated (found
/// when the random extension chains of `fixtures_mutated_frames` grew to a few hundred
/// bytes a header).
pub const MAX_OFFSET: usize = 4096;

/// Reads at variable offsets should be at least two bytes wide: LLVM turns the check
/// `data + off + 1 <= data_end` into `data + off < data_end`, which the verifier does not
/// accept as proof for a one-byte read at `data + off` (a right-open range at offset 0).
///
/// Pointer to a `T` at `offset` bytes into the frame, or `None` when it would run past the
/// end of the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    ptr_at_mut::<T>(ctx, offset).map(|p| p.cast_const())
}

/// Mutable twin of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    if offset > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` at `offset` (unaligned), or `None` past the end.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the frame.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Writes a `T` at `offset` (unaligned); `None` if it does not fit.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: ptr_at_mut checked that the whole T lies inside the frame.
    ptr_at_mut::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}

/// Reads a halfword at an even `offset` with one load (`None` past the end). XDP frames
/// start 2-byte aligned (even headroom, even head adjustments), while [`read`] of a `u16`
/// compiles to two byte loads: BPF has no unaligned loads, so LLVM splits every
/// `read_unaligned`.
#[inline(always)]
pub fn read_u16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked the two bytes lie inside the frame; aligned as above.
    ptr_at::<u16>(ctx, offset).map(|p| unsafe { p.read() })
}

/// True when `len` bytes starting at `offset` lie inside the frame. A pointer comparison:
/// the verifier rejects arithmetic on `data_end`, so lengths are never computed from it.
/// An `offset` past [`MAX_OFFSET`] gives false whatever the frame; `len` has no such bound,
/// so put header offsets in `offset` and packet lengths in `len`.
#[inline(always)]
pub fn fits(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    offset <= MAX_OFFSET && ctx.data() + offset + len <= ctx.data_end()
}

/// Frame length in bytes, from the kernel (`bpf_xdp_get_buff_len`), for the rare paths that
/// resize the frame.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: helper call on our own context.
    unsafe { aya_ebpf::helpers::bpf_xdp_get_buff_len(ctx.ctx) as usize }
}
