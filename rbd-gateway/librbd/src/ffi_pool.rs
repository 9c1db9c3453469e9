//! Pool-level calls (on a `rados_ioctx_t`): version, list, create, remove,
//! namespaces, open and close.
//!
//! A name is a ROW image when the ioctx's namespace holds its
//! `rbd_row_id.<name>` object; anything else goes to the system librbd.
//! `rbd_create`/`rbd_create2` make a ROW image only when the environment
//! variable `RBD_ROW_CREATE` is `1` (the one switch), otherwise a native
//! one; either refuses a name the other kind already uses (`-EEXIST`).

use crate::errno::is_not_found;
use crate::handle::{self, Handle};
use crate::native::native_call;
use crate::pool::{opt_str_arg, store, store_named, str_arg, strdup};
use crate::row_image::RowImage;
use crate::runtime::{run, wait};
use row_layer::{CreateOptions, Store};
use std::ffi::{c_char, c_int, c_void};

/// librbd's `rbd_image_spec_t`.
#[repr(C)]
pub struct RbdImageSpec {
    /// Image id (malloc'ed).
    pub id: *mut c_char,
    /// Image name (malloc'ed).
    pub name: *mut c_char,
}

/// The environment switch of `rbd_create`.
pub const ROW_CREATE_ENV: &str = "RBD_ROW_CREATE";

/// `rbd_version`: the librbd version this ABI is (1.16.0, Ceph 16.2).
///
/// # Safety
/// Each pointer null or valid.
#[no_mangle]
pub unsafe extern "C" fn rbd_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int) {
    for (p, v) in [(major, 1), (minor, 16), (extra, 0)] {
        if !p.is_null() {
            // SAFETY: valid out-pointer per the contract.
            unsafe { *p = v };
        }
    }
}

/// Whether `name` is a ROW image of `store` (errors other than "no").
fn is_row(store: &Store, name: &str) -> Result<bool, i32> {
    let (s, n) = (store.clone(), name.to_string());
    match wait(async move { s.image_id(&n).await })? {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(crate::errno::neg(&e)),
    }
}

/// Whether a native image called `name` exists in `store`'s namespace.
fn is_native(store: &Store, name: &str) -> Result<bool, i32> {
    let b = store.backend().clone();
    let oid = format!("rbd_id.{name}");
    match wait(async move { b.stat(&oid).await })? {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(crate::errno::neg(&e)),
    }
}

fn ok(r: Result<c_int, c_int>) -> c_int {
    r.unwrap_or_else(|e| e)
}

/// `rbd_list2`: native images and ROW images of the ioctx's namespace.
///
/// # Safety
/// As librbd: `io` valid; `images` has room for `*max_images` entries.
#[no_mangle]
pub unsafe extern "C" fn rbd_list2(
    io: *mut c_void,
    images: *mut RbdImageSpec,
    max_images: *mut usize,
) -> c_int {
    if max_images.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: per the contract.
    let all = match unsafe { list_all(io) } {
        Ok(v) => v,
        Err(e) => return e,
    };
    // SAFETY: valid pointer per the contract.
    let max = unsafe { *max_images };
    // SAFETY: valid pointer.
    unsafe { *max_images = all.len() };
    if max < all.len() {
        return -libc::ERANGE;
    }
    for (i, (id, name)) in all.iter().enumerate() {
        // SAFETY: i < max entries of the caller's array.
        unsafe {
            *images.add(i) = RbdImageSpec {
                id: strdup(id),
                name: strdup(name),
            }
        };
    }
    0
}

/// `rbd_list`: the names of native and ROW images, each NUL-terminated,
/// one after another; the bytes used. `-ERANGE` with `*size` set to the
/// bytes needed when the buffer is smaller.
///
/// # Safety
/// As librbd: `io` valid; `names` has room for `*size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rbd_list(io: *mut c_void, names: *mut c_char, size: *mut usize) -> c_int {
    if size.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: per the contract.
    let all = match unsafe { list_all(io) } {
        Ok(v) => v,
        Err(e) => return e,
    };
    let need: usize = all.iter().map(|(_, n)| n.len() + 1).sum();
    // SAFETY: valid pointer per the contract.
    if unsafe { *size } < need {
        // SAFETY: valid pointer per the contract.
        unsafe { *size = need };
        return -libc::ERANGE;
    }
    if names.is_null() {
        return -libc::EINVAL;
    }
    let mut pos = 0;
    for (_, n) in &all {
        // SAFETY: pos + n.len() + 1 <= need <= *size bytes of the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(n.as_ptr(), names.add(pos).cast(), n.len());
            *names.add(pos + n.len()) = 0;
        }
        pos += n.len() + 1;
    }
    need as c_int
}

