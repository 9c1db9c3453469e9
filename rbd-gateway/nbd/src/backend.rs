//! What the server serves: [`ExportBackend`] (one block device) and
//! [`ExportRegistry`] (name → backend), plus the error type that carries an
//! NBD errno back to the client.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::proto::{BASE_ALLOCATION, STATE_HOLE, STATE_ZERO};

/// The NBD error values a backend may report (the spec restricts replies to
/// this set; anything else must be mapped to one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NbdErrno {
    /// `EPERM` (1): operation not permitted, e.g. write to a read-only export.
    Perm,
    /// `EIO` (5): input/output error.
    Io,
    /// `ENOMEM` (12): cannot allocate memory (avoid if possible).
    NoMem,
    /// `EINVAL` (22): invalid argument.
    Inval,
    /// `ENOSPC` (28): no space left / write beyond the end.
    NoSpc,
    /// `EOVERFLOW` (75): value too large.
    Overflow,
    /// `ENOTSUP` (95): operation not supported (e.g. `FAST_ZERO` that would be slow).
    NotSup,
    /// `ESHUTDOWN` (108): server is shutting down.
    Shutdown,
}

impl NbdErrno {
    /// Wire value.
    pub const fn code(self) -> u32 {
        match self {
            NbdErrno::Perm => 1,
            NbdErrno::Io => 5,
            NbdErrno::NoMem => 12,
            NbdErrno::Inval => 22,
            NbdErrno::NoSpc => 28,
            NbdErrno::Overflow => 75,
            NbdErrno::NotSup => 95,
            NbdErrno::Shutdown => 108,
        }
    }

    /// Parse a wire value (unknown values map to `None`).
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => NbdErrno::Perm,
            5 => NbdErrno::Io,
            12 => NbdErrno::NoMem,
            22 => NbdErrno::Inval,
            28 => NbdErrno::NoSpc,
            75 => NbdErrno::Overflow,
            95 => NbdErrno::NotSup,
            108 => NbdErrno::Shutdown,
            _ => return None,
        })
    }
}

/// Error returned by a backend or registry: an NBD errno plus a human
/// readable message (sent to clients that negotiated structured replies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportError {
    /// The errno sent on the wire.
    pub errno: NbdErrno,
    /// Human readable detail (truncated to 4096 bytes on the wire).
    pub message: String,
}

impl ExportError {
    /// Build an error from an errno and a message.
    pub fn new(errno: NbdErrno, message: impl Into<String>) -> Self {
        ExportError {
            errno,
            message: message.into(),
        }
    }
    /// `EIO`.
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::Io, message)
    }
    /// `EINVAL`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::Inval, message)
    }
    /// `EPERM`.
    pub fn perm(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::Perm, message)
    }
    /// `ENOSPC`.
    pub fn no_space(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::NoSpc, message)
    }
    /// `ENOTSUP`.
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::NotSup, message)
    }
    /// `EOVERFLOW`.
    pub fn overflow(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::Overflow, message)
    }
    /// `ESHUTDOWN`.
    pub fn shutdown(message: impl Into<String>) -> Self {
        Self::new(NbdErrno::Shutdown, message)
    }
    /// Wire errno.
    pub fn code(&self) -> u32 {
        self.errno.code()
    }
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({}): {}",
            self.errno,
            self.errno.code(),
            self.message
        )
    }
}

impl std::error::Error for ExportError {}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let errno = match e.kind() {
            K::PermissionDenied | K::ReadOnlyFilesystem => NbdErrno::Perm,
            K::InvalidInput => NbdErrno::Inval,
            K::StorageFull | K::QuotaExceeded | K::FileTooLarge => NbdErrno::NoSpc,
            K::OutOfMemory => NbdErrno::NoMem,
            K::Unsupported => NbdErrno::NotSup,
            _ => NbdErrno::Io,
        };
        ExportError::new(errno, e.to_string())
    }
}

/// Result alias for backend operations.
pub type ExportResult<T> = Result<T, ExportError>;

/// One block-status descriptor: `length` bytes with context-defined `flags`
/// (for `base:allocation`: [`STATE_HOLE`] = 1, [`STATE_ZERO`] = 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (non-zero).
    pub length: u32,
    /// Status flags.
    pub flags: u32,
}

