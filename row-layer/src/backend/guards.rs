//! The one evaluator of [`Guard`]s, shared by every backend that checks
//! guards itself (memory, local, and RADOS for ops without actions), so that
//! they agree on the contract's outcomes: which guard fails first and with
//! which error kind.

use super::Guard;
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;

/// What the guards of an op see of its object.
pub struct GuardView<X> {
    /// The object exists.
    pub exists: bool,
    /// Its version (0 when it does not exist).
    pub version: u64,
    /// Looks up one of its xattrs (only called when it exists).
    pub xattr: X,
}

/// Checks `guards`, in order, against `view`: `NotFound` for a failed
/// `Exists`, `AlreadyExists` for a failed `NotExists`, `PreconditionFailed`
/// for a failed `XattrEquals` or `VersionEquals`.
pub fn check<X>(oid: &str, guards: &[Guard], mut view: GuardView<X>) -> Result<()>
where
    X: FnMut(&str) -> Result<Option<Bytes>>,
{
    for g in guards {
        match g {
            Guard::Exists if !view.exists => {
                return Err(Error::not_found(format!("object {oid} does not exist")))
            }
            Guard::NotExists if view.exists => {
                return Err(Error::exists(format!("object {oid} already exists")))
            }
            Guard::XattrEquals(name, value) => {
                let have = if view.exists {
                    (view.xattr)(name)?
                } else {
                    None
                };
                if have.as_ref() != Some(value) {
                    return Err(Error::new(
                        ErrorKind::PreconditionFailed,
                        format!("xattr {name} of {oid} does not match"),
                    ));
                }
            }
            Guard::VersionEquals(v) if view.version != *v => {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    format!("version of {oid} is {}, expected {v}", view.version),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}
