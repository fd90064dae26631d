//! The chat app (`gathering_core::chat`) on the gathering server, with every
//! flag of `gathering-server`:
//!
//!     cargo run --release -p gathering-native --example chat -- --listen 127.0.0.1:8081 --admin-listen 127.0.0.1:8091 --data-dir ./chat-data
//!
//! Hosting an app of your own is this file with your type in place of `Chat`.

#[cfg(feature = "jemalloc")]
#[path = "../src/allocator.rs"]
mod allocator;

use std::process::ExitCode;

use gathering_core::chat::Chat;

fn main() -> ExitCode {
    gathering_native::cli::main::<Chat>("chat-server")
}