impl Extent {
    /// Convenience constructor.
    pub const fn new(length: u32, flags: u32) -> Self {
        Extent { length, flags }
    }
}

/// Flags of an `NBD_CMD_WRITE_ZEROES`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The backend may deallocate (punch a hole) instead of writing zeroes
    /// (false when the client sent `NBD_CMD_FLAG_NO_HOLE`).
    pub may_unmap: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with `ENOTSUP` rather than being slower
    /// than a plain write of zeroes.
    pub fast_only: bool,
    /// `NBD_CMD_FLAG_FUA`: persist before completing.
    pub fua: bool,
}

/// One exported block device.
///
/// All offsets/lengths passed in have already been bounds-checked by the
/// server against [`ExportBackend::size`] and the configured maximum payload
/// (for `read`/`write`). Futures are boxed so that the trait stays
/// object-safe (`Arc<dyn ExportBackend>`).
///
/// Consistency contract: the server advertises `NBD_FLAG_CAN_MULTI_CONN`
/// when [`ExportBackend::can_multi_conn`] is true, i.e. a completed
/// `flush`/FUA on one connection must be visible to all connections of the
/// same export (true for a single shared backend object).
pub trait ExportBackend: Send + Sync + 'static {
    /// Export size in bytes.
    fn size(&self) -> u64;
    /// Whether writes must be refused (`NBD_FLAG_READ_ONLY`, writes get `EPERM`).
    fn read_only(&self) -> bool;
    /// Preferred I/O granularity (advertised as preferred block size; a power
    /// of two between 512 and 32 MiB, otherwise 4096 is advertised).
    fn preferred_block(&self) -> u32 {
        4096
    }
    /// Optional human readable description (`NBD_INFO_DESCRIPTION`).
    fn description(&self) -> Option<String> {
        None
    }
    /// Whether `NBD_FLAG_CAN_MULTI_CONN` may be advertised.
    fn can_multi_conn(&self) -> bool {
        true
    }
    /// Read exactly `len` bytes at `off`. Returning a different length is
    /// reported to the client as `EIO`.
    fn read(&self, off: u64, len: u32) -> BoxFuture<'_, ExportResult<Bytes>>;
    /// Write `data` at `off`; with `fua` the data must be durable on return.
    fn write(&self, off: u64, data: Bytes, fua: bool) -> BoxFuture<'_, ExportResult<()>>;
    /// Make every completed write durable.
    fn flush(&self) -> BoxFuture<'_, ExportResult<()>>;
    /// Discard hint; contents of the range are undefined afterwards.
    fn trim(&self, off: u64, len: u32, fua: bool) -> BoxFuture<'_, ExportResult<()>>;
    /// Make the range read as zeroes.
    fn write_zeroes(&self, off: u64, len: u32, flags: ZeroFlags)
        -> BoxFuture<'_, ExportResult<()>>;
    /// Prefetch hint (`NBD_CMD_CACHE`). Default: no-op success.
    fn cache(&self, off: u64, len: u32) -> BoxFuture<'_, ExportResult<()>> {
        let _ = (off, len);
        Box::pin(async { Ok(()) })
    }
    /// Extents covering (a prefix of) `[off, off+len)` for metadata context
    /// `context` (one of the names returned by [`ExportBackend::meta_contexts`]).
    /// Lengths must be non-zero; the server clips the list to `len`, merges
    /// equal neighbours and reports status 0 for an empty list.
    fn block_status(
        &self,
        context: &str,
        off: u64,
        len: u32,
    ) -> BoxFuture<'_, ExportResult<Vec<Extent>>>;
    /// Context names this export offers that match `query`.
    ///
    /// `query` is either empty (meaning "everything"), a namespace-only
    /// query ending in `:` such as `base:` or `rbd-row:diff:` (meaning "all
    /// contexts under that prefix"), or a full context name. For
    /// `NBD_OPT_SET_META_CONTEXT` the server only keeps results equal to the
    /// query, so dynamic names (e.g. `rbd-row:diff:<snap>`) can be resolved
    /// here on demand. [`match_meta_contexts`] implements this for a fixed
    /// list.
    fn meta_contexts(&self, query: &str) -> Vec<String>;
}

