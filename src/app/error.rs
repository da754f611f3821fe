//! The application layer's error type: one enum for every use case, classified by what the
//! caller can do. The rpc layer maps each variant to one status code; the message is safe
//! to show to the user (it never contains secrets), while causes are logged here.

use crate::catalog::CatalogError;
use crate::workflow::{Rejection, RejectionClass};

/// A use case failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// What the request names does not exist: check the id.
    #[error("{0}")]
    NotFound(String),
    /// The request collides with the current state (it moved on, finished, a duplicate,
    /// capacity taken meanwhile): reload and decide again.
    #[error("{0}")]
    Conflict(String),
    /// The input is malformed or incomplete; the message says what to fix.
    #[error("{0}")]
    InvalidInput(String),
    /// The caller could not be identified: no token, an unknown, expired or revoked one,
    /// or a disabled account. The message never repeats the token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The user may not do this; the message says who may.
    #[error("{0}")]
    Forbidden(String),
    /// The database is busy or unreachable; retry later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupted data; the cause was logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    /// An [`AppError::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::InvalidInput(message.into())
    }

    /// An [`AppError::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        AppError::Forbidden(message.into())
    }

    /// An [`AppError::Internal`], logging the cause.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error in a use case");
        AppError::Internal(message)
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AppError::Unavailable(_))
    }
}

impl From<CatalogError> for AppError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NotFound { what, key } => {
                AppError::NotFound(format!("{what} {key} does not exist"))
            }
            CatalogError::Conflict(message) => AppError::Conflict(message),
            CatalogError::Constraint(message) => AppError::InvalidInput(message),
            CatalogError::Unavailable(message) => AppError::Unavailable(message),
            full @ CatalogError::Full(_) => AppError::Unavailable(full.to_string()),
            other => AppError::internal(other.to_string()),
        }
    }
}

impl From<Rejection> for AppError {
    fn from(rejection: Rejection) -> Self {
        let message = rejection.to_string();
        match rejection.class() {
            RejectionClass::Forbidden => AppError::Forbidden(message),
            RejectionClass::InvalidInput => AppError::InvalidInput(message),
            RejectionClass::Conflict => AppError::Conflict(message),
            RejectionClass::Internal => AppError::internal(message),
        }
    }
}
