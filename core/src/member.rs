//! Who acts in a gathering.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ConnId;

/// The identity behind a connection: whoever the host authenticated it as
/// (with the shipped JWT check, the token's `sub` and `role`), passed to
/// [`App::admit`](crate::App::admit) when it joins and to
/// [`App::apply`](crate::App::apply) with each of its ops, and logged with
/// each op so that a replay decides exactly as the first time did.
///
/// A member without a role is one of an open server (no authentication):
/// each connection is a member of its own, named after it, and apps give
/// it every right.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Who: a token's `sub`, or `conn-N` in open mode.
    pub id: String,
    /// What the app lets it do; `None` in open mode (every right).
    pub role: Option<String>,
}

impl Member {
    /// A member named `id` with `role`.
    pub fn new(id: impl Into<String>, role: impl Into<String>) -> Self {
        Member {
            id: id.into(),
            role: Some(role.into()),
        }
    }

    /// The member that connection `conn` is on an open server: named after
    /// the connection, with every right.
    pub fn open(conn: ConnId) -> Self {
        Member {
            id: conn.to_string(),
            role: None,
        }
    }

    /// Its role, if it has one.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Whether it is an open server's member (every right) or has `role`.
    pub fn is_open_or(&self, role: &str) -> bool {
        self.role.as_deref().is_none_or(|r| r == role)
    }
}

/// A member shared by its connection's join, its ops awaiting their commit
/// and the hall's routing: one allocation per connection.
pub type SharedMember = Arc<Member>;
