/// The process's allocator. Large jobs allocate and free many buffers of 1–40 MB per bucket from
/// several threads. glibc either fragments its per-thread heaps with them (resident memory creeps
/// up over a long job) or, with a fixed 1 MiB mmap threshold, maps and unmaps every one (each
/// bucket's buffers then cost fresh zeroed pages: page faults, `clear_page` and `munmap`, ~10–15 %
/// of the protocol's CPU in a profile at 10^7). mimalloc reuses freed segments across threads and
/// returns unused memory to the OS after a short delay, keeping resident memory bounded by the
/// working set.
///
/// Built with `no_thp`: mimalloc otherwise advises transparent huge pages on all of its memory
/// (`madvise(MADV_HUGEPAGE)` on every arena), so under the common THP `madvise` setting every
/// large buffer was backed by 2 MiB pages. On the VMs we measure on, the first touch of a huge
/// page costs several times that of 4 KiB pages (0.9–2.3 s per GiB against ~0.4 s), and
/// a scorecard train job first-touches 15–18 GiB. Buffers that gain from huge pages (random
/// reads: the VOLE's, RR22's buckets, SecureBoost's kept leaves) still ask for them themselves
/// (`consort_protocols::mem::zeroed_blocks`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    consort_node::cli::main()
}
