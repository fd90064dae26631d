//! The gathering server (warp + tokio) and its Rust client.
//!
//! The server drives the sans-IO state machines of `gathering-core`: one task
//! per gathering with one timer (woken by a high-resolution timer thread); a
//! hall whose state sits behind a lock, fed connections' traffic by its task
//! and driven directly by gatherings for their dispersal; a group-commit
//! writer over an embedded redb store; and a warp front end. [`client::Client`] speaks the same protocol from Rust.

pub mod allocator;
pub mod client;
pub mod clock;
pub mod config;
pub mod gathering_task;
pub mod hall_task;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod persist;
pub mod server;
pub mod store;
pub mod timer;
pub mod upgrade;
pub mod ws;

pub use server::{Detection, Running, ServerConfig, ServerError, Stopping, run, start};
