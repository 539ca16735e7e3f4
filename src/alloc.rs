//! Allocator tuning for training loops.

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in the mimalloc v2 that
/// libmimalloc-sys 0.1.49 builds; the crate does not export it as a constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the OS. A training step frees and
/// re-allocates the same large buffers (activations, im2col columns, gradients) every
/// iteration; returning them makes the kernel zero fresh pages on every step (a quarter of
/// the CPU time of a ResNeXt step, measured with perf). The process keeps its peak instead.
/// Call it at the start of `main` in a binary whose global allocator is mimalloc.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
