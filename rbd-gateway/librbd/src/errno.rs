//! librbd's error convention: 0 or a count on success, a negative errno on
//! failure, from row-layer's error kinds.

use row_layer::{Error, ErrorKind};

/// The negative errno librbd returns for `e`.
pub(crate) fn neg(e: &Error) -> i32 {
    -e.kind().errno()
}

/// Whether `e` means "no such image/snapshot".
pub(crate) fn is_not_found(e: &Error) -> bool {
    e.kind() == ErrorKind::NotFound
}
