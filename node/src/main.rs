fn main() -> std::process::ExitCode {
    return_freed_memory();
    consort_node::cli::main()
}

/// Large jobs allocate and free many buffers of 1–40 MB per bucket from several threads. glibc
/// raises its mmap threshold dynamically (up to 32 MB) after such frees, after which these
/// buffers come from per-thread heaps and fragment them: resident memory then creeps up over a
/// long job. A fixed threshold keeps every buffer of 1 MiB or more in its own mapping, returned to
/// the OS when freed.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