/// (id, name) of every image, native and ROW, sorted by name.
///
/// # Safety
/// `io` valid.
unsafe fn list_all(io: *mut c_void) -> Result<Vec<(String, String)>, c_int> {
    let mut out = Vec::new();
    let mut n: usize = 0;
    let f = crate::native::native_fn!(rbd_list2: fn(*mut c_void, *mut RbdImageSpec, *mut usize) -> c_int);
    if let Some(f) = f {
        loop {
            let mut specs: Vec<RbdImageSpec> = Vec::with_capacity(n);
            // SAFETY: room for n entries; librbd fills them and n.
            let r = unsafe { f(io, specs.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                continue;
            }
            if r < 0 {
                return Err(r);
            }
            // SAFETY: librbd initialised n entries.
            unsafe { specs.set_len(n) };
            for s in &specs {
                // SAFETY: NUL-terminated strings from librbd.
                let (id, name) = unsafe {
                    (
                        std::ffi::CStr::from_ptr(s.id)
                            .to_string_lossy()
                            .into_owned(),
                        std::ffi::CStr::from_ptr(s.name)
                            .to_string_lossy()
                            .into_owned(),
                    )
                };
                out.push((id, name));
            }
            // SAFETY: the entries librbd allocated, freed once.
            unsafe { rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
            break;
        }
    }
    // SAFETY: per the contract.
    let st = unsafe { store(io) }?;
    let rows = run(async move { st.list().await })?;
    out.extend(rows.into_iter().map(|e| (e.id.0, e.name)));
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// `rbd_image_spec_cleanup`.
///
/// # Safety
/// `spec` from `rbd_list2`.
#[no_mangle]
pub unsafe extern "C" fn rbd_image_spec_cleanup(spec: *mut RbdImageSpec) {
    if spec.is_null() {
        return;
    }
    // SAFETY: malloc'ed strings (ours or librbd's), freed once.
    unsafe {
        libc::free((*spec).id.cast());
        libc::free((*spec).name.cast());
    }
}

/// `rbd_image_spec_list_cleanup`.
///
/// # Safety
/// `images` of `num_images` entries from `rbd_list2`.
#[no_mangle]
pub unsafe extern "C" fn rbd_image_spec_list_cleanup(images: *mut RbdImageSpec, num_images: usize) {
    for i in 0..num_images {
        // SAFETY: within the array.
        unsafe { rbd_image_spec_cleanup(images.add(i)) };
    }
}

/// Creates a ROW image of `size` bytes with objects of `2^order` bytes.
fn create_row(store: &Store, name: &str, size: u64, order: c_int) -> Result<c_int, c_int> {
    if !(12..=25).contains(&order) {
        return Err(-libc::EDOM);
    }
    if is_native(store, name)? {
        return Err(-libc::EEXIST);
    }
    let opts = CreateOptions {
        object_size: 1 << order,
        ..CreateOptions::with_size(size)
    };
    let (s, n) = (store.clone(), name.to_string());
    run(async move { s.create(&n, opts).await })?;
    Ok(0)
}

/// Shared by `rbd_create` and `rbd_create2`.
///
/// # Safety
/// As librbd.
unsafe fn create(
    io: *mut c_void,
    name: *const c_char,
    size: u64,
    features: Option<u64>,
    order: *mut c_int,
) -> c_int {
    // SAFETY: per the contract.
    let r = (|| unsafe {
        let n = str_arg(name)?;
        let st = store(io)?;
        let want_row = std::env::var(ROW_CREATE_ENV).is_ok_and(|v| v == "1");
        if want_row {
            let o = if order.is_null() || *order == 0 {
                22
            } else {
                *order
            };
            create_row(&st, &n, size, o)?;
            if !order.is_null() {
                *order = o;
            }
            return Ok(0);
        }
        if is_row(&st, &n)? {
            return Err(-libc::EEXIST);
        }
        Ok(match features {
            None => {
                native_call!(rbd_create: fn(*mut c_void, *const c_char, u64, *mut c_int) -> c_int;
                io, name, size, order)
            }
            Some(f) => {
                native_call!(rbd_create2: fn(*mut c_void, *const c_char, u64, u64, *mut c_int) -> c_int;
                io, name, size, f, order)
            }
        })
    })();
    ok(r)
}

/// `rbd_create`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_create(
    io: *mut c_void,
    name: *const c_char,
    size: u64,
    order: *mut c_int,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { create(io, name, size, None, order) }
}

/// `rbd_create2` (the features apply to native images only).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_create2(
    io: *mut c_void,
    name: *const c_char,
    size: u64,
    features: u64,
    order: *mut c_int,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { create(io, name, size, Some(features), order) }
}

/// `rbd_remove`: a ROW image through the engine (`-ENOTEMPTY` with
/// snapshots, `-EBUSY` while open), else the native one.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_remove(io: *mut c_void, name: *const c_char) -> c_int {
    // SAFETY: per the contract.
    let r = (|| unsafe {
        let n = str_arg(name)?;
        let st = store(io)?;
        if !is_row(&st, &n)? {
            return Ok(native_call!(rbd_remove: fn(*mut c_void, *const c_char) -> c_int; io, name));
        }
        run(async move {
            let view = st.open_head_read_only(&n).await?;
            if !view.snap_list().is_empty() {
                return Ok(-libc::ENOTEMPTY);
            }
            st.remove(&n).await.map(|()| 0)
        })
    })();
    ok(r)
}

