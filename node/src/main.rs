/// The process's allocator. Large jobs allocate and free many buffers of 1–40 MB per bucket from
/// several threads. glibc either fragments its per-thread heaps with them (resident memory creeps
/// up over a long job) or, with a fixed 1 MiB mmap threshold, maps and unmaps every one (each
/// bucket's buffers then cost fresh zeroed pages: page faults, `clear_page` and `munmap`, ~10–15 %
/// of the protocol's CPU in a profile at 10^7). mimalloc reuses freed segments across threads and
/// returns unused memory to the OS after a short delay, keeping resident memory bounded by the
/// working set.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    consort_node::cli::main()
}
