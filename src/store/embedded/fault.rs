//! What goes wrong inside the embedded engine, before it is said to callers as a
//! [`StoreError`]: at open, an I/O error's kind tells a data dir an operator must fix
//! (permissions, a read-only mount) from a damaged store, so it is kept until then.

use super::*;

#[derive(Debug, thiserror::Error)]
pub(super) enum Fault {
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for Fault {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Fault::Io(io),
            other => Fault::Engine(other.to_string()),
        }
    }
}

impl From<Fault> for StoreError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Store(e) => e,
            other => StoreError::Failed(other.to_string()),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        Fault::from(e).into()
    }
}

/// A file or thread the engine needs could not be had.
pub(super) fn io_failed(e: std::io::Error) -> StoreError {
    Fault::Io(e).into()
}
