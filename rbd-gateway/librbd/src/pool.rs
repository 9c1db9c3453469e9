//! The engine's view of a caller's `rados_ioctx_t`: a [`Store`] on the
//! ioctx's pool and namespace over the caller's own cluster connection.

use row_layer::{ImageOptions, Store};
use row_rados::RadosBackend;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Seconds between background defragmentation passes of each ROW image
/// this process opens for writing (0 or unset: never; defrag.rs).
pub(crate) const DEFRAG_INTERVAL_ENV: &str = "RBD_ROW_DEFRAG_INTERVAL";
/// Rewrite an object when reading it whole takes at least this many RADOS
/// reads (default 8, at least 2).
pub(crate) const DEFRAG_MIN_READS_ENV: &str = "RBD_ROW_DEFRAG_MIN_READS";
/// Most bytes each image's pass rewrites per second (K/M/G suffixes; 0: no
/// limit; default 16M).
pub(crate) const DEFRAG_RATE_ENV: &str = "RBD_ROW_DEFRAG_BYTES_PER_SEC";

/// The handle options the environment asks for: librbd's C API has no
/// call for them, so a client (QEMU, fio) gets them from its environment,
/// as `rbd-gateway` gets them from its flags.
pub(crate) fn image_options(get: impl Fn(&str) -> Option<String>) -> Result<ImageOptions, String> {
    let mut opts = ImageOptions::default();
    let bad = |name: &str, v: &str, why: &str| format!("{name}={v:?}: {why}");
    if let Some(v) = get(DEFRAG_INTERVAL_ENV) {
        let secs: u64 = (v.trim().parse())
            .map_err(|_| bad(DEFRAG_INTERVAL_ENV, &v, "not a number of seconds"))?;
        opts.defrag_interval = Duration::from_secs(secs);
    }
    if let Some(v) = get(DEFRAG_MIN_READS_ENV) {
        let n: usize = (v.trim().parse())
            .ok()
            .filter(|n| *n >= 2)
            .ok_or_else(|| bad(DEFRAG_MIN_READS_ENV, &v, "must be a number of at least 2"))?;
        opts.defrag.min_reads = n;
    }
    if let Some(v) = get(DEFRAG_RATE_ENV) {
        opts.defrag.bytes_per_sec =
            byte_size(&v).ok_or_else(|| bad(DEFRAG_RATE_ENV, &v, "not a size (e.g. 16M)"))?;
    }
    Ok(opts)
}

/// `123`, `64K`, `16M`, `1G` (binary units; `KiB`, `MB` spellings too).
fn byte_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, suffix) = t.split_at(digits);
    let unit: u64 = match suffix.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(unit)
}

/// [`image_options`] of this process's environment, read once. A bad
/// value is reported on stderr once and refuses every ROW open (`-EINVAL`)
/// instead of being ignored.
fn env_image_options() -> Result<ImageOptions, i32> {
    static OPTS: OnceLock<Result<ImageOptions, String>> = OnceLock::new();
    let opts = OPTS.get_or_init(|| {
        let r = image_options(|k| std::env::var(k).ok());
        if let Err(e) = &r {
            eprintln!("librbd (rbd-row): {e}");
        }
        r
    });
    opts.clone().map_err(|_| -libc::EINVAL)
}

/// The store of `io`'s pool and namespace.
///
/// # Safety
/// `io` must be a valid ioctx of a connected cluster handle that stays
/// connected while the store (and images opened from it) live.
pub(crate) unsafe fn store(io: *mut c_void) -> Result<Store, i32> {
    // SAFETY: per the contract.
    unsafe { store_named(io) }.map(|(s, _)| s)
}

/// [`store`] and the pool's name.
///
/// # Safety
/// As [`store`].
pub(crate) unsafe fn store_named(io: *mut c_void) -> Result<(Store, String), i32> {
    // SAFETY: per the contract.
    let b = unsafe { RadosBackend::over_ioctx(io) }.map_err(|e| crate::errno::neg(&e))?;
    let pool = b.pool().to_string();
    let store = Store::new(Arc::new(b)).with_image_options(env_image_options()?);
    Ok((store, pool))
}

/// A caller's C string, or `-EINVAL` if null or not UTF-8.
///
/// # Safety
/// `s` must be null or NUL-terminated.
pub(crate) unsafe fn str_arg(s: *const c_char) -> Result<String, i32> {
    if s.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: NUL-terminated per the contract.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| -libc::EINVAL)
}

/// Like [`str_arg`], but null is `None`.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg(s: *const c_char) -> Result<Option<String>, i32> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: per the contract.
    unsafe { str_arg(s) }.map(Some)
}

/// A `malloc`ed copy of `s` (the caller frees it with `free`, as the
/// `*_cleanup`/`*_end` functions of librbd do).
pub(crate) fn strdup(s: &str) -> *mut c_char {
    let c = std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default();
    // SAFETY: NUL-terminated string.
    unsafe { libc::strdup(c.as_ptr()) }
}

/// Copies `s` with its NUL into `buf` of `len` bytes, or `-ERANGE`.
///
/// # Safety
/// `buf` must have room for `len` bytes (or be null with `len` 0).
pub(crate) unsafe fn copy_out(s: &str, buf: *mut c_char, len: usize) -> Result<(), i32> {
    if s.len() + 1 > len || buf.is_null() {
        return Err(-libc::ERANGE);
    }
    // SAFETY: room for s.len() + 1 bytes, checked above.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use row_layer::DefragOptions;

    fn opts(vars: &[(&str, &str)]) -> Result<ImageOptions, String> {
        image_options(|k| {
            (vars.iter())
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defrag_options_come_from_the_environment() {
        let d = opts(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.defrag_interval, Duration::ZERO, "off unless asked");
        assert_eq!(d.defrag, ImageOptions::default().defrag);
        let set = [
            (DEFRAG_INTERVAL_ENV, "30"),
            (DEFRAG_MIN_READS_ENV, "4"),
            (DEFRAG_RATE_ENV, "64M"),
        ];
        let o = opts(&set).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.defrag_interval, Duration::from_secs(30));
        assert_eq!(
            o.defrag,
            DefragOptions {
                min_reads: 4,
                bytes_per_sec: 64 << 20
            }
        );
        for (rate, want) in [("0", 0), ("4096", 4096), ("8KiB", 8192), ("1g", 1 << 30)] {
            let o = opts(&[(DEFRAG_RATE_ENV, rate)]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(o.defrag.bytes_per_sec, want, "{rate}");
        }
    }

    #[test]
    fn bad_defrag_values_are_refused_by_name() {
        for (k, v) in [
            (DEFRAG_INTERVAL_ENV, "soon"),
            (DEFRAG_INTERVAL_ENV, "-1"),
            (DEFRAG_MIN_READS_ENV, "1"),
            (DEFRAG_MIN_READS_ENV, "many"),
            (DEFRAG_RATE_ENV, "fast"),
            (DEFRAG_RATE_ENV, "16X"),
            (DEFRAG_RATE_ENV, ""),
        ] {
            let e = opts(&[(k, v)]).expect_err(v);
            assert!(e.starts_with(k), "{e}");
        }
    }
}
