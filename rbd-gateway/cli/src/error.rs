//! Typed errors of the CLI, printed the way `rbd` prints them:
//! `rbd-row: error opening image foo: (2) No such file or directory`,
//! with the errno as the process exit code (as `rbd` exits).

use std::fmt;

/// An error of a CLI command: an errno (the exit code) and rbd's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// Positive errno; the process exits with it (as `rbd` does).
    pub errno: i32,
    /// The message, without the `rbd-row: ` prefix.
    pub message: String,
    /// Extra detail from the engine (printed before the message, the way
    /// librbd logs before `rbd` reports).
    pub detail: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for CliError {}

/// Result alias of the CLI library.
pub type CliResult<T> = Result<T, CliError>;

/// `strerror` for the errnos the engine and the CLI produce.
pub fn strerror(errno: i32) -> &'static str {
    match errno {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        5 => "Input/output error",
        11 => "Resource temporarily unavailable",
        12 => "Cannot allocate memory",
        13 => "Permission denied",
        16 => "Device or resource busy",
        17 => "File exists",
        18 => "Invalid cross-device link",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        27 => "File too large",
        28 => "No space left on device",
        30 => "Read-only file system",
        33 => "Numerical argument out of domain",
        38 => "Function not implemented",
        39 => "Directory not empty",
        74 => "Bad message",
        95 => "Operation not supported",
        108 => "Cannot send after transport endpoint shutdown",
        110 => "Connection timed out",
        117 => "Structure needs cleaning",
        125 => "Operation canceled",
        _ => "Unknown error",
    }
}

impl CliError {
    /// `{context}: ({errno}) {strerror}`.
    pub fn errno(context: impl fmt::Display, errno: i32) -> Self {
        CliError {
            errno,
            message: format!("{context}: ({errno}) {}", strerror(errno)),
            detail: None,
        }
    }

    /// A usage error (EINVAL) with a free-form message, like
    /// `rbd: must specify --size <M/G/T>`.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            errno: 22,
            message: message.into(),
            detail: None,
        }
    }

    /// A free-form message with an errno.
    pub fn msg(errno: i32, message: impl Into<String>) -> Self {
        CliError {
            errno,
            message: message.into(),
            detail: None,
        }
    }

    /// Wraps an engine error: `{context}: ({errno}) {strerror}`, keeping the
    /// engine's message as detail.
    pub fn row(context: impl fmt::Display, e: &row_layer::Error) -> Self {
        let mut err = Self::errno(context, e.kind().errno());
        err.detail = Some(e.message().to_string());
        err
    }

    /// Wraps a stream codec error (EINVAL for malformed streams, EIO for I/O).
    pub fn stream(context: impl fmt::Display, e: &rbd_streams::Error) -> Self {
        let errno = match e.kind {
            rbd_streams::StreamErrorKind::Io => 5,
            _ => 22,
        };
        let mut err = Self::errno(context, errno);
        err.detail = Some(e.to_string());
        err
    }

    /// Wraps an I/O error of a local file.
    pub fn io(context: impl fmt::Display, e: &std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(5);
        let mut err = Self::errno(context, errno);
        err.detail = Some(e.to_string());
        err
    }

    /// The process exit code (1..=255).
    pub fn exit_code(&self) -> i32 {
        if (1..=255).contains(&self.errno) {
            self.errno
        } else {
            1
        }
    }
}
