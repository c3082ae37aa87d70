//! How the process hands memory back to the system, tuned for libtorch's
//! allocation pattern on the CPU.

/// Keeps freed memory in the process for reuse. libtorch allocates every
/// activation and gradient afresh, and glibc's defaults hand large blocks
/// back to the kernel: blocks over the mmap threshold (at most 32 MB) get a
/// new mapping each time, and a thread's arena drops a whole 64 MB heap as
/// soon as it is empty. Each time the kernel must zero the pages again. On
/// the CPU that was a third of the encoder's time, and two epochs of the
/// demo pre-training took 28 s (16 s of it CPU time in the kernel) instead
/// of 19 s. One arena grown by brk, never trimmed and without mappings,
/// reaches the run's peak once and the same pages serve every later batch;
/// small allocations still come from each thread's own cache.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes glibc's allocator parameters (under its
    // own lock); call this first in main so that every allocation sees them.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