/// `rbd_namespace_exists` (namespaces are librbd's; ROW images live in them).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_namespace_exists(
    io: *mut c_void,
    namespace_name: *const c_char,
    exists: *mut bool,
) -> c_int {
    native_call!(rbd_namespace_exists: fn(*mut c_void, *const c_char, *mut bool) -> c_int;
        io, namespace_name, exists)
}

/// Opens a ROW image: the owned head, a read-only head view, or a snapshot.
fn open_row(
    st: Store,
    pool: String,
    name: String,
    snap: Option<String>,
    read_only: bool,
) -> Result<*mut c_void, c_int> {
    let (s, n, sn) = (st.clone(), name.clone(), snap.clone());
    let (head, view) = run(async move {
        match (read_only, sn) {
            (_, Some(sn)) => s.open_snapshot(&n, &sn).await.map(|v| (None, v)),
            (true, None) => s.open_head_read_only(&n).await.map(|v| (None, v)),
            (false, None) => s.open(&n).await.map(|h| (Some(h.clone()), h)),
        }
    })?;
    Ok(handle::add_row(RowImage::new(
        st, pool, name, head, view, snap,
    )))
}

/// Shared by `rbd_open` and `rbd_open_read_only`.
///
/// # Safety
/// As librbd.
unsafe fn open(
    io: *mut c_void,
    name: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
    read_only: bool,
) -> c_int {
    if image.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: per the contract.
    let r = (|| unsafe {
        let n = str_arg(name)?;
        let snap = opt_str_arg(snap_name)?;
        let (st, pool) = store_named(io)?;
        if is_row(&st, &n)? {
            *image = open_row(st, pool, n, snap, read_only)?;
            return Ok(0);
        }
        let mut raw: *mut c_void = std::ptr::null_mut();
        let r = if read_only {
            native_call!(rbd_open_read_only: fn(*mut c_void, *const c_char, *mut *mut c_void, *const c_char) -> c_int;
                io, name, &mut raw, snap_name)
        } else {
            native_call!(rbd_open: fn(*mut c_void, *const c_char, *mut *mut c_void, *const c_char) -> c_int;
                io, name, &mut raw, snap_name)
        };
        if r < 0 {
            return Err(r);
        }
        *image = handle::add_native(raw);
        Ok(0)
    })();
    ok(r)
}

/// `rbd_open`: a ROW image's head is owned exclusively while open; a
/// second writer gets `-EBUSY` (see DESIGN.md §11).
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_open(
    io: *mut c_void,
    name: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { open(io, name, image, snap_name, false) }
}

/// `rbd_open_read_only`: no ownership taken.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_open_read_only(
    io: *mut c_void,
    name: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { open(io, name, image, snap_name, true) }
}

/// Shared by `rbd_open_by_id` and `rbd_open_by_id_read_only`: a ROW image
/// by its engine id, else the native image of that id.
///
/// # Safety
/// As librbd.
unsafe fn open_by_id(
    io: *mut c_void,
    id: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
    read_only: bool,
) -> c_int {
    if image.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: per the contract.
    let r = (|| unsafe {
        let want = str_arg(id)?;
        let snap = opt_str_arg(snap_name)?;
        let (st, pool) = store_named(io)?;
        let s = st.clone();
        let rows = run(async move { s.list().await })?;
        if let Some(e) = rows.into_iter().find(|e| e.id.0 == want) {
            *image = open_row(st, pool, e.name, snap, read_only)?;
            return Ok(0);
        }
        let mut raw: *mut c_void = std::ptr::null_mut();
        let r = if read_only {
            native_call!(rbd_open_by_id_read_only: fn(*mut c_void, *const c_char, *mut *mut c_void, *const c_char) -> c_int;
                io, id, &mut raw, snap_name)
        } else {
            native_call!(rbd_open_by_id: fn(*mut c_void, *const c_char, *mut *mut c_void, *const c_char) -> c_int;
                io, id, &mut raw, snap_name)
        };
        if r < 0 {
            return Err(r);
        }
        *image = handle::add_native(raw);
        Ok(0)
    })();
    ok(r)
}

/// `rbd_open_by_id`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_open_by_id(
    io: *mut c_void,
    id: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { open_by_id(io, id, image, snap_name, false) }
}

/// `rbd_open_by_id_read_only`.
///
/// # Safety
/// As librbd.
#[no_mangle]
pub unsafe extern "C" fn rbd_open_by_id_read_only(
    io: *mut c_void,
    id: *const c_char,
    image: *mut *mut c_void,
    snap_name: *const c_char,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { open_by_id(io, id, image, snap_name, true) }
}

/// `rbd_close`: waits for the image's operations, releases ownership.
///
/// # Safety
/// `image` from `rbd_open*`, not closed before.
#[no_mangle]
pub unsafe extern "C" fn rbd_close(image: *mut c_void) -> c_int {
    match handle::remove(image) {
        None => -libc::EINVAL,
        Some(Handle::Native(n)) => {
            native_call!(rbd_close: fn(*mut c_void) -> c_int; n.raw as *mut c_void)
        }
        Some(Handle::Row(r)) => match r.head.clone() {
            Some(h) => ok(run(async move { h.close().await.map(|()| 0) })),
            None => 0,
        },
    }
}
