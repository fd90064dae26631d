//! The allocator of the binaries: jemalloc, with a small configuration.
//!
//! A server's memory moves between threads all the time: a connection's
//! task allocates a frame that the gathering's task frees, and a gathering
//! allocates the forwards its connections' tasks free. glibc's allocator
//! returns each such chunk to the arena it came from under that arena's
//! lock once the freeing thread's small cache is full, which at 100 × 4
//! with one op in flight cost 0.3–0.4 `futex` calls per op; its fastbins,
//! which would avoid some of that, also stall for tens of milliseconds when
//! a hundred thousand gatherings disperse per second and their chunks are
//! merged at once (BENCHMARKS.md, "Tried and not kept"). jemalloc's thread
//! caches take frees of any origin and hand them back in batches: about
//! 0.02 `futex` calls per op, 11–63 % more forwards per second with 16 ops
//! in flight per client, less CPU per forward in most runs with one, and
//! after a million gatherings disperse it returns their memory to the
//! system (glibc kept it).
//!
//! Configured for a two-core server holding many small idle things:
//! - `narenas:1`: one arena, not four per core. Each arena keeps its own
//!   metadata and partly filled slabs; the arena's lock is taken only when
//!   a thread cache refills or flushes, a batch at a time.
//! - `tcache_max:1024,tcache_nslots_small_min:8,tcache_nslots_small_max:16`:
//!   a thread caches 8 to 16 free objects of each size up to 1 KiB, and
//!   none larger (by default up to 200 of each size up to 32 KiB). With the
//!   defaults, what every thread's cache held made ten thousand idle
//!   gatherings in one process take about 8 MiB more than with glibc; with
//!   these, about as much as with glibc, and the small frames and channel
//!   nodes that cross threads still stay in the caches.

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this C string at its first allocation
/// (the crate prefixes jemalloc's symbols with `_rjem_`); the environment's
/// `_RJEM_MALLOC_CONF` can still override them.
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 79] =
    b"narenas:1,tcache_max:1024,tcache_nslots_small_min:8,tcache_nslots_small_max:16\0";
