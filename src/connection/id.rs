//! [`ConnectionId`]: the public id of a connection.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// The public id of a connection (`Context.ConnectionId`, the client's `connectionId`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    /// Wraps an id string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        ConnectionId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

impl From<&str> for ConnectionId {
    fn from(id: &str) -> Self {
        ConnectionId::new(id)
    }
}
