//! The application a gathering hosts.

use core::fmt;

use serde::{Serialize, de::DeserializeOwned};

use crate::ConnId;

/// Application state hosted by a gathering.
///
/// Contract: [`App::apply`] either applies the op and returns `Ok`, or returns
/// a [`Rejection`] and leaves the state exactly as it was. The whole state is
/// the snapshot: it is persisted and restored through serde, so `Default` must
/// be the state of a gathering that was never persisted.
pub trait App: Default + Serialize + DeserializeOwned {
    /// One operation a client may ask for.
    type Op: Serialize + DeserializeOwned;

    /// Applies `op` on behalf of connection `by`.
    fn apply(&mut self, by: ConnId, op: &Self::Op) -> Result<(), Rejection>;
}

/// Why an op was refused: a stable machine-readable `code` and a sentence for
/// the person who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Stable, snake_case, for programs (`"duplicate_player"`).
    pub code: &'static str,
    /// For people (`"a player named Ada is already registered"`).
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Rejection {}
