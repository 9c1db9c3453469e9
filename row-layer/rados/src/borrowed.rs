//! A backend over a caller's own librados handles (`rados_ioctx_t`), for
//! code that runs inside a librados client, as the librbd C ABI
//! (`rbd-gateway/librbd`) does: the caller connected and authenticated,
//! chose the pool and the namespace; we use its connection and never shut
//! it down.
//!
//! The backend gets its own ioctx on the caller's cluster handle (same pool
//! id, same namespace, as librbd duplicates the ioctx it is given), so the
//! caller may change or destroy its ioctx afterwards. The caller's
//! `rados_t` must stay connected while the backend or anything made from it
//! lives (librbd asks the same of its callers).

use crate::backend::RadosBackend;
use crate::cluster::{conf_get, ClusterInner, IoCtx, RadosCluster};
use crate::error::{check, invalid};
use librados_sys as sys;
use row_layer::Result;
use std::ffi::c_char;
use std::sync::Arc;

/// A string getter of librados (`rados_ioctx_get_pool_name` style).
fn ioctx_string(
    io: sys::rados_ioctx_t,
    what: &str,
    get: unsafe extern "C" fn(sys::rados_ioctx_t, *mut c_char, u32) -> i32,
) -> Result<String> {
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        // SAFETY: valid ioctx per the caller of `over_ioctx`; buffer of cap bytes.
        let r = unsafe { get(io, buf.as_mut_ptr().cast::<c_char>(), cap as u32) };
        if r == -crate::error::errno::ERANGE && cap < (1 << 16) {
            cap *= 8;
            continue;
        }
        check(r, format_args!("reading the ioctx's {what}"))?;
        let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        return String::from_utf8(buf[..len].to_vec())
            .map_err(|_| invalid(format!("the ioctx's {what} is not UTF-8")));
    }
}

impl RadosBackend {
    /// A backend on the pool and namespace of the caller's `io`, over the
    /// caller's cluster connection, which is left open when the backend is
    /// dropped. Blocking (creates an ioctx).
    ///
    /// # Safety
    /// `io` must be a valid ioctx whose cluster handle stays connected for
    /// as long as the returned backend, and everything holding it, lives.
    pub unsafe fn over_ioctx(io: *mut std::ffi::c_void) -> Result<RadosBackend> {
        let io: sys::rados_ioctx_t = io.cast();
        if io.is_null() {
            return Err(invalid("null rados_ioctx_t"));
        }
        // SAFETY: valid ioctx per the contract.
        let cl = unsafe { sys::rados_ioctx_get_cluster(io) };
        // librados' C API does not give the entity name ("name" is not a
        // readable option); the instance id names the client instead.
        // SAFETY: connected handle.
        let name = conf_get(cl, "name")
            .unwrap_or_else(|_| format!("client.{}", unsafe { sys::rados_get_instance_id(cl) }));
        // SAFETY: valid ioctx.
        let pool_id = unsafe { sys::rados_ioctx_get_id(io) };
        let pool = ioctx_string(io, "pool name", sys::rados_ioctx_get_pool_name)?;
        let ns = ioctx_string(io, "namespace", sys::rados_ioctx_get_namespace)?;
        let c_ns = crate::cluster::cstring(&ns, "namespace")?;
        let inner = Arc::new(ClusterInner::borrowed(cl, name));
        let mut own: sys::rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: connected handle, out-pointer valid.
        let r = unsafe { sys::rados_ioctx_create2(cl, pool_id, &mut own) };
        check(r, format_args!("opening pool {pool} (id {pool_id})"))?;
        // SAFETY: fresh ioctx, not yet shared.
        unsafe { sys::rados_ioctx_set_namespace(own, c_ns.as_ptr()) };
        let ioctx = Arc::new(IoCtx::from_raw(own, inner.clone()));
        Ok(RadosBackend::new(RadosCluster { inner }, ioctx, pool, ns))
    }
}
