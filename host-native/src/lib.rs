//! The gathering server (warp + tokio + redb) for any application, and a
//! Rust client.
//!
//! The server runs the shared driver of `gathering-driver` on tokio: one
//! task per gathering woken by a high-resolution timer thread, the hall
//! under a mutex, a group-commit writer over an embedded redb store, and a
//! warp front (see `src/`: `front/`, `runtime/`, `storage/`). Start one
//! with [`Server::builder`], mount its routes in a warp app of your own
//! with [`Builder::build`] and [`Engine::routes`], or make a whole server
//! binary with [`cli::main`]. [`client::Client`] speaks the same protocol
//! from Rust; with `default-features = false, features = ["client"]` it
//! builds without the server's dependencies.

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
mod cluster;
#[cfg(feature = "server")]
mod dispersal;
#[cfg(feature = "server")]
mod front;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
mod runtime;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod storage;

#[cfg(feature = "server")]
pub use cluster::{Cluster, ClusterOptions, Owner};
#[cfg(feature = "server")]
pub use dispersal::Dispersal;
#[cfg(feature = "server")]
pub use front::auth::{Admission, Authenticator, Claims, Credentials, Jwt, Refusal};
#[cfg(feature = "server")]
pub use front::http::recover;
#[cfg(feature = "server")]
pub use front::listen::Limits;
#[cfg(feature = "bench")]
pub use runtime::Detection;
#[cfg(feature = "server")]
pub use runtime::NativeApp;
#[cfg(feature = "server")]
pub use server::{Builder, Engine, Running, Server, ServerError, Stopping};
#[cfg(feature = "server")]
pub use storage::{Fenced, RedbStore, Store, StoreError, Write};
