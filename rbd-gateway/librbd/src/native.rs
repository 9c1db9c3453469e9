//! The system's real librbd, for images that are not ROW images.
//!
//! It is opened by the absolute path Debian's `librbd1` package installs,
//! never by soname (that would find this library again), with
//! `RTLD_DEEPBIND` so that librbd's calls to its own exported `rbd_*`
//! functions (it makes some through the PLT) bind to its own definitions
//! and not to ours, which come first in the global scope. `RTLD_LOCAL`
//! keeps its symbols out of that scope.
//!
//! [`native_fn!`] looks a function up once per call site.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

/// Where Debian's `librbd1` installs the real library (`dpkg -L librbd1`).
pub const SYSTEM_LIBRBD: &str = "/usr/lib/x86_64-linux-gnu/librbd.so.1";

struct Lib(*mut c_void);
// SAFETY: a dlopen handle is a process-wide token; dlsym is thread-safe.
unsafe impl Send for Lib {}
// SAFETY: see above.
unsafe impl Sync for Lib {}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();

fn lib() -> Option<&'static Lib> {
    LIB.get_or_init(|| {
        let path = std::ffi::CString::new(SYSTEM_LIBRBD).ok()?;
        // SAFETY: NUL-terminated path; flags are valid dlopen flags.
        let h = unsafe {
            libc::dlopen(
                path.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND,
            )
        };
        if h.is_null() {
            // SAFETY: dlerror returns a thread-local string or null.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".into()
            } else {
                // SAFETY: non-null NUL-terminated string from dlerror.
                unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
            };
            eprintln!("rbd-row librbd: cannot load the system librbd {SYSTEM_LIBRBD}: {why}; native images are unavailable");
            return None;
        }
        Some(Lib(h))
    })
    .as_ref()
}

/// The address of `name` (NUL-terminated) in the system librbd, or 0.
pub fn lookup(name: &CStr) -> usize {
    let Some(l) = lib() else { return 0 };
    // SAFETY: valid handle and name.
    unsafe { libc::dlsym(l.0, name.as_ptr()) as usize }
}

/// Whether the system librbd could be loaded.
pub fn available() -> bool {
    lib().is_some()
}

/// The system librbd's function `$name` with the given C signature, as an
/// `Option` of the typed pointer (None when the library or the symbol is
/// missing).
macro_rules! native_fn {
    ($name:ident : fn($($t:ty),*) $(-> $r:ty)?) => {{
        static ADDR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let a = *ADDR.get_or_init(|| {
            $crate::native::lookup(
                std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                    .expect("symbol name"),
            )
        });
        if a == 0 {
            None
        } else {
            // SAFETY: the symbol of that name in librbd has this signature
            // (librbd.h of Ceph 16.2, checked by the C compile test).
            #[allow(unused_unsafe)]
            let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) $(-> $r)?>(a) };
            Some(f)
        }
    }};
}
pub(crate) use native_fn;

/// Calls the system librbd's `$name`; `-ENOSYS` when it is unavailable.
macro_rules! native_call {
    ($name:ident : fn($($t:ty),*) -> $r:ty; $($arg:expr),*) => {{
        match $crate::native::native_fn!($name: fn($($t),*) -> $r) {
            // SAFETY: arguments passed through from our caller as librbd takes them.
            Some(f) => {
                #[allow(unused_unsafe)]
                let r = unsafe { f($($arg),*) };
                r
            }
            None => (-libc::ENOSYS) as $r,
        }
    }};
}
pub(crate) use native_call;
