fn main() -> std::process::ExitCode {
    consort_node::cli::main()
}
