//! The engine's one error type, classified by what the caller can do about it.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the engine.
///
/// The variants are grouped by what a caller can do: fix the input
/// (`InvalidInput`, `WrongPassword`, `NotARepository`, `UnsupportedVersion`),
/// retry later (`Storage { transient: true }`, `Locked`), or investigate damage
/// (`Corrupt`, `MissingObject`). Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The location holds no cadang repository.
    #[error(
        "{location}: not a cadang repository (no config object found); run `cadang init` first"
    )]
    NotARepository { location: String },

    /// A repository already exists where `init` was asked to create one.
    #[error("{location}: a repository already exists here")]
    AlreadyInitialized { location: String },

    /// No key slot opens with the given password.
    #[error("wrong password or no key slot matches (tried {slots} key slot(s))")]
    WrongPassword { slots: usize },

    /// The repository was written by a newer format than this build understands.
    #[error(
        "repository format version {found} is not supported (this cadang supports version {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },

    /// An object failed authentication, hashing or decoding.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// An object referenced by another one does not exist.
    #[error("missing {what}")]
    MissingObject { what: String },

    /// The object store failed.
    #[error("storage error on {path}: {message}")]
    Storage {
        path: String,
        message: String,
        transient: bool,
    },

    /// A lease lock held by someone else blocks an exclusive operation.
    #[error(
        "repository is locked by {holder} until {until}; wait, or run `cadang unlock` if that process is gone"
    )]
    Locked { holder: String, until: String },

    /// The caller passed something unusable.
    #[error("{0}")]
    InvalidInput(String),

    /// A local file system operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The repository is damaged in a way that forbids the requested operation.
    #[error("{0}")]
    Refused(String),

    /// The operation was cancelled by the caller.
    #[error("operation cancelled")]
    Cancelled,
}

impl Error {
    /// Build a corruption error.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Damage (`Corrupt`, `MissingObject`) with its `what` renamed by `name` — to say
    /// where it was met, such as the file or snapshot it belongs to; other errors as they
    /// are.
    #[must_use]
    pub fn within(self, name: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Corrupt { what, detail } => Self::Corrupt {
                what: name(what),
                detail,
            },
            Self::MissingObject { what } => Self::MissingObject { what: name(what) },
            other => other,
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Storage {
                transient: true,
                ..
            }
        )
    }

    /// Whether this error means stored data is damaged or missing.
    pub fn is_damage(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::MissingObject { .. })
    }
}
