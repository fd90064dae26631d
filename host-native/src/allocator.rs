//! How the server asks glibc's allocator to behave.
//!
//! glibc keeps freed chunks of up to 128 bytes in "fastbins" without merging
//! them, and merges all of them at once (`malloc_consolidate`) the next time
//! a large chunk is freed or requested. When a hundred thousand gatherings
//! disperse per second, each freeing a dozen small allocations (its id,
//! status, mailbox, map nodes), hundreds of thousands of chunks pile up
//! between two merges, and the merge that finally comes stalls the thread
//! that triggered it for tens of milliseconds, with whatever lock it holds:
//! a million gatherings falling due evenly over 10 s were dispersed with a
//! p99 lateness of 29.7 ms (max 62 ms) with glibc's defaults, and of 0.43
//! to 1.76 ms over eleven cycles with fastbins off (BENCHMARKS.md, section
//! 2). Without fastbins each free merges at once, a
//! small constant cost, and small chunks are still cached per thread.

/// Turns glibc's fastbins off (see the module's documentation). Call it
/// first thing in `main`, before other threads start; a no-op on other
/// allocators and platforms.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator, under its own
    // lock; M_MXFAST = 0 is a documented value.
    unsafe {
        libc::mallopt(libc::M_MXFAST, 0);
    }
}
