//! Allocator tuning for training loops.

use libmimalloc_sys as mi;

/// mimalloc's `mi_option_purge_delay`: index 15 of `mi_option_e` both in the mimalloc v3 that
/// libmimalloc-sys 0.1.49 builds by default and in its v2 (the crate exports v2's constants
/// only, and not this one). The test below fails if it names another option.
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the OS. A training step frees and
/// re-allocates the same large buffers (activations, im2col columns, gradients) every
/// iteration; returning them makes the kernel zero fresh pages on every step (a quarter of
/// the CPU time of a ResNeXt step, measured with perf). The process keeps its peak instead.
/// Call it at the start of `main` in a binary whose global allocator is mimalloc.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table.
    unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's resident memory, in KiB, from /proc/self/status.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
    }

    /// Freed memory stays in the process however long it waits and whatever mimalloc
    /// collects: a buffer freed, then past the purge delay (1 s in mimalloc v3, 10 ms in v2) and a
    /// collection, still counts in the resident set. With the option unset (or the wrong
    /// option set) mimalloc decommits it and the resident set drops by the buffer's size.
    #[test]
    #[cfg(target_os = "linux")]
    fn freed_memory_stays_resident_past_the_purge_delay() {
        keep_freed_memory();
        // SAFETY: mi_option_get reads the option table.
        assert_eq!(unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) }, -1);
        const BYTES: usize = 256 << 20;
        // SAFETY: mi_malloc's block is BYTES long (checked non-null); freed once, not used after.
        unsafe {
            let p = mi::mi_malloc(BYTES).cast::<u8>();
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 1, BYTES);
            let touched = resident_kib();
            mi::mi_free(p.cast());
            std::thread::sleep(std::time::Duration::from_millis(1500));
            mi::mi_collect(false);
            let after = resident_kib();
            assert!(
                after + (BYTES as u64 >> 10) / 2 > touched,
                "freed memory went back to the OS: resident {touched} KiB -> {after} KiB"
            );
        }
    }
}
