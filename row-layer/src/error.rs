//! One error type for the whole layer, classified by what the caller should do.
//!
//! Like slatedb's `Error { kind, .. }` and neon's permanent/retryable split: the
//! `kind` tells a caller (the gateway, the CLI, a retry wrapper) whether to retry,
//! report a usage error, or treat the image as damaged. Messages carry context
//! (object names, offsets) so that an operator can act on them.

use std::fmt;

/// What went wrong, in terms of what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object, image, snapshot or key does not exist (ENOENT).
    NotFound,
    /// The name is already taken (EEXIST).
    AlreadyExists,
    /// A guard of a compound operation did not hold; nothing was applied.
    PreconditionFailed,
    /// The request itself is wrong: bad offset, bad size, bad name (EINVAL).
    InvalidInput,
    /// The image or snapshot is read-only or protected (EROFS / EBUSY).
    ReadOnly,
    /// Someone else holds the image, or the snapshot has dependants (EBUSY).
    Busy,
    /// Bytes read from the store do not decode: bad magic, crc, version, length.
    Corrupt,
    /// A transient failure of the store: retrying may succeed.
    Transient,
    /// The store failed in a way retrying will not fix (EIO).
    Io,
    /// This client was fenced (blocklisted) or its handle poisoned after a
    /// failed durable write: reopen the image.
    Fenced,
    /// The operation is not supported by this backend or in this state.
    Unsupported,
    /// The pool is full or over its quota (ENOSPC / EDQUOT): the operation
    /// was refused and nothing was applied. Freeing space makes it succeed.
    NoSpace,
}

impl ErrorKind {
    /// The errno rbd would report for this kind (positive value).
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::NotFound => 2,
            ErrorKind::AlreadyExists => 17,
            ErrorKind::PreconditionFailed => 125,
            ErrorKind::InvalidInput => 22,
            ErrorKind::ReadOnly => 30,
            ErrorKind::Busy => 16,
            ErrorKind::Corrupt => 74,
            ErrorKind::Transient => 11,
            ErrorKind::Io => 5,
            ErrorKind::Fenced => 108,
            ErrorKind::Unsupported => 95,
            ErrorKind::NoSpace => 28,
        }
    }

    /// The kind whose [`ErrorKind::errno`] is `errno` (`Io` if none is).
    pub fn from_errno(errno: i32) -> Self {
        use ErrorKind::*;
        [
            NotFound,
            AlreadyExists,
            PreconditionFailed,
            InvalidInput,
            ReadOnly,
            Busy,
            Corrupt,
            Transient,
            Io,
            Fenced,
            Unsupported,
            NoSpace,
        ]
        .into_iter()
        .find(|k| k.errno() == errno)
        .unwrap_or(Io)
    }

    /// Whether the same request may succeed if simply tried again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}

/// An error from row-layer: a kind plus a human-readable context.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl Error {
    /// Builds an error of `kind` with `message` as context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The classification of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with more context, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, m)
    }
    pub(crate) fn corrupt(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, m)
    }
    pub(crate) fn exists(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, m)
    }
    pub(crate) fn busy(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, m)
    }
    pub(crate) fn read_only(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, m)
    }
    pub(crate) fn io(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, m)
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
