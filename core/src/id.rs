//! Names of gatherings and connections.

use core::fmt;
use std::sync::Arc;

/// The longest gathering id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The name of a gathering: 1 to 64 characters of `[A-Za-z0-9_-]`.
///
/// Ids arrive from URLs and storage keys, so they are validated once, on the
/// way in, and are cheap to clone afterwards.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatheringId(Arc<str>);

/// Why a string is not a valid [`GatheringId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9_-]`.
    BadChar(char),
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty => write!(f, "gathering id is empty"),
            IdError::TooLong(n) => {
                write!(
                    f,
                    "gathering id is {n} bytes long; at most {MAX_ID_LEN} are allowed"
                )
            }
            IdError::BadChar(c) => write!(
                f,
                "gathering id contains {c:?}; only letters, digits, '_' and '-' are allowed"
            ),
        }
    }
}

impl std::error::Error for IdError {}

/// Checks `s` against the alphabet gathering ids and sessions share.
fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar(c));
    }
    Ok(())
}

impl GatheringId {
    /// Validates `s` as a gathering id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate(s)?;
        Ok(GatheringId(Arc::from(s)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatheringId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GatheringId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A client's session: 1 to 64 characters of `[A-Za-z0-9_-]`, chosen by
/// the client and kept for the life of that client instance. A gathering
/// remembers which ops each session applied (so a retried op applies once)
/// and which member it belongs to.
///
/// One thin pointer (an `Arc<String>`, not an `Arc<str>`): every frame of a
/// session's connection carries one to its gathering.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(Arc<String>);

/// Why a string is not a valid [`SessionId`]: what [`IdError`] says of a
/// gathering id, said of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionIdError(pub IdError);

impl fmt::Display for SessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let said = self.0.to_string();
        let said = said.strip_prefix("gathering id").unwrap_or(&said);
        write!(f, "session{said}")
    }
}

impl std::error::Error for SessionIdError {}

impl SessionId {
    /// Validates `s` as a session.
    pub fn parse(s: &str) -> Result<Self, SessionIdError> {
        validate(s).map_err(SessionIdError)?;
        Ok(SessionId(Arc::new(s.to_owned())))
    }

    /// The session as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

/// A connection, named by the host that owns its socket.
///
/// The host must not reuse an id while the connection may still be known to a
/// gathering; a counter that never wraps in practice (u64) is enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(GatheringId::parse("Spring-Open_2026").is_ok());
        assert!(GatheringId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        assert_eq!(GatheringId::parse(""), Err(IdError::Empty));
        assert_eq!(
            GatheringId::parse(&"a".repeat(65)),
            Err(IdError::TooLong(65))
        );
        assert_eq!(GatheringId::parse("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(GatheringId::parse("é"), Err(IdError::BadChar('é')));
        let msg = GatheringId::parse("a b").unwrap_err().to_string();
        assert!(msg.contains("' '"), "{msg}");
        let msg = SessionId::parse("a b").unwrap_err().to_string();
        assert!(msg.starts_with("session contains ' '"), "{msg}");
        assert!(SessionId::parse(&"s".repeat(64)).is_ok());
        assert!(SessionId::parse(&"s".repeat(65)).is_err());
    }
}
