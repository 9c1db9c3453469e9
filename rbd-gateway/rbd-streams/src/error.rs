//! Error type shared by every codec in this crate.

use std::fmt;
use std::io;

/// What went wrong. Every corruption class has its own kind so callers (and
/// tests) can tell them apart without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamErrorKind {
    /// The underlying reader or writer failed (other than a premature EOF).
    Io,
    /// The stream does not start with the expected banner.
    BadBanner,
    /// EOF in the middle of a record (or of a banner / count).
    Truncated,
    /// Clean EOF on a record boundary before the `'e'` end record.
    MissingEnd,
    /// Bytes follow the `'e'` record of a stand-alone stream (or the last
    /// diff of an image export).
    TrailingData,
    /// A tag this format does not know and cannot skip (v1 streams).
    UnknownTag,
    /// A v2 record length that does not match its contents.
    LengthMismatch,
    /// A snapshot name longer than [`crate::MAX_NAME_LEN`] bytes.
    NameTooLong,
    /// A length field too large to be plausible (e.g. a huge image-meta record).
    AbsurdLength,
    /// A name or key that is not valid UTF-8.
    InvalidUtf8,
    /// A field with an impossible value (protection byte not 0/1, diff count 0, …).
    InvalidValue,
    /// A metadata record (`'f'`, `'t'`, `'p'`, `'s'`) after the first data record.
    MetadataAfterData,
    /// The same metadata record appears twice.
    DuplicateMetadata,
    /// A data record (or the end) without a preceding `'s'` image-size record.
    MissingSize,
    /// An extent that overlaps or precedes the previous one.
    ExtentOrder,
    /// An extent that ends beyond the stated image size (or overflows u64).
    ExtentBeyondSize,
    /// Snapshot names that do not chain (merge-diff inputs, image-export diffs).
    SnapMismatch,
    /// The API was used in a way the format cannot express (writer misuse).
    Usage,
}

impl StreamErrorKind {
    /// Short stable name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Io => "i/o error",
            Self::BadBanner => "bad banner",
            Self::Truncated => "truncated stream",
            Self::MissingEnd => "missing end record",
            Self::TrailingData => "trailing data",
            Self::UnknownTag => "unknown tag",
            Self::LengthMismatch => "record length mismatch",
            Self::NameTooLong => "name too long",
            Self::AbsurdLength => "absurd length",
            Self::InvalidUtf8 => "invalid utf-8",
            Self::InvalidValue => "invalid value",
            Self::MetadataAfterData => "metadata after data",
            Self::DuplicateMetadata => "duplicate metadata",
            Self::MissingSize => "missing image size",
            Self::ExtentOrder => "extent out of order",
            Self::ExtentBeyondSize => "extent beyond image size",
            Self::SnapMismatch => "snapshot mismatch",
            Self::Usage => "api misuse",
        }
    }
}

impl fmt::Display for StreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned by all readers, writers and helpers of this crate.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    /// Classification of the failure.
    pub kind: StreamErrorKind,
    /// Human readable detail, including the stream byte position when known.
    pub message: String,
    /// The underlying I/O error for [`StreamErrorKind::Io`].
    #[source]
    pub source: Option<io::Error>,
}

impl Error {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: StreamErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Wraps an I/O error; `context` says what was being done.
    pub fn io(err: io::Error, context: impl fmt::Display) -> Self {
        Self {
            kind: StreamErrorKind::Io,
            message: format!("{context}: {err}"),
            source: Some(err),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e.kind {
            StreamErrorKind::Io => match e.source {
                Some(src) => src,
                None => io::Error::other(e.message),
            },
            StreamErrorKind::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            StreamErrorKind::Usage => io::Error::new(io::ErrorKind::InvalidInput, e),
            _ => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::new(
            $crate::error::StreamErrorKind::$kind,
            format!($($arg)*),
        ))
    };
}
pub(crate) use bail;
