//! librados return codes (negative errno) to row-layer errors.

use row_layer::{Error, ErrorKind};
use std::fmt::Display;

/// Linux errno values librados returns (negated).
pub(crate) mod errno {
    pub(crate) const ENOENT: i32 = 2;
    pub(crate) const EIO: i32 = 5;
    pub(crate) const EAGAIN: i32 = 11;
    pub(crate) const EBUSY: i32 = 16;
    pub(crate) const EEXIST: i32 = 17;
    pub(crate) const ERANGE: i32 = 34;
    pub(crate) const ENAMETOOLONG: i32 = 36;
    pub(crate) const ENODATA: i32 = 61;
    pub(crate) const ENOTCONN: i32 = 107;
    pub(crate) const EOVERFLOW: i32 = 75;
    /// Ceph's EBLOCKLISTED.
    pub(crate) const ESHUTDOWN: i32 = 108;
    pub(crate) const ETIMEDOUT: i32 = 110;
    pub(crate) const ECANCELED: i32 = 125;
    pub(crate) const ENOSPC: i32 = 28;
    pub(crate) const EDQUOT: i32 = 122;
}

/// The kind of a librados failure, by errno (positive or negative).
///
/// ECANCELED, ERANGE and EOVERFLOW only reach callers from guards (cmpxattr,
/// assert_version); other uses of ERANGE (buffer too small) are handled where
/// they occur.
pub fn classify(code: i32) -> ErrorKind {
    use errno::*;
    match code.saturating_abs() {
        ENOENT => ErrorKind::NotFound,
        EEXIST => ErrorKind::AlreadyExists,
        ECANCELED | ERANGE | EOVERFLOW => ErrorKind::PreconditionFailed,
        EBUSY => ErrorKind::Busy,
        ESHUTDOWN => ErrorKind::Fenced,
        ETIMEDOUT | EAGAIN => ErrorKind::Transient,
        ENOSPC | EDQUOT => ErrorKind::NoSpace,
        _ => ErrorKind::Io,
    }
}

/// An error for librados return code `code`, with `what` as context.
pub(crate) fn rados_error(code: i32, what: impl Display) -> Error {
    rados_error_as(classify(code), code, what)
}

/// Like [`rados_error`], with the kind chosen by the caller.
pub(crate) fn rados_error_as(kind: ErrorKind, code: i32, what: impl Display) -> Error {
    let e = code.saturating_abs();
    let hint = if e == errno::ESHUTDOWN {
        " (client blocklisted)"
    } else {
        ""
    };
    Error::new(
        kind,
        format!("{what}: {}{hint}", std::io::Error::from_raw_os_error(e)),
    )
}

/// Turns a negative librados return into an error, keeping non-negative values.
pub(crate) fn check(ret: i32, what: impl Display) -> Result<i32, Error> {
    if ret < 0 {
        Err(rados_error(ret, what))
    } else {
        Ok(ret)
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Corrupt, msg)
}

pub(crate) fn io(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Io, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(-2), ErrorKind::NotFound);
        assert_eq!(classify(-17), ErrorKind::AlreadyExists);
        assert_eq!(classify(-125), ErrorKind::PreconditionFailed);
        assert_eq!(classify(-34), ErrorKind::PreconditionFailed);
        assert_eq!(classify(-16), ErrorKind::Busy);
        assert_eq!(classify(-108), ErrorKind::Fenced);
        assert_eq!(classify(-110), ErrorKind::Transient);
        assert_eq!(classify(-11), ErrorKind::Transient);
        assert_eq!(classify(-5), ErrorKind::Io);
        assert_eq!(classify(i32::MIN), ErrorKind::Io);
        let e = rados_error(-108, "write x");
        assert_eq!(e.kind(), ErrorKind::Fenced);
        assert!(e.message().contains("blocklisted"), "{e}");
    }
}
