//! How the process asks the allocator to give memory back.
//!
//! glibc's malloc serves requests above a threshold with their own `mmap`,
//! returned to the system on `free`, but by default it *raises* that
//! threshold each time such a block is freed (up to 32 MiB). A server
//! whose large buffers come and go — a slow consumer's queue, a big API
//! body, a replayed history — then serves the next ones from its heaps,
//! which keep the pages after the buffers are freed: the resident size
//! steps up after a burst and never comes back down. Fixing the threshold
//! keeps large buffers on their own mappings, so memory a burst needed
//! leaves with the burst. Smaller allocations, the hot path's, are
//! unaffected.

/// Buffers at least this large get their own mapping, returned on free.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Free heap space above this is given back to the system at once.
pub const TRIM_THRESHOLD: usize = 1024 * 1024;

/// Sets the allocator's thresholds (glibc; elsewhere nothing to do).
/// Call once, before the threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is called before
    // any other thread exists, and the values are within glibc's bounds
    // (the mmap threshold's maximum is 32 MiB on 64-bit).
    unsafe {
        let _ = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        let _ = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}
