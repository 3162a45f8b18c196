/// The process's allocator. Large jobs allocate and free many buffers of 1–40 MB per bucket from
/// several threads. glibc either fragments its per-thread heaps with them (resident memory creeps
/// up over a long job) or, with a fixed 1 MiB mmap threshold, maps and unmaps every one (each
/// bucket's buffers then cost fresh zeroed pages: page faults, `clear_page` and `munmap`, ~10–15 %
/// of the protocol's CPU in a profile at 10^7). mimalloc reuses freed segments across threads and
/// returns unused memory to the OS after a delay (below), keeping resident memory bounded by the
/// working set.
///
/// Built with `no_thp`: mimalloc otherwise advises transparent huge pages on all of its memory
/// (`madvise(MADV_HUGEPAGE)` on every arena), so under the common THP `madvise` setting every
/// large buffer was backed by 2 MiB pages. On the VMs we measure on, the first touch of a huge
/// page costs several times that of 4 KiB pages (0.9–2.3 s per GiB against ~0.4 s), and
/// a scorecard train job first-touches 15–18 GiB. Buffers that gain from huge pages (random
/// reads: the VOLE's, RR22's buckets, SecureBoost's kept leaves) still ask for them themselves
/// (`consort_protocols::mem::zeroed_blocks`).
///
/// Freed memory goes back to the OS after 1 min (10 min for whole arenas) instead of mimalloc's
/// 10 ms (100 ms): [`PURGE_DELAY_MS`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (milliseconds; arenas wait 10 times as long). With the default
/// 10 ms, the scorecard train job (10^5 rows × (30 + 300) features) returned buffers to the OS
/// between uses and faulted them in again (the kernel's `clear_page` was most of the setup's CPU
/// on our VMs). Setup + one epoch, train stage, runs interleaved (stop 38):
///
/// | purge delay | page faults | seconds |
/// |---|---|---|
/// | 10 ms (default) | 4.2 million | 41.4, 41.5, 40.7, 38.6, 37.6, 40.6, 39.8 |
/// | 10 s | 3.6 million | 40.0, 37.6, 40.3, 37.6, 38.5, 36.5, 36.6 |
/// | 1 min | 3.2 million | 36.4, 34.5, 35.6 |
/// | off (−1) | 3.2 million | 38.0, 36.9, 38.6, 33.6, 35.4, 35.5 |
///
/// Off would keep a node's peak memory after a large job for good; 1 min returns it within
/// minutes. The standard `MIMALLOC_PURGE_DELAY` variable, when set, still decides.
const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

/// mimalloc v3's index of `mi_option_purge_delay` (`mimalloc.h`, `mi_option_e`; the sys crate
/// names only its v2 options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain option store, before any thread of ours exists (mimalloc reads the
        // option when it schedules a purge).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    consort_node::cli::main()
}
