//! Every other librbd C function, forwarded to the system librbd, so that
//! a client using functions this library does not implement (mirroring,
//! trash, groups, metadata, locks, ...) still loads and works on native
//! images.
//!
//! `build.rs` makes one exported naked function per line of
//! `forwarded.list` (generated from Ceph 16.2's header and the system
//! librbd's exports): it puts its index in `eax` and jumps to
//! [`trampoline`], which saves the argument registers (the six integer
//! ones and `xmm0`-`xmm7`; the stack is untouched, so stack arguments stay
//! in place), asks [`resolve`] for the target, restores the registers and
//! jumps there: the system librbd's function, or a stub returning
//! `-EOPNOTSUPP` where forwarding would be wrong (a ROW image handle, or a
//! completion or image handle the system librbd would have to own), or
//! `-ENOSYS` when the system librbd is missing.

use crate::handle::{lookup, Handle};
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a forwarded function's arguments are treated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// No image handle first: forwarded as is.
    Pass,
    /// An `rbd_image_t` first: forwarded for native images only.
    Image,
    /// Two `rbd_image_t` first: forwarded if neither is a ROW image.
    Image2,
    /// Needs a completion or image handle translated: refused.
    Refuse,
}

include!(concat!(env!("OUT_DIR"), "/forward_gen.rs"));

extern "C" fn eopnotsupp() -> i64 {
    -(libc::EOPNOTSUPP as i64)
}

extern "C" fn enosys() -> i64 {
    -(libc::ENOSYS as i64)
}

fn is_row(image: *mut c_void) -> bool {
    matches!(lookup(image), Ok(Handle::Row(_)))
}

/// Resolved system librbd addresses, by index (0: not yet looked up).
static ADDRS: [AtomicUsize; FORWARD.len()] = [const { AtomicUsize::new(0) }; FORWARD.len()];

/// The address to jump to for forwarded function `idx` called with
/// `first` and `second` as its first two arguments.
extern "C" fn resolve(idx: u32, first: *mut c_void, second: *mut c_void) -> usize {
    let Some((name, kind)) = FORWARD.get(idx as usize) else {
        return enosys as *const () as usize;
    };
    let refused = match kind {
        Kind::Pass => false,
        Kind::Refuse => true,
        Kind::Image => is_row(first),
        Kind::Image2 => is_row(first) || is_row(second),
    };
    if refused {
        return eopnotsupp as *const () as usize;
    }
    let slot = &ADDRS[idx as usize];
    let mut a = slot.load(Ordering::Acquire);
    if a == 0 {
        a = CStr::from_bytes_with_nul(name.as_bytes()).map_or(0, crate::native::lookup);
        if a == 0 {
            return enosys as *const () as usize;
        }
        slot.store(a, Ordering::Release);
    }
    a
}

/// The common body of the forwarders (see the module docs). Entered by a
/// jump with the caller's stack and arguments intact and the index in
/// `eax`.
#[unsafe(naked)]
unsafe extern "C" fn trampoline() {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "push rdx",
        "push rcx",
        "push r8",
        "push r9",
        // 8 xmm registers and 8 bytes to align the stack for the call.
        "sub rsp, 136",
        "movdqu [rsp], xmm0",
        "movdqu [rsp + 16], xmm1",
        "movdqu [rsp + 32], xmm2",
        "movdqu [rsp + 48], xmm3",
        "movdqu [rsp + 64], xmm4",
        "movdqu [rsp + 80], xmm5",
        "movdqu [rsp + 96], xmm6",
        "movdqu [rsp + 112], xmm7",
        "mov edi, eax",
        "mov rsi, [rsp + 176]",
        "mov rdx, [rsp + 168]",
        "call {resolve}",
        "movdqu xmm0, [rsp]",
        "movdqu xmm1, [rsp + 16]",
        "movdqu xmm2, [rsp + 32]",
        "movdqu xmm3, [rsp + 48]",
        "movdqu xmm4, [rsp + 64]",
        "movdqu xmm5, [rsp + 80]",
        "movdqu xmm6, [rsp + 96]",
        "movdqu xmm7, [rsp + 112]",
        "add rsp, 136",
        "pop r9",
        "pop r8",
        "pop rcx",
        "pop rdx",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        resolve = sym resolve,
    )
}
