//! The `flowctl` binary: everything lives in the library.

/// mimalloc: the store and the pipeline allocate many small, short-lived
/// buffers across threads, where glibc malloc costs up to a third of the CPU
/// time (measured by benches/store.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    flowctl::run()
}
