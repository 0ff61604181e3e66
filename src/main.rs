//! The `flowctl` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    flowctl::run()
}