/// Helper implementing the [`ExportBackend::meta_contexts`] matching rules for
/// a fixed list of offered context names.
pub fn match_meta_contexts(offered: &[&str], query: &str) -> Vec<String> {
    offered
        .iter()
        .filter(|c| {
            query.is_empty() || (query.ends_with(':') && c.starts_with(query)) || **c == query
        })
        .map(|c| (*c).to_owned())
        .collect()
}

/// Name → export lookup. Exports are opened on `NBD_OPT_GO`/`INFO`/
/// `EXPORT_NAME`/`*_META_CONTEXT`.
pub trait ExportRegistry: Send + Sync + 'static {
    /// Open the export called `name` (never empty: the server resolves the
    /// empty name through [`ExportRegistry::default_export`]).
    fn open(&self, name: &str) -> BoxFuture<'_, ExportResult<Arc<dyn ExportBackend>>>;
    /// Names announced by `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
    /// Export used when the client asks for the empty name.
    fn default_export(&self) -> Option<String> {
        None
    }
}

/// A registry of pre-opened backends (useful for tests and small gateways).
#[derive(Default)]
pub struct StaticRegistry {
    exports: Mutex<BTreeMap<String, Arc<dyn ExportBackend>>>,
    default: Mutex<Option<String>>,
}

impl StaticRegistry {
    /// Empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add or replace an export.
    pub fn insert(&self, name: impl Into<String>, backend: Arc<dyn ExportBackend>) {
        self.lock_exports().insert(name.into(), backend);
    }
    /// Remove an export (existing connections keep their handle).
    pub fn remove(&self, name: &str) -> Option<Arc<dyn ExportBackend>> {
        self.lock_exports().remove(name)
    }
    /// Set the export served for the empty name.
    pub fn set_default(&self, name: Option<String>) {
        *self.default.lock().unwrap_or_else(|p| p.into_inner()) = name;
    }
    fn lock_exports(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<dyn ExportBackend>>> {
        self.exports.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ExportRegistry for StaticRegistry {
    fn open(&self, name: &str) -> BoxFuture<'_, ExportResult<Arc<dyn ExportBackend>>> {
        let r = self
            .lock_exports()
            .get(name)
            .cloned()
            .ok_or_else(|| ExportError::invalid(format!("no export named {name:?}")));
        Box::pin(async move { r })
    }
    fn list(&self) -> Vec<String> {
        self.lock_exports().keys().cloned().collect()
    }
    fn default_export(&self) -> Option<String> {
        self.default
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// In-memory export: a `Vec<u8>` behind a mutex. `base:allocation` reports
/// all-zero 512-byte sectors as `HOLE|ZERO`. Used by tests.
pub struct MemExport {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    preferred: u32,
    description: Option<String>,
}

/// Sector size used by [`MemExport`] for allocation reporting.
const MEM_SECTOR: u64 = 512;

impl MemExport {
    /// Zero-filled export of `size` bytes.
    ///
    /// # Panics
    /// If `size` does not fit in memory (`usize`).
    pub fn new(size: u64) -> Self {
        let size = usize::try_from(size).expect("MemExport size fits in memory");
        Self::from_vec(vec![0; size])
    }
    /// Export with the given contents.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemExport {
            data: Mutex::new(data),
            read_only: false,
            preferred: 4096,
            description: None,
        }
    }
    /// Builder: mark read-only.
    pub fn with_read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }
    /// Builder: preferred block size.
    pub fn with_preferred_block(mut self, bs: u32) -> Self {
        self.preferred = bs;
        self
    }
    /// Builder: description.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
    /// Copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn range(&self, len_total: usize, off: u64, len: u32) -> ExportResult<std::ops::Range<usize>> {
        let start = usize::try_from(off).map_err(|_| ExportError::invalid("offset"))?;
        let end = start
            .checked_add(len as usize)
            .filter(|e| *e <= len_total)
            .ok_or_else(|| ExportError::invalid("range beyond end of export"))?;
        Ok(start..end)
    }
    fn allocation(&self, off: u64, len: u32) -> ExportResult<Vec<Extent>> {
        let data = self.lock();
        let r = self.range(data.len(), off, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = r.start as u64;
        let end = r.end as u64;
        while pos < end {
            let next = ((pos / MEM_SECTOR) + 1) * MEM_SECTOR;
            let next = next.min(end);
            let chunk = &data[pos as usize..next as usize];
            let flags = if chunk.iter().all(|b| *b == 0) {
                STATE_HOLE | STATE_ZERO
            } else {
                0
            };
            let l = (next - pos) as u32;
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += l,
                _ => out.push(Extent::new(l, flags)),
            }
            pos = next;
        }
        Ok(out)
    }
}

