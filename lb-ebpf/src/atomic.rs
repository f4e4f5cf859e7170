//! The two atomic operations the program needs. Rust's BPF target has no atomic
//! read-modify-write in `core::sync::atomic`, but the BPF ISA (v3) does, and the intrinsics
//! lower to it (`lock xadd` / `atomic_fetch_or`).

#[cfg(target_arch = "bpf")]
use core::intrinsics::{
    AtomicOrdering::{Relaxed, SeqCst},
    atomic_or, atomic_xadd,
};

/// `*ptr += value`, returning the old value.
#[inline(always)]
pub fn fetch_add(ptr: *mut u64, value: u64) -> u64 {
    // SeqCst, not Relaxed: LLVM lowers a relaxed 64-bit add to the legacy `lock +=`, which
    // does not return the old value even when the code uses it (LLVM 22, BPFInstrInfo.td).
    #[cfg(target_arch = "bpf")]
    return unsafe { atomic_xadd::<u64, u64, { SeqCst }>(ptr, value) };
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(ptr) }
        .fetch_add(value, core::sync::atomic::Ordering::Relaxed)
}

/// `*ptr |= value`.
#[inline(always)]
pub fn fetch_or(ptr: *mut u64, value: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        atomic_or::<u64, u64, { Relaxed }>(ptr, value);
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(ptr) }
        .fetch_or(value, core::sync::atomic::Ordering::Relaxed);
}
