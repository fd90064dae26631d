//! `gathering-server`: the tournament's server; see `--help`.

#[cfg(feature = "jemalloc")]
mod allocator;

use std::process::ExitCode;

use gathering_core::tournament::Tournament;

fn main() -> ExitCode {
    gathering_native::cli::main::<Tournament>("gathering-server")
}