impl ExportBackend for MemExport {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn preferred_block(&self) -> u32 {
        self.preferred
    }
    fn description(&self) -> Option<String> {
        self.description.clone()
    }
    fn read(&self, off: u64, len: u32) -> BoxFuture<'_, ExportResult<Bytes>> {
        let data = self.lock();
        let r = self
            .range(data.len(), off, len)
            .map(|r| Bytes::copy_from_slice(&data[r]));
        Box::pin(async move { r })
    }
    fn write(&self, off: u64, buf: Bytes, _fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        let r = if self.read_only {
            Err(ExportError::perm("read-only export"))
        } else {
            let mut data = self.lock();
            let len = u32::try_from(buf.len()).map_err(|_| ExportError::overflow("write too big"));
            len.and_then(|len| self.range(data.len(), off, len))
                .map(|r| data[r].copy_from_slice(&buf))
        };
        Box::pin(async move { r })
    }
    fn flush(&self) -> BoxFuture<'_, ExportResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn trim(&self, off: u64, len: u32, _fua: bool) -> BoxFuture<'_, ExportResult<()>> {
        self.write_zeroes(off, len, ZeroFlags::default())
    }
    fn write_zeroes(&self, off: u64, len: u32, _f: ZeroFlags) -> BoxFuture<'_, ExportResult<()>> {
        let r = if self.read_only {
            Err(ExportError::perm("read-only export"))
        } else {
            let mut data = self.lock();
            self.range(data.len(), off, len).map(|r| data[r].fill(0))
        };
        Box::pin(async move { r })
    }
    fn block_status(
        &self,
        context: &str,
        off: u64,
        len: u32,
    ) -> BoxFuture<'_, ExportResult<Vec<Extent>>> {
        let r = if context == BASE_ALLOCATION {
            self.allocation(off, len)
        } else {
            Err(ExportError::invalid(format!("unknown context {context}")))
        };
        Box::pin(async move { r })
    }
    fn meta_contexts(&self, query: &str) -> Vec<String> {
        match_meta_contexts(&[BASE_ALLOCATION], query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_rules() {
        let offered = ["base:allocation", "rbd-row:diff:a", "rbd-row:diff:b"];
        assert_eq!(match_meta_contexts(&offered, "").len(), 3);
        assert_eq!(match_meta_contexts(&offered, "rbd-row:diff:").len(), 2);
        assert_eq!(
            match_meta_contexts(&offered, "base:"),
            vec!["base:allocation"]
        );
        assert_eq!(
            match_meta_contexts(&offered, "base:allocation"),
            vec!["base:allocation"]
        );
        assert!(match_meta_contexts(&offered, "base:alloc").is_empty());
        assert!(match_meta_contexts(&offered, "qemu:").is_empty());
    }

    #[tokio::test]
    async fn mem_export_allocation() {
        let m = MemExport::new(4096);
        m.write(1000, Bytes::from_static(b"xy"), false)
            .await
            .unwrap();
        let ext = m.block_status(BASE_ALLOCATION, 0, 4096).await.unwrap();
        assert_eq!(
            ext,
            vec![
                Extent::new(512, 3),
                Extent::new(512, 0),
                Extent::new(3072, 3)
            ]
        );
        let ext = m.block_status(BASE_ALLOCATION, 100, 1000).await.unwrap();
        assert_eq!(
            ext,
            vec![Extent::new(412, 3), Extent::new(512, 0), Extent::new(76, 3)]
        );
        assert!(m.read(4000, 200).await.is_err());
        assert_eq!(&m.read(1000, 2).await.unwrap()[..], b"xy");
    }
}
